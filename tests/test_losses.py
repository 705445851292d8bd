import math

import numpy as np
import pytest
import torch

from diffeel import losses
from diffeel.labels import ANOMALY_TRAIN_ID, VOID


def log_partition_entropy(logits: np.ndarray):
    """Per-pixel (E, H) at one pixel's logit vector, textbook float64."""
    e = math.log(sum(math.exp(v) for v in logits))
    probs = [math.exp(v - e) for v in logits]
    return e, -sum(p * math.log(p) for p in probs)


def direct_eel_loss(logits: np.ndarray, anomaly: np.ndarray, inlier: np.ndarray, alpha: float, sign: float) -> float:
    per_image = []
    for b in range(logits.shape[0]):
        terms = {True: [], False: []}
        for y in range(logits.shape[2]):
            for x in range(logits.shape[3]):
                if not (anomaly[b, y, x] or inlier[b, y, x]):
                    continue
                e, h = log_partition_entropy(logits[b, :, y, x])
                anomaly_probability = 1 / (1 + math.exp(e))  # σ(-E)
                if anomaly[b, y, x]:
                    terms[True].append(-math.log(anomaly_probability) - alpha * h)
                else:
                    terms[False].append(-math.log(1 - anomaly_probability) + sign * alpha * h)
        if terms[True] or terms[False]:
            per_image.append(sum(np.mean(t) for t in terms.values() if t))
    return float(np.mean(per_image))


def random_case(seed=0, batch=3, classes=5, size=(4, 5)):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, *size, generator=generator, dtype=torch.float64) * 2
    labels = torch.randint(0, classes, (batch, *size), generator=generator)
    labels[torch.rand(batch, *size, generator=generator, dtype=torch.float64) < 0.2] = ANOMALY_TRAIN_ID
    labels[torch.rand(batch, *size, generator=generator, dtype=torch.float64) < 0.1] = VOID
    anomaly, inlier = losses.split_train_labels(labels, num_classes=classes)
    return logits, anomaly, inlier


@pytest.mark.parametrize("mode, sign", [("confident", 1.0), ("paper", -1.0)])
@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_eel_loss_matches_direct_formula(mode, sign, alpha):
    logits, anomaly, inlier = random_case()
    anomaly[1] = False  # an image with inliers only contributes its inlier term
    got = losses.eel_loss(logits, anomaly, inlier, alpha=alpha, inlier_entropy=mode)
    expected = direct_eel_loss(logits.numpy(), anomaly.numpy(), inlier.numpy(), alpha, sign)
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_eel_loss_ignores_all_void_images_and_void_pixels():
    logits, anomaly, inlier = random_case()
    anomaly[2] = inlier[2] = False
    changed = logits.clone()
    changed[2] += 100.0  # an all-void image
    changed[0][:, ~(anomaly[0] | inlier[0])] = 50.0  # void pixels of another image
    assert float(losses.eel_loss(changed, anomaly, inlier)) == pytest.approx(float(losses.eel_loss(logits, anomaly, inlier)))
    nothing = torch.zeros_like(anomaly)
    empty = losses.eel_loss(logits.requires_grad_(), nothing, nothing)
    assert empty.detach().item() == 0.0 and empty.requires_grad


def test_eel_loss_finite_for_extreme_logits():
    logits, anomaly, inlier = random_case()
    assert torch.isfinite(losses.eel_loss(logits * 1e4, anomaly, inlier))


def test_eel_loss_rejects_overlapping_masks_and_bad_mode():
    logits, anomaly, inlier = random_case()
    with pytest.raises(ValueError, match="overlap"):
        losses.eel_loss(logits, anomaly, anomaly | inlier)
    with pytest.raises(ValueError, match="inlier_entropy"):
        losses.eel_loss(logits, anomaly, inlier, inlier_entropy="other")
    with pytest.raises(ValueError, match="does not match"):
        losses.eel_loss(logits, anomaly[:, :2], inlier)


