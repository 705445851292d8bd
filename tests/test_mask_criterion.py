"""Mask2Anomaly's training criterion: targets, matcher, point sampling, contrastive loss and Eq. 10."""

import itertools
import math

import numpy as np
import pytest
import torch

from diffeel.errors import DiffeelError
from diffeel.labels import ANOMALY_TRAIN_ID, NUM_CLASSES, VOID
from diffeel.losses import pooled_over_processes
from diffeel.train import TrainConfig
from diffeel.train.mask_criterion import (
    HungarianMatcher,
    SetCriterion,
    build_criterion,
    mask2anomaly_loss,
    mask_contrastive_loss,
    semantic_targets,
    uncertain_point_coords,
)

C = NUM_CLASSES


def random_outputs(seed, batch=1, queries=4, size=(6, 7), aux=0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)

    def one():
        logits = torch.randn(batch, queries, C + 1, generator=generator, dtype=torch.float64) * 2
        masks = torch.randn(batch, queries, *size, generator=generator, dtype=torch.float64) * 2
        return {"pred_logits": logits.requires_grad_(requires_grad), "pred_masks": masks.requires_grad_(requires_grad)}

    outputs = one()
    if aux:
        outputs["aux_outputs"] = [one() for _ in range(aux)]
    return outputs


def random_labels(seed, batch=1, size=(6, 7), classes=(0, 3, 8, 13)):
    rng = np.random.default_rng(seed)
    values = np.array([*classes, VOID, ANOMALY_TRAIN_ID])
    return torch.from_numpy(rng.choice(values, size=(batch, *size)).astype(np.int64))


# ---------------------------------------------------------------------------------------------
# targets


def test_semantic_targets_one_mask_per_present_class_without_void_or_anomaly():
    labels = torch.tensor([[[5, 5, VOID], [ANOMALY_TRAIN_ID, 0, 40]]])
    (target,) = semantic_targets(labels, padded_size=(3, 4))
    assert target["labels"].tolist() == [0, 5]
    expected = np.zeros((2, 3, 4), dtype=bool)
    expected[0, 1, 1] = True
    expected[1, 0, :2] = True
    np.testing.assert_array_equal(target["masks"].numpy(), expected)  # 254, 255, 40 and padding: 0 in every mask


def test_semantic_targets_empty_image():
    (target,) = semantic_targets(torch.full((1, 2, 2), VOID))
    assert target["labels"].numel() == 0 and target["masks"].shape == (0, 2, 2)


# ---------------------------------------------------------------------------------------------
# matcher


def direct_costs(logits, masks, targets, weights=(2.0, 5.0, 5.0)):
    """Transcription of Mask2Former's matching cost on every pixel of one image (float64 numpy)."""
    cost_class, cost_mask, cost_dice = weights
    logits = logits.detach().numpy()
    masks = masks.detach().numpy().reshape(masks.shape[0], -1)
    target_masks = targets["masks"].numpy().reshape(len(targets["labels"]), -1).astype(float)
    costs = np.zeros((logits.shape[0], len(targets["labels"])))
    for q in range(logits.shape[0]):
        probs = np.exp(logits[q] - logits[q].max())
        probs /= probs.sum()
        sig = 1 / (1 + np.exp(-masks[q]))
        for t, cls in enumerate(targets["labels"].tolist()):
            tm = target_masks[t]
            bce = np.mean(-(tm * np.log(sig) + (1 - tm) * np.log(1 - sig)))
            dice = 1 - (2 * np.sum(sig * tm) + 1) / (np.sum(sig) + np.sum(tm) + 1)
            costs[q, t] = -cost_class * probs[cls] + cost_mask * bce + cost_dice * dice
    return costs


