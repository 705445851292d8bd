"""Evaluating score maps on a benchmark: pooled metrics overall and per condition group.

Flow: benchmark frames (``diffeel.data``) + score maps on disk → exact streaming metrics
(``diffeel.metrics``) for the whole set and for every group of frames sharing a metadata value
(weather, landform, scene, …) → a results dict that ``diffeel.report`` turns into files. With
``jobs > 1`` frames are split into chunks evaluated in worker processes whose metric states are
merged in chunk order — exact, so the numbers equal a single-process run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .data.benchmarks import Frame, weather_condition
from .data.score_maps import ScoreMaps
from .errors import DiffeelError
from .metrics import PixelMetrics, Protocol
from .metrics.pixel import smoothed
from .parallel import run_chunks, split, worker_count

ALL = ("all", "all")
METRIC_KEYS = ("auprc", "fpr95", "auroc")


@dataclass
class EvalOptions:
    group_by: tuple[str, ...] = ("weather",)
    protocol: str = "pooled"
    resize: str | None = None  # None (shapes must match) | "nearest" | "bilinear"
    components: str | None = None  # None | "anomaly" | "obstacle"
    bootstrap: int = 0
    seed: int = 0
    jobs: int = 1
    progress: bool = True
    extra: dict = field(default_factory=dict)


def group_keys(metadata: dict, group_by) -> list[tuple[str, str]]:
    """The (field, value) groups a frame belongs to; weather also gives clear/adverse."""
    keys = []
    for name in group_by:
        value = metadata.get(name)
        if value in (None, ""):
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            keys.append((name, str(item)))
        if name == "weather":
            keys.append(("condition", weather_condition(value)))
    return keys


def check_group_fields(frames: list[Frame], group_by) -> None:
    """Every grouping field must be metadata of some frame: a typo never silently gives no groups."""
    present = sorted({name for frame in frames for name in frame.metadata})
    for name in group_by:
        if name not in present:
            known = ", ".join(present) if present else "none (this benchmark has no metadata)"
            raise DiffeelError(f"no frame has a {name!r} field to group by; the frames' fields are: {known}")


def _protocol_scores(score: np.ndarray, protocol: Protocol) -> np.ndarray:
    """The score map the protocol's metrics see (smoothed for ``rpl``), for the paths beside
    :class:`PixelMetrics` (components, bootstrap), which applies the protocol itself."""
    return smoothed(score) if protocol.smooth else score


def load_pair(frame: Frame, scores: ScoreMaps, resize: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(score map, label map in 0/1/255) of a frame, shapes checked."""
    label = frame.load_label()
    score = scores.load(frame.id)
    if score.shape != label.shape:
        if resize is None:
            raise DiffeelError(
                f"score map of frame {frame.id} has shape {score.shape} but its label {label.shape} "
                "(pass --resize nearest or --resize bilinear to resize scores)"
            )
        import cv2

        interpolation = cv2.INTER_NEAREST if resize == "nearest" else cv2.INTER_LINEAR
        working = score.astype(np.float32) if score.dtype not in (np.float32, np.float64) else score
        score = cv2.resize(working, (label.shape[1], label.shape[0]), interpolation=interpolation)
    return score, label


def _update(metrics: PixelMetrics, frame: Frame, score: np.ndarray, label: np.ndarray) -> None:
    try:
        metrics.update(score, label)
    except ValueError as error:
        raise DiffeelError(f"frame {frame.id}: {error}") from None


def evaluate_frames(frames: list[Frame], scores_path: str, options: EvalOptions, progress=None) -> dict:
    """Metric states for one chunk of frames: ``{"groups": {(field, value): PixelMetrics}, ...}``."""
    scores = ScoreMaps(scores_path)
    groups: dict[tuple[str, str], PixelMetrics] = {}
    bootstrap = None
    if options.bootstrap:
        from .metrics.bootstrap import BootstrapAccumulator, image_histogram

        bootstrap = BootstrapAccumulator()
    protocol = Protocol.resolve(options.protocol)
    for frame in frames:
        score, label = load_pair(frame, scores, options.resize)
        for key in [ALL, *group_keys(frame.metadata, options.group_by)]:
            if key not in groups:
                groups[key] = PixelMetrics(protocol, name=key[1] if key != ALL else "all")
            _update(groups[key], frame, score, label)
        if bootstrap is not None:
            bootstrap.add(image_histogram(_protocol_scores(score, protocol), label), image_id=frame.id)
        if progress is not None:
            progress.update(1)
    return {"groups": groups, "bootstrap": bootstrap}


