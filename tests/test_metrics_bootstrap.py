import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from diffeel.metrics import UndefinedMetricWarning, bootstrap, pixel_metrics
from diffeel.metrics._counts import to_keys
from diffeel.metrics.bootstrap import BootstrapAccumulator, _metrics_of_rows, image_histogram
from diffeel.metrics.pixel import Protocol, _anomaly_side_of_histograms, metrics_from_counts

METRICS = ("auprc", "fpr95", "auroc")


def make_images(rng, n_images, shape=(12, 16), dtype=np.float16, anomaly_rate=0.25, levels=None):
    """Images whose scores rank anomalies higher on average, with ties, void and both zero signs."""
    images = []
    for _ in range(n_images):
        labels = (rng.random(shape) < anomaly_rate).astype(np.uint8)
        scores = rng.normal(size=shape) + 1.2 * labels + rng.normal(scale=0.3)
        if levels:
            scores = np.round(scores * levels) / levels  # many ties
        scores = scores.astype(dtype)
        scores[rng.random(shape) < 0.03] = np.array(-0.0, dtype=dtype)
        scores[rng.random(shape) < 0.03] = 0.0
        labels[rng.random(shape) < 0.1] = 255
        images.append((scores, labels))
    return images


def accumulator_of(images, ids=None):
    accumulator = BootstrapAccumulator()
    for image_id, (scores, labels) in zip(ids or range(len(images)), images):
        accumulator.add_map(scores, labels, image_id=image_id)
    return accumulator


def sklearn_metrics(scores, labels):
    valid = labels != 255
    y, s = labels[valid].ravel(), scores[valid].astype(np.float64).ravel()
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {"auprc": average_precision_score(y, s), "fpr95": fpr[np.argmax(tpr >= 0.95)], "auroc": roc_auc_score(y, s)}


# ---- per-image tables -------------------------------------------------------------------------


def test_image_histogram_counts_each_float16_value_per_class_and_drops_void(rng):
    scores, labels = make_images(rng, 1, shape=(40, 50), levels=8)[0]
    labels[0, :5], scores[0, :5] = 255, np.nan  # void pixels may hold anything
    keys, inliers, anomalies = image_histogram(scores, labels)

    assert keys.dtype == np.uint16 and np.all(np.diff(keys.astype(np.int64)) > 0)
    assert np.all(inliers + anomalies > 0)  # only nonzero bins
    for label, counts in ((0, inliers), (1, anomalies)):
        values = scores[labels == label] + np.float16(0.0)  # -0.0 ties with +0.0
        expected_keys, expected_counts = np.unique(to_keys(values, "f16"), return_counts=True)
        present = counts > 0
        assert np.array_equal(keys[present], expected_keys)
        assert np.array_equal(counts[present], expected_counts)
    assert inliers.sum() + anomalies.sum() == np.count_nonzero(labels != 255)


def test_wider_scores_are_rounded_to_float16_only_for_the_bootstrap(rng):
    scores, labels = make_images(rng, 1, shape=(30, 30), dtype=np.float32)[0]
    rounded = image_histogram(scores.astype(np.float16), labels)
    for ours, theirs in zip(image_histogram(scores, labels), rounded):
        assert np.array_equal(ours, theirs)
    for ours, theirs in zip(image_histogram(scores.astype(np.float64), labels), rounded):
        assert np.array_equal(ours, theirs)

    scores[0, 0], labels[0, 0] = 1e6, 1  # beyond float16: saturates to +inf, still the top score
    with pytest.warns(UserWarning, match="saturate"):
        keys, _, anomalies = image_histogram(scores, labels)
    assert keys[-1] == to_keys(np.array([np.inf], dtype=np.float16), "f16")[0] and anomalies[-1] == 1


# ---- replicates are the metrics of the resampled sets ------------------------------------------