def brute_force(costs):
    """Minimum total cost over every one-to-one assignment of min(Q, T) pairs."""
    queries, targets = costs.shape
    best = math.inf
    if targets <= queries:
        for chosen in itertools.permutations(range(queries), targets):
            best = min(best, sum(costs[q, t] for t, q in enumerate(chosen)))
    else:
        for chosen in itertools.permutations(range(targets), queries):
            best = min(best, sum(costs[q, t] for q, t in enumerate(chosen)))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_matcher_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    queries = int(rng.integers(1, 6))
    classes = tuple(rng.choice(C, size=int(rng.integers(1, 5)), replace=False))
    outputs = random_outputs(seed, queries=queries, size=(5, 6))
    labels = torch.from_numpy(rng.choice(np.array(classes), size=(1, 5, 6)).astype(np.int64))
    labels[0, 0, :len(classes)] = torch.tensor(classes)  # every class present
    targets = semantic_targets(labels)
    (rows, cols), = HungarianMatcher(num_points=None)(outputs, targets)
    costs = direct_costs(outputs["pred_logits"][0], outputs["pred_masks"][0], targets[0])
    assert len(rows) == min(queries, len(classes)) == len(set(rows.tolist())) == len(set(cols.tolist()))
    assert costs[rows.numpy(), cols.numpy()].sum() == pytest.approx(brute_force(costs), rel=1e-9, abs=1e-9)


def test_matcher_samples_one_point_set_shared_by_queries_and_targets():
    outputs = random_outputs(3, queries=5, size=(8, 8))
    labels = random_labels(3, size=(8, 8))
    targets = semantic_targets(labels)
    matcher = HungarianMatcher(num_points=50)
    first = matcher(outputs, targets, torch.Generator().manual_seed(7))
    again = matcher(outputs, targets, torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for pair in zip(first, again) for a, b in zip(*pair))
    # the matcher draws the image's points first from the generator: rebuild them and compare
    coords = torch.rand((50, 2), generator=torch.Generator().manual_seed(7), dtype=torch.float32)
    grid = (2 * coords - 1).view(1, 50, 1, 2).double()
    sample = lambda maps: torch.nn.functional.grid_sample(maps.unsqueeze(1).double(), grid.expand(len(maps), -1, -1, -1),
                                                          align_corners=False)[:, 0, :, 0]
    costs = matcher.cost_matrix(outputs["pred_logits"][0], sample(outputs["pred_masks"][0]), targets[0]["labels"],
                                sample(targets[0]["masks"].double())).numpy()
    rows, cols = first[0]
    assert costs[rows.numpy(), cols.numpy()].sum() == pytest.approx(brute_force(costs), rel=1e-6)


def test_uncertain_points_prefer_logits_near_zero():
    ramp = torch.linspace(-10, 10, 64).view(1, 1, 1, 64).expand(3, 1, 16, 64).contiguous()
    uncertain = uncertain_point_coords(ramp, 300, 3.0, 1.0, torch.Generator().manual_seed(0))
    mixed = uncertain_point_coords(ramp, 300, 3.0, 0.75, torch.Generator().manual_seed(0))
    uniform = uncertain_point_coords(ramp, 300, 3.0, 0.0, torch.Generator().manual_seed(0))
    assert uncertain.shape == (3, 300, 2) and float(uncertain.min()) >= 0 and float(uncertain.max()) <= 1
    near = lambda coords: float(((coords[..., 0] - 0.5).abs() < 0.2).double().mean())
    assert near(uncertain) > 0.95  # the third of 900 candidates nearest x = 0.5
    assert 0.6 < near(mixed) < 0.95
    assert near(uniform) < 0.55


# ---------------------------------------------------------------------------------------------
# contrastive loss


def direct_contrastive(outputs, labels, margin=1.0, void_as_inlier=False):
    logits = outputs["pred_logits"].detach().numpy()
    masks = outputs["pred_masks"].detach().numpy()
    inlier, anomaly = [], []
    for b in range(labels.shape[0]):
        probs = np.exp(logits[b]) / np.exp(logits[b]).sum(-1, keepdims=True)
        for y in range(labels.shape[1]):
            for x in range(labels.shape[2]):
                label = int(labels[b, y, x])
                semantic = [sum(probs[q, k] / (1 + math.exp(-masks[b, q, y, x])) for q in range(probs.shape[0]))
                            for k in range(C)]
                s = -max(semantic)
                if label == ANOMALY_TRAIN_ID:
                    anomaly.append(max(0.0, margin - s) ** 2)
                elif label < C or void_as_inlier:
                    inlier.append(s ** 2)
    return 0.5 * (np.mean(inlier) + (np.mean(anomaly) if anomaly else 0.0))