def test_gradients_of_every_loss_pass_gradcheck():
    logits, anomaly, inlier = random_case(seed=1, batch=2, classes=4, size=(3, 3))
    logits.requires_grad_(True)
    ref = torch.randn_like(logits)
    checks = {
        "eel": lambda x: losses.eel_loss(x, anomaly, inlier),
        "eel paper": lambda x: losses.eel_loss(x, anomaly, inlier, inlier_entropy="paper"),
        "consistency": lambda x: losses.consistency_loss(x, ref, inlier),
        "rpl energy": lambda x: losses.rpl_energy_loss(x + 1.0, anomaly),
        "rpl inlier": lambda x: losses.rpl_inlier_loss(x, ref, inlier),
    }
    for name, function in checks.items():
        assert torch.autograd.gradcheck(function, (logits,), eps=1e-6, atol=1e-6), name


def direct_consistency(logits, ref, inlier) -> float:
    values = []
    for b, y, x in zip(*np.nonzero(inlier)):
        out, target = logits[b, :, y, x], ref[b, :, y, x]
        log_p = out - np.log(np.exp(out).sum())
        log_q = target - np.log(np.exp(target).sum())
        q = np.exp(log_q)
        entropy_gap = -(q * log_q).sum() + (np.exp(log_p) * log_p).sum()
        values.append(-log_p[np.argmax(target)] + (q * (log_q - log_p)).sum() + entropy_gap**2)
    return float(np.mean(values))


def test_consistency_loss_matches_direct_formula_and_ref_gets_no_gradient():
    logits, anomaly, inlier = random_case(seed=2)
    ref = torch.randn_like(logits, requires_grad=True)
    trained = logits.clone().requires_grad_(True)
    loss = losses.consistency_loss(trained, ref, inlier)
    assert loss.item() == pytest.approx(direct_consistency(logits.numpy(), ref.detach().numpy(), inlier.numpy()), rel=1e-12)
    loss.backward()
    assert ref.grad is None and trained.grad is not None
    assert torch.all(trained.grad.permute(0, 2, 3, 1)[~inlier] == 0)
    assert torch.any(trained.grad.permute(0, 2, 3, 1)[inlier] != 0)


def test_consistency_loss_of_identical_predictions_is_their_cross_entropy():
    logits, _, inlier = random_case(seed=3)
    expected = -torch.log_softmax(logits, 1).amax(1)[inlier].mean()  # argmax target = most likely class
    assert float(losses.consistency_loss(logits, logits, inlier)) == pytest.approx(float(expected), rel=1e-12)


def test_rpl_baselines_match_direct_formulas():
    logits, anomaly, inlier = random_case(seed=4)
    ref = torch.randn_like(logits)
    lse = torch.logsumexp(logits, 1)
    assert float(losses.rpl_energy_loss(logits, anomaly)) == pytest.approx(float(lse[anomaly].clamp(min=0).mean()))

    def rpl_entropy(x):
        p = torch.softmax(x, 1)
        return -(p * torch.log(torch.clamp(p, min=1e-7))).sum(1)

    cross_entropy = torch.nn.functional.cross_entropy(logits, ref.argmax(1), reduction="none")[inlier]
    gap = (rpl_entropy(ref) - rpl_entropy(logits))[inlier] ** 2
    assert float(losses.rpl_inlier_loss(logits, ref, inlier)) == pytest.approx(float((cross_entropy + gap).mean()), rel=1e-12)


def test_totals_combine_terms_with_lambda():
    logits, anomaly, inlier = random_case(seed=5)
    ref = torch.randn_like(logits)
    eq8 = losses.rpl_eel_total_loss(logits, ref, anomaly, inlier)
    expected = losses.consistency_loss(logits, ref, inlier) + 0.05 * losses.eel_loss(logits, anomaly, inlier)
    assert float(eq8["total"]) == pytest.approx(float(expected), rel=1e-12)
    baseline = losses.rpl_baseline_total_loss(logits, ref, anomaly, inlier)
    assert float(baseline["total"]) == pytest.approx(float(baseline["inlier"] + 0.05 * baseline["energy"]), rel=1e-12)


def test_split_train_labels():
    labels = torch.tensor([[0, 18, 19, ANOMALY_TRAIN_ID, VOID]])
    anomaly, inlier = losses.split_train_labels(labels)
    assert anomaly.tolist() == [[False, False, False, True, False]]
    assert inlier.tolist() == [[True, True, False, False, False]]