@pytest.mark.parametrize("protocol", ["pooled", "trapezoid", "nearest", "skip_empty", "per_image"])
def test_each_replicate_is_the_metric_of_its_resampled_images(rng, protocol):
    images = make_images(rng, 9, levels=4)
    images[2][1][images[2][1] == 1] = 0  # an image without anomalies (matters for skip_empty, per_image)
    accumulator = accumulator_of(images, ids=[f"frame{i}" for i in range(9)])
    values = accumulator.replicates(40, seed=3, protocol=protocol)
    draws = accumulator.draws(40, seed=3)
    assert draws.shape == (40, 9)

    for replicate in (0, 7, 21, 39):
        scores = np.stack([images[i][0] for i in draws[replicate]])
        labels = np.stack([images[i][1] for i in draws[replicate]])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            expected = pixel_metrics(scores, labels, protocol)
        if protocol == "pooled":  # and independently of our own pixel metrics
            reference = sklearn_metrics(scores, labels)
            assert all(abs(expected[name] - reference[name]) < 1e-12 for name in METRICS)
        for name in METRICS:
            assert values[name][replicate] == pytest.approx(expected[name], abs=1e-12), (replicate, name)


def count_rows_of(scores, labels):
    """One set's per-value (inlier, anomaly) counts, values ascending, as single-row arrays."""
    values, position = np.unique(scores, return_inverse=True)
    counts = [np.bincount(position[labels == label], minlength=len(values))[None] for label in (0, 1)]
    return counts


def assert_rows_match_metrics_from_counts(inliers, anomalies, protocol):
    ours = _metrics_of_rows(
        inliers.astype(float), anomalies.astype(float), inliers.sum(1).astype(float), anomalies.sum(1).astype(float), protocol
    )
    for row in range(len(inliers)):
        _, *side = _anomaly_side_of_histograms(inliers[row], anomalies[row])
        expected = metrics_from_counts(*side, protocol)
        for index, name in enumerate(METRICS):
            assert ours[index, row] == pytest.approx(expected[name], abs=1e-13), (protocol.name, row, name)
    return ours


@pytest.mark.parametrize("auprc", ["step", "trapezoid"])
@pytest.mark.parametrize("fpr95", ["first", "nearest"])
def test_vectorised_metrics_agree_with_metrics_from_counts(rng, auprc, fpr95):
    protocol = Protocol.resolve("pooled", auprc=auprc, fpr95=fpr95)
    n_keys = 300
    inliers = rng.integers(0, 50, size=(25, n_keys)) * (rng.random((25, n_keys)) < 0.6)
    anomalies = rng.integers(0, 5, size=(25, n_keys)) * (rng.random((25, n_keys)) < np.linspace(0.05, 0.8, n_keys))
    anomalies[0] = 0
    anomalies[0, [10, 200]] = [1, 19]  # TPR reaches exactly 0.95 at a key
    anomalies[1] = 0
    anomalies[1, -1] = 7  # all anomalies at the top key
    anomalies[2, :-3] = 0  # anomalies only at the three highest keys
    assert_rows_match_metrics_from_counts(inliers, anomalies, protocol)

    # The FPR95 boundary and Hendrycks' tie cases of test_metrics_pixel, as count rows.
    boundary = count_rows_of(
        np.r_[np.arange(100, 80, -1.0), np.full(10, 90.0), np.full(10, 81.5), np.zeros(80)], np.r_[np.ones(20), np.zeros(100)]
    )
    equal_distances = count_rows_of(
        np.r_[np.arange(200, 150, -1.0), np.full(10, 153.5), np.full(5, 152.5), np.zeros(85)], np.r_[np.ones(50), np.zeros(100)]
    )
    expected_fpr95 = {"first": (0.1, 0.1), "nearest": (0.2, 0.15)}[fpr95]
    for rows, expected in zip((boundary, equal_distances), expected_fpr95):
        assert assert_rows_match_metrics_from_counts(*rows, protocol)[1, 0] == expected


# ---- reproducibility ----------------------------------------------------------------------------


def test_same_seed_repeats_exactly_and_another_seed_differs(rng):
    accumulator = accumulator_of(make_images(rng, 15))
    first, again = accumulator.intervals(300, seed=5), accumulator.intervals(300, seed=5)
    other = accumulator.intervals(300, seed=6)
    assert first == again
    assert all(first[name] != other[name] for name in METRICS)
    assert first["seed"] == 5 and other["seed"] == 6