def _merge_states(states: list[dict]) -> dict:
    merged = states[0]
    for state in states[1:]:
        for key, metrics in state["groups"].items():
            if key in merged["groups"]:
                merged["groups"][key].merge(metrics)
            else:
                merged["groups"][key] = metrics
        if merged["bootstrap"] is not None:
            merged["bootstrap"].merge(state["bootstrap"])
    return merged


def component_states(frames: list[Frame], scores_path: str, options: EvalOptions, threshold: float, progress=None):
    from .metrics.components import ComponentMetrics

    scores = ScoreMaps(scores_path)
    protocol = Protocol.resolve(options.protocol)
    metrics = ComponentMetrics(track=options.components, rules="toolkit" if protocol.toolkit else "paper")
    for frame in frames:
        score, label = load_pair(frame, scores, options.resize)
        metrics.update(_protocol_scores(score, protocol), label, threshold)
        if progress is not None:
            progress.update(1)
    return metrics


def _summary(metrics: PixelMetrics) -> dict:
    import warnings

    from .metrics import UndefinedMetricWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # reported per group as NaN + a note
        result = metrics.compute()
    result["n_frames"] = result.pop("n_images")
    return result


def evaluate(frames: list[Frame], scores_path, options: EvalOptions | None = None, other_frames=()) -> tuple[dict, dict]:
    """Evaluate ``frames`` against the score maps at ``scores_path``. Frames without a label
    (withheld test frames) are not evaluated; their maps may be there, and so may maps of the
    ids in ``other_frames`` (frames of the dataset outside the selection evaluated).

    Returns ``(results, curves)``: results as plain data (fractions; ``results["all"]`` pooled over
    every frame, ``results["groups"][field][value]`` per group) and the exact curves of the whole
    set for plotting.
    """
    from tqdm import tqdm

    options = options or EvalOptions()
    protocol = Protocol.resolve(options.protocol)  # fail early on a bad protocol name
    if protocol.toolkit and options.bootstrap:
        raise DiffeelError(f"--bootstrap resamples the exact protocols' counts; {protocol.name} is the toolkit's binned "
                           "one: bootstrap with --protocol pooled")
    unlabelled = [frame.id for frame in frames if frame.label_path is None]  # test frames: maps allowed, not evaluated
    frames = [frame for frame in frames if frame.label_path is not None]
    if not frames:
        raise DiffeelError("the benchmark lists no labelled frames to evaluate")
    check_group_fields(frames, options.group_by)
    scores_path = str(scores_path)
    ScoreMaps(scores_path).check([frame.id for frame in frames], [*unlabelled, *other_frames])
    jobs = worker_count(options.jobs)
    chunks = split(frames, jobs * 4 if jobs > 1 else 1)
    timings = {}

    started = time.perf_counter()
    with tqdm(total=len(frames), desc="pixel metrics", unit="frame", disable=not options.progress) as bar:
        states = run_chunks(evaluate_frames, chunks, (scores_path, options), jobs, bar)
    state = _merge_states(states)
    timings["pixel_metrics_s"] = time.perf_counter() - started

    groups = state["groups"]
    results = {"all": _summary(groups[ALL]), "groups": {}}
    for (name, value), metrics in sorted(groups.items()):
        if (name, value) != ALL:
            results["groups"].setdefault(name, {})[value] = _summary(metrics)
    if "condition" in results["groups"]:
        results["groups"]["condition"]["whole"] = results["all"]
    undefined = [f"{n}={v}" for n, values in results["groups"].items() for v, m in values.items() if np.isnan(m["auprc"])]
    if np.isnan(results["all"]["auprc"]):
        undefined.insert(0, "all")
    if undefined:
        results["undefined"] = undefined

    if options.components and not np.isnan(results["all"]["best_f1_threshold"]):
        started = time.perf_counter()
        threshold = results["all"]["best_f1_threshold"]
        with tqdm(total=len(frames), desc="components", unit="frame", disable=not options.progress) as bar:
            component_parts = run_chunks(component_states, chunks, (scores_path, options, threshold), jobs, bar)
        components = component_parts[0]
        for part in component_parts[1:]:
            components.merge(part)
        results["all"]["components"] = {"threshold": threshold, "track": options.components, "rules": components.rules,
                                         **components.compute()}
        timings["components_s"] = time.perf_counter() - started

    if state["bootstrap"] is not None:
        started = time.perf_counter()
        results["all"]["bootstrap"] = state["bootstrap"].intervals(
            n_resamples=options.bootstrap, seed=options.seed, protocol=options.protocol
        )
        timings["bootstrap_s"] = time.perf_counter() - started

    results["timings"] = timings
    return results, groups[ALL].curves()