@pytest.mark.parametrize("void_as_inlier", [False, True])
def test_contrastive_loss_matches_formula(void_as_inlier):
    outputs = random_outputs(5, batch=2, queries=3, size=(4, 5))
    labels = random_labels(5, batch=2, size=(4, 5))
    value = mask_contrastive_loss(outputs["pred_logits"], outputs["pred_masks"], labels, margin=1.0, mask_stride=1,
                                  void_as_inlier=void_as_inlier)
    assert float(value) == pytest.approx(direct_contrastive(outputs, labels, 1.0, void_as_inlier), rel=1e-9)


def bilinear_align_corners(grid, rows, cols):
    """Bilinear resampling of a 2-D grid with align_corners=True (PyTorch's definition, written out):
    output pixel i sits at input position i·(n_in - 1)/(n_out - 1)."""
    out = np.zeros((rows, cols))
    for y in range(rows):
        for x in range(cols):
            sy = y * (grid.shape[0] - 1) / (rows - 1) if rows > 1 else 0.0
            sx = x * (grid.shape[1] - 1) / (cols - 1) if cols > 1 else 0.0
            y0, x0 = int(math.floor(sy)), int(math.floor(sx))
            y1, x1 = min(y0 + 1, grid.shape[0] - 1), min(x0 + 1, grid.shape[1] - 1)
            fy, fx = sy - y0, sx - x0
            out[y, x] = ((1 - fy) * (1 - fx) * grid[y0, x0] + (1 - fy) * fx * grid[y0, x1]
                         + fy * (1 - fx) * grid[y1, x0] + fy * fx * grid[y1, x1])
    return out


def test_contrastive_loss_official_resize_stretches_the_score_onto_the_labels():
    """Mask2Anomaly's code: the mask-grid score stretched onto the (unpadded) labels with
    align_corners=True, void pixels in the inlier term (its id mask is ood_mask == 0)."""
    outputs = random_outputs(6, batch=1, queries=3, size=(3, 4))
    labels = random_labels(6, size=(5, 7))
    value = mask_contrastive_loss(outputs["pred_logits"], outputs["pred_masks"], labels, mask_stride=2,
                                  void_as_inlier=True, resize="official")
    logits, masks = outputs["pred_logits"][0].double().numpy(), outputs["pred_masks"][0].double().numpy()
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    low = -np.einsum("qc,qhw->chw", probs[:, :C], 1 / (1 + np.exp(-masks))).max(0)
    score = bilinear_align_corners(low, 5, 7)
    anomaly = labels[0].numpy() == ANOMALY_TRAIN_ID
    expected = 0.5 * ((score[~anomaly] ** 2).mean() + (np.maximum(0, 1 - score[anomaly]) ** 2).mean())
    assert float(value) == pytest.approx(expected, rel=1e-6)
    padded = mask_contrastive_loss(outputs["pred_logits"], outputs["pred_masks"], labels, mask_stride=2, void_as_inlier=True)
    assert float(padded) != pytest.approx(expected, rel=1e-3)  # diffeel's default grid is another one