def test_result_ignores_adding_order_and_merge_grouping(rng):
    images = make_images(rng, 12)
    ids = [f"img{i:02d}" for i in range(12)]
    reference = accumulator_of(images, ids)

    order = rng.permutation(12)
    shuffled = accumulator_of([images[i] for i in order], [ids[i] for i in order])
    groups = [BootstrapAccumulator() for _ in range(3)]
    for position in order:
        groups[position % 3].add(image_histogram(*images[position]), image_id=ids[position])
    merged = groups[2].merge(groups[0]).merge(groups[1])

    expected = reference.replicates(200, seed=1)
    for other in (shuffled, merged):
        assert other.image_ids == ids
        values = other.replicates(200, seed=1)
        assert all(np.array_equal(values[name], expected[name]) for name in METRICS)
    assert merged.intervals(200, seed=1) == reference.intervals(200, seed=1)


def test_chunking_product_path_and_replicate_count_do_not_change_the_replicates(rng, monkeypatch):
    accumulator = accumulator_of(make_images(rng, 10))
    values = accumulator.replicates(60, seed=2)
    tiny_chunks = accumulator.replicates(60, seed=2, chunk_bytes=4096)  # many chunks and key blocks
    fewer = accumulator.replicates(25, seed=2)
    monkeypatch.setattr(bootstrap, "_SPARSE_PRODUCT_DENSITY", 2.0)  # sparse products for both classes
    sparse = accumulator.replicates(60, seed=2)
    monkeypatch.setattr(bootstrap, "_SPARSE_PRODUCT_DENSITY", 0.0)  # dense blocks for both classes
    dense = accumulator.replicates(60, seed=2)
    for name in METRICS:
        assert np.array_equal(values[name], tiny_chunks[name])
        assert np.array_equal(values[name][:25], fewer[name])  # the first replicates are a prefix
        assert np.array_equal(sparse[name], dense[name])  # both products are exact


# ---- the intervals --------------------------------------------------------------------------------


def test_bounds_are_the_percentiles_of_the_replicates(rng):
    accumulator = accumulator_of(make_images(rng, 10))
    values = accumulator.replicates(150, seed=4)
    result = accumulator.intervals(150, seed=4, confidence=0.8)
    for name in METRICS:
        assert result[name] == list(np.percentile(values[name], [10, 90]))
    assert (result["n_resamples"], result["n_skipped"], result["confidence"], result["n_images"]) == (150, 0, 0.8, 10)


def test_interval_contains_the_estimate_and_narrows_with_more_images(rng):
    images = make_images(rng, 160, shape=(10, 10))
    widths = {}
    for n_images in (16, 160):
        subset = images[:n_images]
        result = accumulator_of(subset).intervals(400, seed=0)
        estimate = pixel_metrics(np.stack([s for s, _ in subset]), np.stack([l for _, l in subset]))
        for name in METRICS:
            low, high = result[name]
            assert low < estimate[name] < high, (n_images, name)
        widths[n_images] = {name: result[name][1] - result[name][0] for name in METRICS}
    for name in METRICS:
        assert widths[160][name] < 0.6 * widths[16][name]  # ~ 1/sqrt(10) expected


def test_replicates_without_both_classes_are_skipped_and_counted(rng):
    images = make_images(rng, 4)
    for _, labels in images[1:]:
        labels[labels == 1] = 0  # only image 0 has anomalies
    accumulator = accumulator_of(images)
    result = accumulator.intervals(500, seed=9)
    missing_anomalies = ~(accumulator.draws(500, seed=9) == 0).any(axis=1)
    assert result["n_skipped"] == missing_anomalies.sum() > 0
    values = accumulator.replicates(500, seed=9)
    assert np.isnan(values["auprc"][missing_anomalies]).all() and not np.isnan(values["auprc"][~missing_anomalies]).any()
    assert result["auprc"] == list(np.percentile(values["auprc"][~missing_anomalies], [2.5, 97.5]))

    no_anomalies = accumulator_of(images[1:])
    with pytest.warns(UndefinedMetricWarning, match="all 50"):
        result = no_anomalies.intervals(50)
    assert np.isnan(result["auroc"]).all() and result["n_skipped"] == 50


