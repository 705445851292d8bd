import numpy as np
import pytest
import torch
from scipy import ndimage

from diffeel import scores


def reference_scores(logits: np.ndarray, alpha: float = 1.0) -> dict:
    """Textbook float64 formulas, class axis 1, written without the library's shift trick."""
    logits = logits.astype(np.float64)
    peak = logits.max(axis=1, keepdims=True)
    exp = np.exp(logits - peak)
    probs = exp / exp.sum(axis=1, keepdims=True)
    log_partition = np.log(np.exp(logits - peak).sum(axis=1)) + peak[:, 0]
    entropy = -(probs * np.log(np.where(probs > 0, probs, 1.0))).sum(axis=1)
    return {
        "msp": 1.0 - probs.max(axis=1),
        "max_logit": -logits.max(axis=1),
        "energy": -log_partition,
        "entropy": entropy,
        "eel": alpha * entropy - log_partition,
    }


@pytest.mark.parametrize("name", ["msp", "max_logit", "energy", "entropy", "eel"])
def test_scores_match_float64_reference(rng, name):
    logits = rng.normal(0, 3, size=(2, 19, 5, 7))
    expected = reference_scores(logits)[name]
    got = scores.compute_score(name, logits)
    assert isinstance(got, np.ndarray) and got.shape == (2, 5, 7) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    tensor_result = scores.compute_score(name, torch.from_numpy(logits))
    assert isinstance(tensor_result, torch.Tensor)
    np.testing.assert_allclose(tensor_result.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_all_scores_at_once_equal_the_reference(rng):
    logits = rng.normal(0, 3, size=(2, 19, 5, 7))
    expected = reference_scores(logits, alpha=0.5)
    got = scores.all_scores(logits, alpha=0.5)
    assert set(got) == set(scores.SCORES)
    for name, values in got.items():
        np.testing.assert_allclose(values, expected[name], rtol=1e-12, atol=1e-12, err_msg=name)
    as_tensors = scores.all_scores(torch.from_numpy(logits).float())
    for name, values in as_tensors.items():
        assert values.dtype == torch.float32
        np.testing.assert_allclose(values.numpy(), scores.compute_score(name, logits.astype(np.float32)), rtol=1e-5, atol=1e-5)


def test_eel_alpha_weights_entropy(rng):
    logits = rng.normal(size=(1, 4, 3, 3))
    expected = 2.5 * reference_scores(logits)["entropy"] + reference_scores(logits)["energy"]
    np.testing.assert_allclose(scores.eel(logits, alpha=2.5), expected, rtol=1e-12)


def test_entropy_extremes():
    uniform = np.zeros((1, 19, 2, 2))
    np.testing.assert_allclose(scores.entropy(uniform), np.log(19), rtol=1e-12)
    np.testing.assert_allclose(scores.msp(uniform), 1 - 1 / 19, rtol=1e-12)
    confident = np.zeros((1, 19, 2, 2))
    confident[:, 3] = 1e4
    np.testing.assert_array_equal(scores.entropy(confident), 0.0)
    np.testing.assert_array_equal(scores.msp(confident), 0.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["msp", "max_logit", "energy", "entropy", "eel"])
def test_scores_finite_for_large_logits_in_every_dtype(name, dtype):
    generator = torch.Generator().manual_seed(0)
    magnitude = 6e4 if dtype == torch.float16 else 1e4  # float16 tops out at 65504
    logits = (torch.rand(2, 19, 4, 4, generator=generator) * 2 - 1) * magnitude
    logits[0, :2] = magnitude  # a tie at the maximum
    result = scores.compute_score(name, logits.to(dtype))
    assert torch.isfinite(result).all()
    assert result.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    expected = reference_scores(logits.to(dtype).double().numpy())[name]
    np.testing.assert_allclose(result.double().numpy(), expected, rtol=1e-5, atol=1e-3)


def test_entropy_is_accurate_where_the_literal_formula_cancels():
    # E - Σ p·y in float32 at |y| ~ 1e4 loses ~1e-3 absolute; the shifted form keeps ~1e-7.
    logits = torch.tensor([[[[1e4]], [[1e4 - 1.0]]]], dtype=torch.float32)
    p = 1 / (1 + np.exp(-1.0))
    expected = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    assert abs(float(scores.entropy(logits)) - expected) < 1e-6


def test_class_dim_option(rng):
    logits = rng.normal(size=(19, 6, 5))
    np.testing.assert_allclose(scores.eel(logits, dim=0), scores.eel(logits[None])[0], rtol=1e-12)


def test_mask_logits_and_mask_msp_match_loops(rng):
    batch, queries, classes, height, width = 2, 5, 4, 3, 6
    class_logits = rng.normal(size=(batch, queries, classes + 1))
    mask_logits = rng.normal(size=(batch, queries, height, width))
    raw = np.zeros((batch, classes, height, width))  # the paper's c^T·Sigmoid(m), raw class logits
    softmaxed = np.zeros((batch, classes, height, width))  # Eq. 3's softmax(c)^T·Sigmoid(m)
    for b in range(batch):
        for q in range(queries):
            probs = np.exp(class_logits[b, q]) / np.exp(class_logits[b, q]).sum()
            mask = 1 / (1 + np.exp(-mask_logits[b, q]))
            for c in range(classes):
                raw[b, c] += class_logits[b, q, c] * mask
                softmaxed[b, c] += probs[c] * mask
    np.testing.assert_allclose(scores.mask_logits(class_logits, mask_logits), raw, rtol=1e-12)
    np.testing.assert_allclose(scores.mask_logits(class_logits, mask_logits, "softmax"), softmaxed, rtol=1e-12)
    np.testing.assert_allclose(scores.mask_msp(class_logits, mask_logits), 1 - softmaxed.max(axis=1), rtol=1e-12)
    with pytest.raises(ValueError, match="class_weights"):
        scores.mask_logits(class_logits, mask_logits, "sigmoid")


def test_raw_mask_logits_give_energy_its_range(rng):
    """With softmaxed class weights the energy of a confident mask model sits near log C whatever
    the pixel (the reason method.md uses raw class logits); with raw ones it follows the logits."""
    queries, classes = 20, 19
    class_logits = np.zeros((1, queries, classes + 1))
    class_logits[0, np.arange(queries), np.arange(queries) % classes] = np.linspace(2.0, 12.0, queries)
    mask_logits = rng.normal(scale=4.0, size=(1, queries, 16, 16))
    softmax_energy = -scores.energy(scores.mask_logits(class_logits, mask_logits, "softmax"))
    raw_energy = -scores.energy(scores.mask_logits(class_logits, mask_logits))
    assert np.ptp(softmax_energy) < 1.5 and abs(np.median(softmax_energy) - np.log(classes)) < 1.0
    assert np.ptp(raw_energy) > 5 * np.ptp(softmax_energy)


def test_mask_scores_reject_mismatched_queries(rng):
    with pytest.raises(ValueError, match="queries"):
        scores.mask_logits(rng.normal(size=(1, 4, 5)), rng.normal(size=(1, 3, 2, 2)))


def test_gaussian_smooth_matches_scipy_mirror_filter(rng):
    score_map = rng.normal(size=(2, 17, 23))
    expected = np.stack([ndimage.gaussian_filter(m, sigma=1.0, truncate=3.0, mode="mirror") for m in score_map])
    np.testing.assert_allclose(scores.gaussian_smooth(score_map), expected, rtol=1e-10, atol=1e-12)
    single = torch.from_numpy(score_map[0]).float()
    assert scores.gaussian_smooth(single).shape == single.shape


def test_gaussian_smooth_rejects_bad_arguments(rng):
    with pytest.raises(ValueError, match="odd"):
        scores.gaussian_smooth(rng.normal(size=(9, 9)), kernel_size=4)
    with pytest.raises(ValueError, match="too small"):
        scores.gaussian_smooth(rng.normal(size=(2, 9)))


def test_unknown_score_and_integer_logits_are_rejected():
    with pytest.raises(ValueError, match="unknown score"):
        scores.compute_score("bogus", np.zeros((1, 2, 1, 1)))
    with pytest.raises(TypeError, match="floating"):
        scores.energy(np.zeros((1, 2, 1, 1), dtype=np.int64))
