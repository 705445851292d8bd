import itertools
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from diffeel.metrics import PixelMetrics, Protocol, UndefinedMetricWarning, pixel_metrics

TOL = 1e-9


def sklearn_reference(scores, labels):
    valid = labels != 255
    y, s = labels[valid].ravel(), scores[valid].astype(np.float64).ravel()
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    precision, recall, _ = precision_recall_curve(y, s)
    return {
        "auprc": average_precision_score(y, s),
        "fpr95": fpr[np.argmax(tpr >= 0.95)],
        "auroc": roc_auc_score(y, s),
        "auprc_trapezoid": auc(recall, precision),
        "fpr95_nearest": hendrycks_fpr_at_recall(y, s),
        "n_pixels": int(valid.sum()),
        "n_anomaly": int((y == 1).sum()),
    }


def hendrycks_fpr_at_recall(y, s, recall_level=0.95):
    """The "nearest" FPR95, written from the description of Hendrycks' helper."""
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    last_of_each_value = np.r_[np.where(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y)[last_of_each_value]
    fps = 1 + last_of_each_value - tps
    recall = tps / tps[-1]
    full = tps.searchsorted(tps[-1])
    recall, fps = np.r_[recall[full::-1], 1], np.r_[fps[full::-1], 0]
    return fps[np.argmin(np.abs(recall - recall_level))] / np.sum(y == 0)


def tied_scores(rng, shape, dtype, levels=40):
    """Heavily tied scores with both zero signs and negative values."""
    values = (rng.integers(0, levels, size=shape) / 7.0 - 1.5).astype(dtype)
    values[rng.random(shape) < 0.05] = np.array(-0.0, dtype=dtype)
    values[rng.random(shape) < 0.05] = 0.0
    return values


def informative_labels(rng, scores, void_fraction=0.15):
    probability = 0.05 + 0.4 / (1 + np.exp(-scores.astype(np.float64)))
    labels = (rng.random(scores.shape) < probability).astype(np.uint8)
    labels[rng.random(scores.shape) < void_fraction] = 255
    return labels


def assert_matches(result, reference, auprc_key="auprc", fpr_key="fpr95"):
    assert abs(result["auprc"] - reference[auprc_key]) <= TOL
    assert abs(result["fpr95"] - reference[fpr_key]) <= TOL
    assert abs(result["auroc"] - reference["auroc"]) <= TOL
    assert result["n_pixels"] == reference["n_pixels"]
    assert result["n_anomaly"] == reference["n_anomaly"]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("levels", [5, 40, 100000])
def test_pooled_metrics_equal_sklearn_over_several_frames(rng, dtype, levels):
    frames = [tied_scores(rng, (23, 31), dtype, levels) for _ in range(6)]
    labels = [informative_labels(rng, f) for f in frames]
    metrics = PixelMetrics()
    for f, l in zip(frames, labels):
        metrics.update(f, l)
    result = metrics.compute()
    assert_matches(result, sklearn_reference(np.stack(frames), np.stack(labels)))
    assert result["n_images"] == 6 and result["n_void"] == int(sum((l == 255).sum() for l in labels))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_continuous_scores_equal_sklearn(rng, dtype):
    scores = rng.normal(size=(3, 40, 50)).astype(dtype)
    labels = informative_labels(rng, scores)
    assert_matches(pixel_metrics(scores, labels), sklearn_reference(scores, labels))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_alternative_protocols_equal_their_references(rng, dtype):
    scores = tied_scores(rng, (4, 20, 30), dtype, levels=60)
    labels = informative_labels(rng, scores)
    reference = sklearn_reference(scores, labels)
    nearest = pixel_metrics(scores, labels, "nearest")
    assert abs(nearest["fpr95"] - reference["fpr95_nearest"]) <= TOL
    assert abs(pixel_metrics(scores, labels, fpr95="nearest")["fpr95"] - reference["fpr95_nearest"]) <= TOL
    trapezoid = pixel_metrics(scores, labels, auprc="trapezoid")
    assert abs(trapezoid["auprc"] - reference["auprc_trapezoid"]) <= TOL
    assert trapezoid["protocol"] == "pooled[auprc=trapezoid]"


def test_per_image_protocol_is_the_mean_of_per_image_sklearn_values(rng):
    scores = tied_scores(rng, (5, 16, 16), np.float32)
    labels = informative_labels(rng, scores)
    labels[2][labels[2] == 1] = 0  # an image without anomalies is skipped with a warning
    expected = [sklearn_reference(s, l) for i, (s, l) in enumerate(zip(scores, labels)) if i != 2]
    with pytest.warns(UndefinedMetricWarning, match="1 image"):
        result = pixel_metrics(scores, labels, "per_image")
    for key in ("auprc", "fpr95", "auroc"):
        assert abs(result[key] - np.mean([r[key] for r in expected])) <= TOL
    assert result["n_images_evaluated"] == 4 and result["n_images"] == 5


def test_skip_empty_leaves_out_frames_without_anomalies(rng):
    scores = tied_scores(rng, (6, 12, 12), np.float16)
    labels = informative_labels(rng, scores)
    labels[[1, 4]] = np.where(labels[[1, 4]] == 1, 0, labels[[1, 4]])
    kept = [0, 2, 3, 5]
    result = pixel_metrics(scores, labels, "skip_empty")
    assert_matches(result, sklearn_reference(scores[kept], labels[kept]))
    assert result["n_images_skipped"] == 2
    assert pixel_metrics(scores, labels)["n_pixels"] > result["n_pixels"]


@pytest.mark.parametrize("dtypes", [("f16", "f16"), ("f32", "f32"), ("f16", "f32"), ("f32", "f64"), ("f16", "f64")])
def test_merge_is_exact_in_any_order_and_across_dtypes(rng, dtypes):
    dtype_of = {"f16": np.float16, "f32": np.float32, "f64": np.float64}
    parts = []
    for index in range(4):
        dtype = dtype_of[dtypes[index % 2]]
        scores = tied_scores(rng, (10, 13), dtype, levels=30)
        parts.append((scores, informative_labels(rng, scores)))
    reference = sklearn_reference(
        np.concatenate([s.astype(np.float64).ravel() for s, _ in parts]),
        np.concatenate([l.ravel() for _, l in parts]),
    )
    results = []
    for order in itertools.permutations(range(4)):
        accumulators = [PixelMetrics().update(*parts[i]) for i in order]
        total = accumulators[0]
        for other in accumulators[1:]:
            total.merge(other)
        results.append(total.compute())
        assert_matches(results[-1], reference)
    assert all(r == results[0] for r in results)  # bit-identical whatever the order


def test_negative_zero_ties_with_positive_zero():
    scores = np.array([0.0, -0.0, 0.0, -0.0, 1.0, -1.0], dtype=np.float32)
    labels = np.array([1, 0, 0, 1, 1, 0], dtype=np.uint8)
    for dtype in (np.float16, np.float32, np.float64):
        assert_matches(pixel_metrics(scores.astype(dtype), labels), sklearn_reference(scores, labels))


def test_best_f1_and_thresholds(rng):
    scores = tied_scores(rng, (30, 30), np.float32, levels=25)
    labels = informative_labels(rng, scores, void_fraction=0)
    result = pixel_metrics(scores, labels)
    thresholds = np.unique(scores)
    f1 = []
    for t in thresholds:
        predicted = scores >= t
        tp = np.sum(predicted & (labels == 1))
        f1.append(2 * tp / (predicted.sum() + (labels == 1).sum()))
    assert result["best_f1"] == pytest.approx(max(f1), abs=1e-12)
    assert result["best_f1_threshold"] == float(thresholds[int(np.argmax(f1))])
    tpr_at = np.mean(scores[labels == 1] >= result["fpr95_threshold"])
    assert tpr_at >= 0.95
    assert result["fpr95"] == pytest.approx(np.mean(scores[labels == 0] >= result["fpr95_threshold"]))


def test_state_stays_bounded(rng):
    float16 = PixelMetrics()
    float16.update(rng.random((64, 64)).astype(np.float16), informative_labels(rng, np.zeros((64, 64))))
    size_after_one = float16.state_nbytes
    for _ in range(99):
        frame = rng.normal(size=(64, 64)).astype(np.float16)
        float16.update(frame, informative_labels(rng, frame))
    assert float16.state_nbytes == size_after_one == 2 * 65536 * 8

    # float32: the state holds the distinct values; values that repeat do not make it grow.
    float32 = PixelMetrics()
    frames = [rng.normal(size=(64, 64)).astype(np.float32) for _ in range(3)]
    labels = [informative_labels(rng, frame) for frame in frames]
    sizes = []
    for index in range(400):
        float32.update(frames[index % 3], labels[index % 3])
        if index in (2, 199, 399):
            sizes.append(float32.state_nbytes)
    one_round = sizes[0]
    assert sizes[1] <= 8 * one_round and sizes[2] <= 8 * one_round
    assert float32.compute()["n_pixels"] == sum(int((labels[i % 3] != 255).sum()) for i in range(400))


def test_degenerate_sets_give_nan_and_one_warning(rng):
    scores = rng.random((5, 5)).astype(np.float32)
    for labels, missing in ((np.zeros((5, 5), np.uint8), "anomaly"), (np.ones((5, 5), np.uint8), "inlier")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = PixelMetrics(name="fog").update(scores, labels).compute()
        assert [str(w.message) for w in caught] == [
            f"set 'fog' has no {missing} pixels; its AUPRC, FPR95 and AUROC are NaN"
        ]
        assert np.isnan(result["auprc"]) and np.isnan(result["fpr95"]) and np.isnan(result["auroc"])
        assert result["n_pixels"] == 25
    with pytest.warns(UndefinedMetricWarning):
        assert PixelMetrics().compute()["n_pixels"] == 0


def test_nan_and_infinite_scores_are_rejected_with_their_count(rng):
    labels = informative_labels(rng, np.zeros((8, 8)), void_fraction=0)
    for dtype in (np.float16, np.float32, np.float64):
        scores = rng.random((8, 8)).astype(dtype)
        scores[0, :3] = np.nan
        scores[1, 0] = np.inf
        with pytest.raises(ValueError, match=r"^4 of 64 non-void score values are NaN or infinite$"):
            pixel_metrics(scores, labels)
    # Non-finite values on void pixels are ignored: they are never evaluated.
    scores = rng.random((8, 8)).astype(np.float32)
    labels[0, :3] = 255
    scores[0, :3] = np.nan
    assert_matches(pixel_metrics(scores, labels), sklearn_reference(np.nan_to_num(scores), labels))


def test_shape_mismatch_and_bad_labels_are_clear_errors(rng):
    with pytest.raises(ValueError, match=r"score map shape \(4, 5\) does not match label map shape \(5, 4\)"):
        pixel_metrics(np.zeros((4, 5), np.float32), np.zeros((5, 4), np.uint8))
    labels = np.array([[0, 1, 2, 255, 7]], dtype=np.uint8)
    with pytest.raises(ValueError, match=r"outside \{0, 1, 255\} with no mapping for them: 2, 7"):
        pixel_metrics(np.zeros((1, 5), np.float32), labels)
    with pytest.raises(ValueError, match="outside 0..65535"):
        pixel_metrics(np.zeros(2, np.float32), np.array([0, -1]))
    with pytest.raises(ValueError, match="unknown protocol"):
        PixelMetrics("bogus")
    with pytest.raises(ValueError, match="fpr95"):
        PixelMetrics(fpr95="interpolated")
    with pytest.raises(ValueError, match="cannot merge"):
        PixelMetrics().merge(PixelMetrics("nearest"))


def test_label_map_maps_benchmark_values(rng):
    # RoadAnomaly style: 2 = anomaly, 0 = normal; anything else void through '*'.
    scores = rng.random((10, 10)).astype(np.float32)
    raw = rng.choice(np.array([0, 2, 9], dtype=np.uint16), size=(10, 10), p=[0.7, 0.2, 0.1])
    mapped = np.select([raw == 0, raw == 2], [0, 1], 255).astype(np.uint8)
    result = pixel_metrics(scores, raw, label_map={0: 0, 2: 1, "*": 255})
    assert_matches(result, sklearn_reference(scores, mapped))
    with pytest.raises(ValueError, match="targets must be 0, 1 or 255"):
        PixelMetrics(label_map={2: 3})


def test_torch_integer_and_boolean_inputs(rng):
    scores = rng.random((6, 7)).astype(np.float32)
    labels = informative_labels(rng, scores)
    reference = sklearn_reference(scores, labels)
    assert_matches(pixel_metrics(torch.from_numpy(scores).to(torch.bfloat16).float(), torch.from_numpy(labels)),
                   sklearn_reference(torch.from_numpy(scores).to(torch.bfloat16).float().numpy(), labels))
    assert_matches(pixel_metrics(torch.from_numpy(scores), torch.from_numpy(labels)), reference)
    integer_scores = rng.integers(-300, 300, size=(6, 7)).astype(np.int16)
    assert_matches(pixel_metrics(integer_scores, labels), sklearn_reference(integer_scores, labels))
    binary = labels.copy()
    binary[binary == 255] = 0
    assert_matches(pixel_metrics(scores, binary.astype(bool)), sklearn_reference(scores, binary))


def test_protocol_resolution():
    assert Protocol.resolve() == Protocol()
    assert Protocol.resolve("nearest").fpr95 == "nearest"
    assert Protocol.resolve("per_image", fpr95="nearest").name == "per_image[fpr95=nearest]"
    with pytest.raises(TypeError, match="unknown protocol option"):
        Protocol.resolve(smoothing=True)


def test_curves_are_consistent_with_metrics(rng):
    scores = tied_scores(rng, (20, 20), np.float32)
    labels = informative_labels(rng, scores)
    metrics = PixelMetrics().update(scores, labels)
    curves = metrics.curves()
    fpr, tpr, thresholds = roc_curve(labels[labels != 255], scores[labels != 255], drop_intermediate=False)
    np.testing.assert_allclose(curves["fpr"], fpr[1:], atol=1e-15)
    np.testing.assert_allclose(curves["tpr"], tpr[1:], atol=1e-15)
    np.testing.assert_array_equal(curves["thresholds"], thresholds[1:])


def test_fpr95_boundary_and_nearest_tie_by_hand():
    # 20 anomalies at 100..81: TPR is exactly 0.95 at score 82. Inliers: 10 at 90, 10 at 81.5
    # (a threshold with no anomaly, same TPR as 82), 80 at 0.
    anomalies = np.arange(100, 80, -1, dtype=np.float64)
    inliers = np.r_[np.full(10, 90.0), np.full(10, 81.5), np.zeros(80)]
    scores = np.r_[anomalies, inliers]
    labels = np.r_[np.ones(20), np.zeros(100)].astype(np.uint8)
    assert pixel_metrics(scores, labels)["fpr95"] == 0.1  # the first threshold with TPR ≥ 0.95
    # Hendrycks' helper keeps the lowest threshold among equal TPRs: 81.5, where 20 inliers pass.
    assert pixel_metrics(scores, labels, "nearest")["fpr95"] == 0.2
    assert hendrycks_fpr_at_recall(labels, scores) == 0.2


def test_nearest_fpr95_breaks_equal_distances_towards_higher_tpr():
    # 50 anomalies at 200..151: TPR 0.94 (score 154) and 0.96 (score 153) are equally far from 0.95
    # in float64. Hendrycks' helper keeps the higher TPR, whose lowest threshold passes 15 inliers.
    scores = np.r_[np.arange(200, 150, -1.0), np.full(10, 153.5), np.full(5, 152.5), np.zeros(85)]
    labels = np.r_[np.ones(50), np.zeros(100)].astype(np.uint8)
    assert abs(47 / 50 - 0.95) == abs(48 / 50 - 0.95)
    assert hendrycks_fpr_at_recall(labels, scores) == 0.15
    assert pixel_metrics(scores, labels, "nearest")["fpr95"] == 0.15


def test_label_map_handles_label_values_above_255(rng):
    # LostAndFound-style ids: 0 void, 1 road, 2..300 obstacles.
    scores = rng.random(500).astype(np.float32)
    raw = rng.integers(0, 301, size=500).astype(np.int32)
    raw[:100] = 1
    mapped = np.select([raw == 0, raw == 1], [255, 0], 1).astype(np.uint8)
    result = pixel_metrics(scores, raw, label_map={0: 255, 1: 0, "*": 1})
    assert_matches(result, sklearn_reference(scores, mapped))
    with pytest.raises(ValueError, match="no mapping for them: 2, 3, 4"):
        pixel_metrics(scores, raw, label_map={0: 255, 1: 0})
