import itertools
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from diffeel.labels import ANOMALY, VOID
from diffeel.metrics import components
from diffeel.metrics.components import (
    TAUS,
    ComponentMetrics,
    component_stats,
    metrics_from_components,
    reference_component_stats,
)

EIGHT = np.ones((3, 3), dtype=bool)
THRESHOLD = 0.7


# --------------------------------------------------------------------------------------------
# random scenes


def random_scene(rng, shape=(40, 50)):
    """Scores and labels: elliptic and rectangular anomalies (some touching diagonally or by an
    edge, some separated by a one-pixel gap under a single prediction), void patches and
    speckle, and a prediction that shifts, grows or shrinks the anomalies plus noise blobs."""
    height, width = shape
    rows, cols = np.ogrid[:height, :width]
    gt = np.zeros(shape, dtype=bool)
    for _ in range(rng.integers(0, 5)):
        centre_row, centre_col = rng.uniform(0, height), rng.uniform(0, width)
        radius_row, radius_col = rng.uniform(0.5, 7, size=2)
        gt |= ((rows - centre_row) / radius_row) ** 2 + ((cols - centre_col) / radius_col) ** 2 <= 1
    spanned = np.zeros(shape, dtype=bool)
    if rng.random() < 0.4:  # two squares touching at a corner only (one component under 8-connectivity)
        row, col, side = rng.integers(0, height - 8), rng.integers(0, width - 8), rng.integers(1, 5)
        gt[row : row + side, col : col + side] = True
        gt[row + side : row + 2 * side, col + side : col + 2 * side] = True
    if rng.random() < 0.5:  # two anomalies one pixel apart, one prediction over both
        row, col = rng.integers(0, height - 6), rng.integers(0, width - 12)
        gt[row : row + rng.integers(1, 6), col : col + 4] = True
        gt[row : row + rng.integers(1, 6), col + 5 : col + 5 + rng.integers(1, 6)] = True
        spanned[row : row + 5, col + rng.integers(0, 3) : col + rng.integers(6, 11)] = True

    labels = gt.astype(np.uint8)
    labels[rng.random(shape) < 0.02] = VOID
    if rng.random() < 0.5:
        row, col = rng.integers(0, height), rng.integers(0, width)
        labels[row : row + rng.integers(1, 10), col : col + rng.integers(1, 20)] = VOID

    anomaly = labels == ANOMALY
    guess = np.roll(anomaly, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
    if rng.random() < 0.5:
        guess = ndimage.binary_dilation(guess, iterations=int(rng.integers(1, 3)))
    elif rng.random() < 0.5:
        guess = ndimage.binary_erosion(guess)
    scores = 0.75 * rng.random(shape) + 0.3 * ndimage.uniform_filter(rng.random(shape), 3)
    scores[guess | spanned] += 0.4
    if rng.random() < 0.15:
        scores[:] = 0.0  # no prediction at all
    return scores, labels


def masks_of(scores, labels, threshold=THRESHOLD):
    return scores >= threshold, labels == ANOMALY, labels == VOID


def n_components(mask):
    return ndimage.label(mask, structure=EIGHT)[1]


def spans_two_gt(pred, gt):
    pred_labels, n_pred = ndimage.label(pred, structure=EIGHT)
    gt_labels, _ = ndimage.label(gt, structure=EIGHT)
    return any(len(np.unique(gt_labels[(pred_labels == j) & gt])) >= 2 for j in range(1, n_pred + 1))


def assert_same_stats(pred, gt, void, min_pred, min_gt):
    fast_siou, fast_ppv = component_stats(pred, gt, void, min_pred, min_gt)
    slow_siou, slow_ppv = reference_component_stats(pred, gt, void, min_pred, min_gt)
    assert fast_siou.dtype == slow_siou.dtype == fast_ppv.dtype == slow_ppv.dtype == np.float64
    np.testing.assert_array_equal(fast_siou, slow_siou)  # bit-exact, same order
    np.testing.assert_array_equal(fast_ppv, slow_ppv)
    return fast_siou, fast_ppv


# --------------------------------------------------------------------------------------------
# fast core vs the reference


@pytest.mark.parametrize("min_pred, min_gt", [(1, 1), (8, 3), (30, 12), (50, 10)])
def test_fast_matches_reference_on_random_scenes(min_pred, min_gt):
    rng = np.random.default_rng(1000 * min_pred + min_gt)
    seen = {"fractional siou": 0, "spanning": 0, "gt voided": 0, "pred dropped": 0, "no gt": 0, "no pred": 0}
    for _ in range(150):
        pred, gt, void = masks_of(*random_scene(rng))
        siou, ppv = assert_same_stats(pred, gt, void, min_pred, min_gt)
        # The scenes must exercise what could go wrong, or the agreement above proves little.
        seen["fractional siou"] += bool(np.any((siou > 0) & (siou < 1)))
        seen["spanning"] += spans_two_gt(pred & ~void, gt & ~void)
        seen["gt voided"] += len(siou) < n_components(gt & ~void)
        seen["pred dropped"] += len(ppv) < n_components(pred & ~void)
        seen["no gt"] += len(siou) == 0
        seen["no pred"] += len(ppv) == 0
    expected_cases = ["fractional siou", "spanning", "no gt", "no pred"]
    expected_cases += ["gt voided"] if min_gt > 1 else []
    expected_cases += ["pred dropped"] if min_pred > 1 else []
    assert all(seen[case] > 0 for case in expected_cases), seen


def test_sorted_pair_path_matches_reference(monkeypatch):
    """Beyond the dense-table limit the overlapping pairs come from a sort; same results."""
    monkeypatch.setattr(components, "DENSE_OVERLAP_TABLE_LIMIT", 0)
    rng = np.random.default_rng(7)
    for _ in range(60):
        assert_same_stats(*masks_of(*random_scene(rng)), min_pred=3, min_gt=2)
    # Many small components on both sides: many pairs per ground-truth component.
    for _ in range(10):
        gt, pred = rng.random((40, 50)) < 0.3, rng.random((40, 50)) < 0.3
        siou, _ = assert_same_stats(pred, gt, rng.random((40, 50)) < 0.05, min_pred=1, min_gt=1)
        assert len(siou) > 10


# --------------------------------------------------------------------------------------------
# hand-computed cases


def hand_scene():
    """10×12 image, min sizes 1. Ground truth A (2×3), B (2×2), C (2×2); prediction P1 covers
    cols 2–6 of rows 1–2 (4 px of A, the gap, all of B) and P2 is a 3×3 false positive.

    sIoU(A) = 4 / (6 + 10 - 4 - |P1 ∩ B| = 4) = 1/2; sIoU(B) = 4 / (4 + 10 - 4 - 4) = 2/3;
    sIoU(C) = 0. PPV(P1) = 8/10, PPV(P2) = 0. Predicted pixels on the void row 3 and column 11
    would otherwise enlarge P1 and P2; the pixel above P1 scores just below the threshold.
    """
    labels = np.zeros((10, 12), dtype=np.uint8)
    labels[1:3, 1:4] = ANOMALY  # A
    labels[1:3, 5:7] = ANOMALY  # B
    labels[6:8, 1:3] = ANOMALY  # C
    labels[3, :] = VOID
    labels[6:9, 11] = VOID
    scores = np.zeros((10, 12), dtype=np.float32)
    scores[1:3, 2:7] = 0.5  # P1, exactly at the threshold: predicted
    scores[3, 2:7] = 0.9  # void
    scores[0, 2] = np.nextafter(np.float32(0.5), np.float32(0))  # just below: not predicted
    scores[6:9, 8:12] = 0.9  # P2 (its last column is void)
    return scores, labels


def test_hand_computed_case():
    scores, labels = hand_scene()
    siou, ppv = assert_same_stats(*masks_of(scores, labels, 0.5), min_pred=1, min_gt=1)
    assert siou.tolist() == [0.5, 2 / 3, 0.0]
    assert ppv.tolist() == [0.8, 0.0]

    result = ComponentMetrics(track=None, min_pred=1, min_gt=1).update(scores, labels, 0.5).compute()
    # τ = 0.25 … 0.50: TP 2 (A, B); 0.55 … 0.65: TP 1 (B); 0.70, 0.75: TP 0. FP = 1 (P2) throughout.
    assert result["taus"] == np.linspace(0.25, 0.75, 11).tolist()
    assert result["tp_per_tau"] == [2] * 6 + [1] * 3 + [0] * 2
    assert result["fn_per_tau"] == [1] * 6 + [2] * 3 + [3] * 2
    assert result["fp_per_tau"] == [1] * 11
    assert result["f1_per_tau"] == [4 / 6] * 6 + [2 / 5] * 3 + [0.0] * 2
    assert result["mean_f1"] == pytest.approx((6 * 4 / 6 + 3 * 2 / 5) / 11, rel=1e-15)
    assert result["siou"] == pytest.approx(7 / 18, rel=1e-15)
    assert result["ppv"] == 0.4
    assert (result["n_gt_components"], result["n_pred_components"], result["n_images"]) == (3, 2, 1)


def test_eight_connectivity_joins_diagonal_neighbours():
    labels = np.zeros((12, 12), dtype=np.uint8)
    labels[2:4, 2:4] = ANOMALY
    labels[4:6, 4:6] = ANOMALY  # touches the first square at one corner only
    scores = np.zeros((12, 12))
    scores[8, 1] = scores[9, 2] = scores[10, 3] = 1.0  # a diagonal line of 3 px
    # min_gt 5 and min_pred 3: with 4-connectivity both squares (4 px) and the line's pixels
    # would be separate components, all too small.
    result = ComponentMetrics(track=None, min_pred=3, min_gt=5).update(scores, labels, 0.5).compute()
    assert (result["n_gt_components"], result["n_pred_components"]) == (1, 1)
    assert_same_stats(*masks_of(scores, labels, 0.5), min_pred=3, min_gt=5)


def test_prediction_spanning_two_touching_by_edge_anomalies_is_one_gt_component():
    labels = np.zeros((8, 12), dtype=np.uint8)
    labels[2:4, 2:5] = ANOMALY
    labels[2:4, 5:8] = ANOMALY  # shares an edge: one component of 12 px
    scores = np.zeros((8, 12))
    scores[2:4, 3:9] = 1.0  # 12 px, 10 on the anomaly
    siou, ppv = assert_same_stats(*masks_of(scores, labels, 0.5), min_pred=1, min_gt=1)
    assert siou.tolist() == [10 / 14]  # no "other" component to forgive
    assert ppv.tolist() == [10 / 12]


def test_obstacle_track_min_sizes_are_inclusive():
    """Ground truth of exactly 10 px and a prediction of exactly 50 px are kept; 9 and 49 are not."""
    labels = np.zeros((30, 40), dtype=np.uint8)
    labels[2:4, 2:7] = ANOMALY  # 10 px: kept
    labels[20:23, 2:5] = ANOMALY  # 9 px: void
    scores = np.zeros((30, 40))
    scores[10:15, 10:20] = 1.0  # 50 px on inliers: kept, PPV 0
    scores[20:27, 30:37] = 1.0  # 49 px: dropped
    scores[1:5, 1:8] = 0.9  # 28 px over the 10-px anomaly: too small, so it earns the anomaly nothing
    result = ComponentMetrics("obstacle").update(scores, labels, 0.5).compute()
    assert (result["n_gt_components"], result["n_pred_components"]) == (1, 1)
    assert (result["siou"], result["ppv"]) == (0.0, 0.0)


def test_small_gt_components_become_void_before_the_prediction_is_labelled():
    """The documented choice: a too-small anomaly is void, so its pixels leave the prediction."""
    labels = np.zeros((3, 40, 30), dtype=np.uint8)
    scores = np.zeros((3, 40, 30))
    # Image 0: a 9-px anomaly inside a 7×10 prediction. The prediction keeps 61 px, none on
    # ground truth (PPV 0, not 9/70), and there is no ground-truth component.
    labels[0, 5:8, 5:8] = ANOMALY
    scores[0, 3:10, 3:13] = 1.0
    # Image 1: a 7×8 prediction (56 px) loses the 9 void pixels and falls below 50: dropped.
    labels[1, 5:8, 5:8] = ANOMALY
    scores[1, 3:10, 3:11] = 1.0
    # Image 2: a 3-px-high band (90 px) cut through by the 3×3 anomaly splits into pieces of 42
    # and 39 px: kept with min_pred 39, both dropped with 50 (the uncut band, 81 px, would stay).
    labels[2, 20:23, 14:17] = ANOMALY
    scores[2, 20:23, :] = 1.0

    obstacle = ComponentMetrics("obstacle")
    siou, ppv = component_stats(*masks_of(scores[0], labels[0], 0.5), 50, 10)
    assert (siou.tolist(), ppv.tolist()) == ([], [0.0])
    assert component_stats(*masks_of(scores[1], labels[1], 0.5), 50, 10)[1].tolist() == []
    assert component_stats(*masks_of(scores[2], labels[2], 0.5), 39, 10)[1].tolist() == [0.0, 0.0]
    for image in range(3):
        assert_same_stats(*masks_of(scores[image], labels[image], 0.5), min_pred=39, min_gt=10)
        obstacle.update(scores[image], labels[image], 0.5)
    result = obstacle.compute()
    assert (result["n_gt_components"], result["n_pred_components"], result["ppv"]) == (0, 1, 0.0)


def test_ties_with_tau():
    """sIoU = τ is a true positive, PPV = τ is not a false positive; τ are linspace's floats, so
    an sIoU of exactly 0.6 is below the eighth τ, 0.6000000000000001."""
    result = metrics_from_components([0.5, 0.6], [0.5])
    assert TAUS[7] > 0.6
    assert result["tp_per_tau"] == [2] * 6 + [1] + [0] * 4
    assert result["fp_per_tau"] == [0] * 6 + [1] * 5


def test_threshold_compares_exactly_with_float16_scores():
    labels = np.zeros((20, 20), dtype=np.uint8)
    scores = np.zeros((20, 20), dtype=np.float16)
    scores[5:10, 5:10] = 0.2  # float16 rounds this to 0.19995..., below a threshold of 0.2
    empty = ComponentMetrics(track=None, min_pred=1, min_gt=1).update(scores, labels, 0.2).compute()
    assert empty["n_pred_components"] == 0
    at = ComponentMetrics(track=None, min_pred=1, min_gt=1).update(scores, labels, float(scores[5, 5])).compute()
    assert at["n_pred_components"] == 1


# --------------------------------------------------------------------------------------------
# empty images


def test_images_without_components():
    rng = np.random.default_rng(3)
    labels_gt_only = np.zeros((30, 30), dtype=np.uint8)
    labels_gt_only[5:15, 5:15] = ANOMALY
    high = np.ones((30, 30))

    nothing = ComponentMetrics("obstacle").update(np.zeros((30, 30)), np.zeros((30, 30), np.uint8), 0.5)
    result = nothing.compute()
    assert (result["n_gt_components"], result["n_pred_components"], result["n_images"]) == (0, 0, 1)
    assert math.isnan(result["siou"]) and math.isnan(result["ppv"])
    assert result["f1_per_tau"] == [0.0] * 11 and result["mean_f1"] == 0.0

    all_void = ComponentMetrics("obstacle").update(high, np.full((30, 30), VOID, np.uint8), 0.5).compute()
    assert (all_void["n_gt_components"], all_void["n_pred_components"]) == (0, 0)

    gt_only = ComponentMetrics("obstacle").update(np.zeros((30, 30)), labels_gt_only, 0.5).compute()
    assert (gt_only["n_gt_components"], gt_only["siou"], gt_only["fn_per_tau"]) == (1, 0.0, [1] * 11)

    pred_only = ComponentMetrics("obstacle").update(high, np.zeros((30, 30), np.uint8), 0.5).compute()
    assert (pred_only["n_pred_components"], pred_only["ppv"], pred_only["fp_per_tau"]) == (1, 0.0, [1] * 11)
    assert pred_only["mean_f1"] == 0.0

    for pred, gt in [(False, False), (False, True), (True, False)]:
        siou, ppv = component_stats(np.full((5, 6), pred), np.full((5, 6), gt), rng.random((5, 6)) < 0.5, 1, 1)
        assert siou.dtype == ppv.dtype == np.float64
        assert (len(siou) > 0) == gt and (len(ppv) > 0) == pred


# --------------------------------------------------------------------------------------------
# accumulation


def plain_metrics(siou, ppv):
    """The F1 definition, literally, from pooled per-component values."""
    f1 = []
    for tau in np.linspace(0.25, 0.75, 11):
        true_pos = sum(1 for value in siou if value >= tau)
        false_neg = len(siou) - true_pos
        false_pos = sum(1 for value in ppv if value < tau)
        denominator = 2 * true_pos + false_neg + false_pos
        f1.append(2 * true_pos / denominator if denominator else 0.0)
    return {"siou": np.mean(siou), "ppv": np.mean(ppv), "mean_f1": np.mean(f1), "f1_per_tau": f1}


def test_accumulation_matches_the_definition_and_ignores_order():
    rng = np.random.default_rng(11)
    scenes = [random_scene(rng) for _ in range(24)]
    singles = [ComponentMetrics(track=None, min_pred=8, min_gt=3).update(s, l, THRESHOLD) for s, l in scenes]

    pooled = [reference_component_stats(*masks_of(s, l), 8, 3) for s, l in scenes]
    all_siou = np.concatenate([siou for siou, _ in pooled])
    all_ppv = np.concatenate([ppv for _, ppv in pooled])
    expected = plain_metrics(all_siou, all_ppv)

    results = []
    for seed in range(6):
        order = np.random.default_rng(seed).permutation(len(scenes))
        # Two workers over interleaved halves, merged one way or the other.
        workers = [ComponentMetrics(track=None, min_pred=8, min_gt=3) for _ in range(2)]
        for position, index in enumerate(order):
            workers[position % 2].update(*scenes[index], THRESHOLD)
        merged = workers[seed % 2].merge(workers[1 - seed % 2])
        results.append(merged.compute())
    tree = ComponentMetrics(track=None, min_pred=8, min_gt=3)
    for single in reversed(singles):
        tree.merge(single)
    results.append(tree.compute())

    assert all(result == results[0] for result in results)  # bit for bit
    result = results[0]
    assert result["f1_per_tau"] == expected["f1_per_tau"]
    for key in ("siou", "ppv", "mean_f1"):
        assert result[key] == pytest.approx(expected[key], rel=1e-14)
    assert (result["n_gt_components"], result["n_pred_components"]) == (len(all_siou), len(all_ppv))
    assert result["n_images"] == len(scenes)
    # Teeth: a plain float sum over the values in another order does change the last bits.
    orders = [np.random.default_rng(seed).permutation(len(all_siou)) for seed in range(20)]
    assert len({float(np.cumsum(all_siou[order])[-1]) for order in orders}) > 1


def test_torch_inputs_match_numpy():
    rng = np.random.default_rng(5)
    scores, labels = random_scene(rng)
    from_numpy = ComponentMetrics(track=None, min_pred=4, min_gt=2).update(scores, labels, THRESHOLD).compute()
    from_torch = ComponentMetrics(track=None, min_pred=4, min_gt=2).update(
        torch.from_numpy(scores), torch.from_numpy(labels), THRESHOLD
    )
    assert from_torch.compute() == from_numpy


# --------------------------------------------------------------------------------------------
# bad input


def one_sentence(error):
    message = str(error.value)
    assert "\n" not in message and message.endswith(".")
    return message


@pytest.mark.parametrize(
    "scores, labels, pattern",
    [
        (np.zeros((4, 5)), np.zeros((5, 4), np.uint8), "shape"),
        (np.zeros((2, 4, 5)), np.zeros((2, 4, 5), np.uint8), "2-D"),
        (np.zeros((4, 5)), np.full((4, 5), 2, np.uint8), r"outside \{0, 1, 255\}: 2\."),
        (np.zeros((4, 5)), np.full((4, 5), -1, np.int16), "-1"),
        (np.zeros((4, 5)), np.zeros((4, 5), np.float32), "integers"),
        (np.where(np.arange(20).reshape(4, 5) < 3, np.nan, 0.0), np.zeros((4, 5), np.uint8), "3 NaN"),
    ],
)
def test_bad_inputs_raise_value_error(scores, labels, pattern):
    metrics = ComponentMetrics("obstacle")
    with pytest.raises(ValueError, match=pattern) as error:
        metrics.update(scores, labels, 0.5)
    one_sentence(error)
    assert metrics.n_images == 0 and metrics.compute()["n_gt_components"] == 0  # state untouched


def test_bad_configuration_raises_value_error():
    with pytest.raises(ValueError, match="unknown track") as error:
        ComponentMetrics("road")
    one_sentence(error)
    with pytest.raises(ValueError, match="min_pred and min_gt"):
        ComponentMetrics(track=None, min_pred=10)
    with pytest.raises(ValueError, match="non-negative"):
        ComponentMetrics(min_gt=-1)
    with pytest.raises(ValueError, match="NaN"):
        ComponentMetrics().update(np.zeros((3, 3)), np.zeros((3, 3), np.uint8), float("nan"))
    with pytest.raises(ValueError, match="minimum sizes") as error:
        ComponentMetrics("anomaly").merge(ComponentMetrics("obstacle"))
    one_sentence(error)
    with pytest.raises(ValueError, match="one shape") as error:
        component_stats(np.zeros((3, 3), bool), np.zeros((3, 4), bool), np.zeros((3, 3), bool), 1, 1)
    one_sentence(error)
    assert ComponentMetrics("anomaly").min_pred == 500 and ComponentMetrics("anomaly").min_gt == 100
    overridden = ComponentMetrics("obstacle", min_gt=20)
    assert (overridden.min_pred, overridden.min_gt) == (50, 20)


def test_all_combinations_of_tiny_masks_match_reference():
    """Every 2×3 prediction/ground-truth pair (4096 of them): corner cases of adjacency."""
    cells = 6
    void = np.zeros((2, 3), dtype=bool)
    for pred_bits, gt_bits in itertools.product(range(1 << cells), repeat=2):
        pred = np.array([(pred_bits >> i) & 1 for i in range(cells)], dtype=bool).reshape(2, 3)
        gt = np.array([(gt_bits >> i) & 1 for i in range(cells)], dtype=bool).reshape(2, 3)
        fast = component_stats(pred, gt, void, 1, 1)
        slow = reference_component_stats(pred, gt, void, 1, 1)
        assert fast[0].tolist() == slow[0].tolist() and fast[1].tolist() == slow[1].tolist()