def test_contrastive_loss_default_upsamples_to_the_padded_input_unlike_the_official_stretch():
    outputs = random_outputs(6, batch=1, queries=3, size=(3, 4))
    labels = random_labels(6, size=(5, 7))  # the top-left 5×7 of a padded 6×8 input
    value = mask_contrastive_loss(outputs["pred_logits"], outputs["pred_masks"], labels, mask_stride=2)
    # as Mask2Anomaly: s = -max on the mask grid, then s upsampled (to the padded input, then cropped)
    from diffeel.scores import mask_logits
    low = -mask_logits(outputs["pred_logits"], outputs["pred_masks"], "softmax").amax(1, keepdim=True)  # Mask2Anomaly's softmaxed map
    score = torch.nn.functional.interpolate(low, size=(6, 8), mode="bilinear", align_corners=False)[:, 0, :5, :7]
    inlier = labels < C
    anomaly = labels == ANOMALY_TRAIN_ID
    expected = 0.5 * (score[inlier].square().mean() + (1 - score[anomaly]).clamp(min=0).square().mean())
    assert float(value) == pytest.approx(float(expected), rel=1e-9)


# ---------------------------------------------------------------------------------------------
# Eq. 10 and the criterion


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


@pytest.mark.parametrize("eel_logits", [None, "raw", "softmax"])
def test_eq10_terms_by_hand(eel_logits):
    logits = torch.zeros(1, 2, C + 1, dtype=torch.float64)
    logits[0, 0, 0] = 3.0  # query 0: road
    logits[0, 1, C] = 3.0  # query 1: no object
    logits[0, 1, 5] = -1.5  # query 1's raw logit of class 5: it weights mask 1 only with raw class logits
    masks = torch.tensor([[[[2.0, 1.0], [0.5, -1.0]], [[-1.0, -2.0], [0.0, 1.0]]]], dtype=torch.float64)
    labels = torch.tensor([[[0, 0], [0, ANOMALY_TRAIN_ID]]])
    mask_loss = {"train_points": None, "mask_stride": 1, "deep_supervision": False}
    config = {"loss": "m2a+eel", "mask_loss": {**mask_loss, **({"eel_logits": eel_logits} if eel_logits else {})}}
    terms = mask2anomaly_loss({"pred_logits": logits, "pred_masks": masks}, labels, config)

    sig = lambda v: 1 / (1 + math.exp(-v))
    c0, c1 = logits[0, 0].tolist(), logits[0, 1].tolist()
    p0, p1 = softmax(c0), softmax(c1)
    # L_eel's class weights: the raw class logits by default (the paper's c^T·Sigmoid(m)), or softmaxed
    w0, w1 = (p0, p1) if eel_logits == "softmax" else (c0, c1)
    # CE: query 0 → road (weight 1), query 1 → no object (weight 0.1)
    no_object = float(torch.tensor(0.1))  # the class-weight buffer is float32, as Mask2Former's empty_weight
    ce = (-math.log(p0[0]) + no_object * -math.log(p1[C])) / (1 + no_object)
    # point BCE and dice of query 0 against the road mask [[1, 1], [1, 0]] on all 4 pixels, one target mask
    m0, target = [2.0, 1.0, 0.5, -1.0], [1, 1, 1, 0]
    bce = sum(-(t * math.log(sig(m)) + (1 - t) * math.log(1 - sig(m))) for m, t in zip(m0, target)) / 4
    dice = 1 - (2 * sum(sig(m) * t for m, t in zip(m0, target)) + 1) / (sum(sig(m) for m in m0) + sum(target) + 1)
    # Eq. 7 on y_hat = Σ_q w_q[:C]·σ(m_q): pixel (1, 1) anomaly, the others inliers
    m1 = [-1.0, -2.0, 0.0, 1.0]
    inlier_terms, anomaly_terms = [], []
    for pixel in range(4):
        y = [w0[k] * sig(m0[pixel]) + w1[k] * sig(m1[pixel]) for k in range(C)]
        energy = math.log(sum(math.exp(v) for v in y))
        probs = [math.exp(v - energy) for v in y]
        entropy = -sum(p * math.log(p) for p in probs)
        if pixel == 3:
            anomaly_terms.append(math.log1p(math.exp(energy)) - entropy)  # -log σ(-E) - α·H
        else:
            inlier_terms.append(math.log1p(math.exp(-energy)) + entropy)  # -log(1 - σ(-E)) + α·H
    eel = sum(anomaly_terms) / len(anomaly_terms) + sum(inlier_terms) / len(inlier_terms)

    assert float(terms["ce"]) == pytest.approx(ce, rel=1e-12)
    assert float(terms["mask"]) == pytest.approx(bce, rel=1e-12)
    assert float(terms["dice"]) == pytest.approx(dice, rel=1e-12)
    assert float(terms["eel"]) == pytest.approx(eel, rel=1e-12)
    assert float(terms["total"]) == pytest.approx(2 * 1 * ce + 5 * bce + 5 * dice + 0.05 * eel, rel=1e-12)
    assert set(terms) == {"total", "ce", "mask", "dice", "eel"}