# ---- errors -------------------------------------------------------------------------------------


def test_bad_input_is_rejected_with_a_clear_error(rng):
    scores, labels = make_images(rng, 1)[0]
    with pytest.raises(ValueError, match="outside"):
        image_histogram(scores, np.where(labels == 1, 2, labels).astype(np.uint8))
    bad_scores = scores.copy()
    bad_scores[labels != 255] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        image_histogram(bad_scores, labels)
    with pytest.raises(ValueError, match="does not match"):
        image_histogram(scores[:, :-1], labels)

    accumulator = BootstrapAccumulator()
    with pytest.raises(ValueError, match="no images"):
        accumulator.intervals(10)
    accumulator.add_map(scores, labels, image_id="a")
    with pytest.raises(ValueError, match="already added"):
        accumulator.add_map(scores, labels, image_id="a")
    other = BootstrapAccumulator().add_map(scores, labels, image_id="a")
    with pytest.raises(ValueError, match="sharing image ids"):
        accumulator.merge(other)
    keys, inliers, anomalies = image_histogram(scores, labels)
    with pytest.raises(ValueError, match="ascending"):
        accumulator.add((keys[::-1], inliers[::-1], anomalies[::-1]), image_id="b")
    with pytest.raises(TypeError, match="image_id"):
        accumulator.add((keys, inliers, anomalies), image_id=1.5)
    for options in ({"confidence": 1.0}, {"confidence": 0}, {"n_resamples": 0}, {"seed": -1}):
        with pytest.raises(ValueError):
            accumulator.intervals(**options)
    assert accumulator.n_images == 1  # failed calls left the state alone


# ---- paired differences over training seeds and test images ------------------------------------


def boosted(images, amount):
    """The same images with every anomaly pixel's score raised by ``amount`` (a uniformly better method)."""
    return [(np.where(labels == 1, scores.astype(np.float32) + amount, scores).astype(np.float16), labels) for scores, labels in images]


def test_point_is_the_metric_of_all_images(rng):
    images = make_images(rng, 6)
    scores = np.concatenate([s.ravel() for s, _ in images])
    labels = np.concatenate([lab.ravel() for _, lab in images])
    expected = sklearn_metrics(scores, labels)
    point = accumulator_of(images).point()
    assert point["auprc"] == pytest.approx(expected["auprc"], abs=1e-12)
    assert point["auroc"] == pytest.approx(expected["auroc"], abs=1e-12)


def test_paired_difference_sees_a_small_uniform_gain_that_image_noise_would_hide(rng):
    """A beats B on every image by a little; both vary a lot from one image draw to another. Paired
    (the same draws for both), the interval excludes 0; each method's own interval is far wider."""
    images = make_images(rng, 30, anomaly_rate=0.2)
    base, better = accumulator_of(images), accumulator_of(boosted(images, 0.15))
    result = bootstrap.paired_difference([better], [base], n_resamples=300, seed=1)
    assert result["difference"] > 0 and result["low"] > 0 and result["n_seeds"] == 1
    own = base.intervals(n_resamples=300, seed=1)["auprc"]
    assert own[1] - own[0] > 3 * (result["high"] - result["low"])
    same = bootstrap.paired_difference([base], [accumulator_of(images)], n_resamples=50)
    assert same["difference"] == same["low"] == same["high"] == 0.0