@pytest.mark.parametrize("loss", ["m2a", "m2a+eel"])
def test_deep_supervision_sums_over_aux_outputs(loss):
    outputs = random_outputs(8, batch=2, queries=4, size=(4, 5), aux=2)
    labels = random_labels(8, batch=2, size=(8, 10))
    settings = {"train_points": None, "mask_stride": 2}
    config = {"loss": loss, "mask_loss": settings}
    terms = mask2anomaly_loss(outputs, labels, config)
    anomaly = "eel" if loss == "m2a+eel" else "contrastive"
    names = ["ce", "mask", "dice", anomaly]
    assert set(terms) == {"total"} | {name + suffix for name in names for suffix in ("", "_0", "_1")}
    final = {key: value for key, value in outputs.items() if key != "aux_outputs"}
    single = [mask2anomaly_loss(prediction, labels, config)["total"] for prediction in [final, *outputs["aux_outputs"]]]
    assert float(terms["total"]) == pytest.approx(float(sum(single)), rel=1e-12)
    weight = {"ce": 2.0, "mask": 5.0, "dice": 5.0, anomaly: 0.05 if anomaly == "eel" else 1.0}
    recomposed = sum(weight[name.split("_")[0]] * float(value) for name, value in terms.items() if name != "total")
    assert float(terms["total"]) == pytest.approx(recomposed, rel=1e-12)

    no_aux = mask2anomaly_loss(outputs, labels, {"loss": loss, "mask_loss": {**settings, "deep_supervision": False}})
    assert float(no_aux["total"]) == pytest.approx(float(single[0]), rel=1e-12)
    aux_without_anomaly = mask2anomaly_loss(outputs, labels, {"loss": loss, "mask_loss": {**settings, "anomaly_on_aux": False}})
    assert anomaly + "_0" not in aux_without_anomaly and "dice_1" in aux_without_anomaly


def test_eq10_step_decreases_the_loss():
    outputs = random_outputs(9, batch=2, queries=5, size=(6, 6), aux=1, requires_grad=True)
    labels = random_labels(9, batch=2, size=(22, 24))
    config = TrainConfig("m2a+eel", steps=1, loss="m2a+eel", anomaly_weight=0.05, mask_loss={"train_points": 200})
    leaves = [outputs["pred_logits"], outputs["pred_masks"], *(v for aux in outputs["aux_outputs"] for v in aux.values())]
    before = mask2anomaly_loss(outputs, labels, config, torch.Generator().manual_seed(1))
    before["total"].backward()
    assert all(leaf.grad is not None and float(leaf.grad.abs().sum()) > 0 for leaf in leaves)
    with torch.no_grad():
        for leaf in leaves:
            leaf -= 0.05 * leaf.grad
    after = mask2anomaly_loss(outputs, labels, config, torch.Generator().manual_seed(1))
    assert after["total"].item() < before["total"].item()
    assert after["eel"].item() < before["eel"].item()