def test_paired_difference_carries_training_noise_across_seeds(rng):
    """Seeds are resampled too: a method that wins big on two seeds and loses big on the third is
    not shown to win, while three wins are."""
    images = make_images(rng, 20, anomaly_rate=0.2)
    base = accumulator_of(images)
    win, lose = accumulator_of(boosted(images, 0.6)), accumulator_of(boosted(images, -1.5))
    mixed = bootstrap.paired_difference([win, win, lose], [base, base, base], n_resamples=400, seed=2)
    assert mixed["low"] < 0 < mixed["high"]
    steady = bootstrap.paired_difference([win, win, win], [base, base, base], n_resamples=400, seed=2)
    assert steady["low"] > 0
    with pytest.raises(ValueError, match="one run of A and one of B per training seed"):
        bootstrap.paired_difference([win], [base, base])
    with pytest.raises(ValueError, match="metric must be one of"):
        bootstrap.paired_difference([win], [base], metric="iou")


def test_a_statistic_of_the_pooled_pixels_is_resampled_with_the_metrics_draws(rng):
    """statistic_replicates sees each replicate's pooled pixels: the mean inlier score of replicate r
    equals the mean over the drawn images' inlier pixels (an image drawn twice counting twice)."""
    images = make_images(rng, 9, levels=16)
    accumulator = accumulator_of(images)

    def mean_inlier_score(values, inliers, anomalies):
        return inliers @ values / inliers.sum(axis=1)

    replicates = accumulator.statistic_replicates(mean_inlier_score, n_resamples=20, seed=4, chunk_bytes=4096)
    for row, drawn in zip(replicates, accumulator.draws(20, seed=4)):
        pixels = np.concatenate([images[i][0][images[i][1] == 0].astype(np.float64) for i in drawn])
        assert row == pytest.approx(pixels.mean(), rel=1e-12)
    everything = np.concatenate([scores[labels == 0].astype(np.float64) for scores, labels in images])
    assert accumulator.statistic_point(mean_inlier_score) == pytest.approx(everything.mean(), rel=1e-12)
    mean_anomaly_score = lambda values, inliers, anomalies: anomalies @ values / anomalies.sum(axis=1)  # noqa: E731
    result = bootstrap.paired_difference([accumulator_of(boosted(images, 0.5))], [accumulator], mean_anomaly_score, n_resamples=50)
    assert 0.45 < result["low"] <= result["difference"] <= result["high"] < 0.55  # every anomaly pixel raised by 0.5


def test_replicates_are_kept_until_the_images_change(rng):
    images = make_images(rng, 8)
    accumulator = accumulator_of(images[:7])
    first = accumulator.replicates(30, seed=1)
    first["auprc"][:] = -1  # a caller's copy: the kept values stay intact
    assert np.array_equal(accumulator.replicates(30, seed=1)["auprc"], accumulator_of(images[:7]).replicates(30, seed=1)["auprc"])
    accumulator.add_map(*images[7], image_id=7)
    assert np.array_equal(accumulator.replicates(30, seed=1)["auprc"], accumulator_of(images).replicates(30, seed=1)["auprc"])


def test_the_seed_term_is_students_t_interval_of_the_seed_means(rng):
    """Seeds that raise every anomaly pixel by 0.2, 0.5 and 0.6: the statistic's image noise is nil
    (every image moves alike), so the interval is the t interval of the three shifts (2 degrees of
    freedom), far wider than a bootstrap over the three seeds would be."""
    from scipy import stats

    images = make_images(rng, 10, levels=16)
    base = accumulator_of(images)
    shifts = np.array([0.2, 0.5, 0.6])
    mean_anomaly_score = lambda values, inliers, anomalies: anomalies @ values / anomalies.sum(axis=1)  # noqa: E731
    result = bootstrap.paired_difference([accumulator_of(boosted(images, s)) for s in shifts], [base] * 3, mean_anomaly_score,
                                         n_resamples=50)
    low, high = stats.t.interval(0.95, 2, loc=shifts.mean(), scale=shifts.std(ddof=1) / np.sqrt(3))
    assert result["difference"] == pytest.approx(shifts.mean(), abs=2e-3)  # float16 score resolution
    assert result["low"] == pytest.approx(low, abs=5e-3) and result["high"] == pytest.approx(high, abs=5e-3)
    assert result["seed_half_width"] == pytest.approx((high - low) / 2, rel=1e-2)
    assert bootstrap.seed_half_width([0.4]) == 0.0