def test_default_point_sampling_runs_and_is_seeded():
    outputs = random_outputs(10, batch=2, queries=5, size=(8, 8))
    labels = random_labels(10, batch=2, size=(30, 32))
    config = {"loss": "m2a"}
    first = mask2anomaly_loss(outputs, labels, config, torch.Generator().manual_seed(2))
    again = mask2anomaly_loss(outputs, labels, config, torch.Generator().manual_seed(2))
    dense = mask2anomaly_loss(outputs, labels, {"loss": "m2a", "mask_loss": {"train_points": None}})
    assert all(float(first[k]) == float(again[k]) for k in first)
    assert all(math.isfinite(float(v)) for v in first.values())
    assert float(first["ce"]) == pytest.approx(float(dense["ce"]), rel=0.2)  # matching may differ on sampled points


def test_batch_means_pool_over_processes():
    outputs = random_outputs(11, batch=2, queries=4, size=(4, 4))
    labels = random_labels(11, batch=2, size=(16, 16))
    config = {"loss": "m2a", "mask_loss": {"train_points": None}}
    alone = mask2anomaly_loss(outputs, labels, config)
    # two processes holding identical shares: every count doubles and the result is scaled by 2 back
    with pooled_over_processes(lambda tensor: tensor * 2, 2):
        pooled = mask2anomaly_loss(outputs, labels, config)
    for name in alone:
        assert float(pooled[name]) == pytest.approx(float(alone[name]), rel=1e-12)


def test_build_criterion_settings():
    criterion = build_criterion(TrainConfig("m2a", steps=1, loss="m2a", anomaly_weight=1.0,
                                            mask_loss={"contrastive_margin": 0.75}))
    assert isinstance(criterion, SetCriterion) and criterion.anomaly_loss == "contrastive" and criterion.margin == 0.75
    assert criterion.weights == {"ce": 2.0, "mask": 5.0, "dice": 5.0, "contrastive": 1.0}
    assert criterion.empty_weight.tolist() == [1.0] * C + [pytest.approx(0.1)]
    assert criterion.matcher.num_points == 12544
    eel = build_criterion({"loss": "m2a+eel"})
    assert eel.weights == {"ce": 2.0, "mask": 5.0, "dice": 5.0, "eel": 0.05}
    with pytest.raises(DiffeelError, match="unknown mask_loss setting"):
        build_criterion({"loss": "m2a", "mask_loss": {"margin": 1}})
    with pytest.raises(DiffeelError, match="m2a"):
        build_criterion({"loss": "rpl"})
    with pytest.raises(ValueError, match="larger than the padded input"):
        mask2anomaly_loss(random_outputs(0, size=(2, 2)), random_labels(0, size=(9, 8)), {"loss": "m2a"})


def test_eel_on_the_mask_grid():
    from diffeel.losses import eel_loss, split_train_labels
    from diffeel.scores import mask_logits
    from diffeel.train.mask_criterion import mask_eel_loss

    outputs = random_outputs(12, batch=2, queries=3, size=(3, 4))
    labels = random_labels(12, batch=2, size=(5, 7))  # top-left of a padded 6×8 input at stride 2
    value = mask_eel_loss(outputs["pred_logits"], outputs["pred_masks"], labels, mask_stride=2, resolution="mask")
    padded = torch.full((2, 6, 8), VOID)
    padded[:, :5, :7] = labels
    anomaly, inlier = split_train_labels(padded[:, 1::2, 1::2])  # the label at each cell's centre
    expected = eel_loss(mask_logits(outputs["pred_logits"], outputs["pred_masks"]), anomaly, inlier)
    assert float(value) == pytest.approx(float(expected), rel=1e-12)
    same = [mask_eel_loss(outputs["pred_logits"], outputs["pred_masks"], labels[:, :3, :4], mask_stride=1, resolution=r)
            for r in ("mask", "label")]
    assert float(same[0]) == pytest.approx(float(same[1]), rel=1e-12)


def test_the_m2a_preset_takes_the_official_contrastive_choices():
    from diffeel.train.recipes import preset

    official = build_criterion(preset("m2a"))
    assert official.void_as_inlier and official.contrastive_resize == "official"
    eel = build_criterion(preset("m2a+eel"))
    assert eel.anomaly_loss == "eel" and eel.eel_logits == "raw"
