"""Figures: PR and ROC curves, per-group bars (Figure 8 shape), heat maps (Figure 2 shape)."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MAX_CURVE_POINTS = 2000


def _thin(curves: dict) -> dict:
    """At most MAX_CURVE_POINTS points, always keeping both ends (plots only; metrics stay exact)."""
    length = len(curves["tpr"])
    if length <= MAX_CURVE_POINTS:
        return curves
    keep = np.unique(np.linspace(0, length - 1, MAX_CURVE_POINTS).round().astype(int))
    return {key: np.asarray(values)[keep] for key, values in curves.items()}


def curves_figure(curve_sets: dict[str, dict]):
    """PR and ROC curves of one or several runs (name → curves from PixelMetrics.curves())."""
    figure, (pr_axis, roc_axis) = plt.subplots(1, 2, figsize=(10, 4.2))
    for name, curves in curve_sets.items():
        curves = _thin(curves)
        recall = np.concatenate(([0.0], curves["tpr"]))
        precision = np.concatenate(([1.0], curves["precision"]))
        pr_axis.plot(recall, precision, label=name, linewidth=1.5)
        roc_axis.plot(np.concatenate(([0.0], curves["fpr"])), np.concatenate(([0.0], curves["tpr"])), label=name, linewidth=1.5)
    roc_axis.axhline(0.95, color="grey", linestyle=":", linewidth=1)
    pr_axis.set(xlabel="recall", ylabel="precision", title="Precision–recall", xlim=(0, 1), ylim=(0, 1.02))
    roc_axis.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (dotted: TPR 0.95)", xlim=(0, 1), ylim=(0, 1.02))
    for axis in (pr_axis, roc_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower left" if axis is pr_axis else "lower right")
    figure.tight_layout()
    return figure


def group_bars_figure(results: dict):
    """AUPRC and FPR95 (percent) per group value, one row of panels per group field."""
    fields = [name for name in results.get("groups", {}) if name != "condition"] or ["condition"]
    fields = [f for f in fields if f in results.get("groups", {})]
    figure, axes = plt.subplots(max(len(fields), 1), 2, figsize=(11, 3.2 * max(len(fields), 1)), squeeze=False)
    for row, name in enumerate(fields):
        values = results["groups"][name]
        labels = list(values)
        for column, (key, title) in enumerate((("auprc", "AUPRC % ↑"), ("fpr95", "FPR95 % ↓"))):
            heights = [100 * v[key] if v[key] is not None and not math.isnan(v[key]) else 0 for v in values.values()]
            axis = axes[row][column]
            axis.bar(labels, heights, color="#4C72B0" if key == "auprc" else "#DD8452")
            axis.set(title=f"{title} by {name}", ylim=(0, 100))
            axis.tick_params(axis="x", rotation=30)
            axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure


def save(figure, path) -> None:
    figure.savefig(path, dpi=110)
    plt.close(figure)


def svg(figure) -> str:
    """The figure as an inline SVG string (no external references)."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def thinned_curves(curves: dict) -> dict:
    """Curves small enough to store beside results (for later comparison plots)."""
    return _thin(curves)


def methods_by_group_figure(runs: dict[str, dict], field: str, order=None):
    """Grouped bars: AUPRC and FPR95 per group value (e.g. weather), one bar per method (Figure 8).

    A run's optional ``spread[field][value][metric]`` (e.g. the standard deviation over training
    seeds) is drawn as an error bar."""
    values = list(order or dict.fromkeys(v for r in runs.values() for v in r.get("groups", {}).get(field, {})))
    figure, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    width = 0.8 / max(len(runs), 1)
    positions = np.arange(len(values))
    for index, (method, results) in enumerate(runs.items()):
        group = results.get("groups", {}).get(field, {})
        spread = results.get("spread", {}).get(field)
        for axis, key in zip(axes, ("auprc", "fpr95")):
            heights = [100 * (group.get(v, {}).get(key) or 0) for v in values]
            errors = [100 * (spread.get(v, {}).get(key) or 0) for v in values] if spread else None
            axis.bar(positions + index * width - 0.4 + width / 2, heights, width, yerr=errors, capsize=2, label=method)
    for axis, title in zip(axes, ("AUPRC % ↑", "FPR95 % ↓")):
        axis.set_xticks(positions, values, rotation=30)
        axis.set(title=f"{title} by {field}", ylim=(0, 100))
        axis.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    return figure


def heatmap_figure(heatmap: np.ndarray, title: str):
    figure, axis = plt.subplots(figsize=(6, 3.4))
    shown = axis.imshow(heatmap, cmap="inferno", vmin=0, aspect="auto")
    axis.set(title=title, xticks=[], yticks=[])
    figure.colorbar(shown, ax=axis, label="share of frames with an anomaly here")
    figure.tight_layout()
    return figure


def histograms_figure(anomaly_percent: list[float], component_sizes: list[int]):
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.hist(anomaly_percent, bins=20, color="#4C72B0")
    left.set(xlabel="anomaly pixels per frame (% of non-void)", ylabel="frames", title="Anomaly size per frame")
    if component_sizes:
        bins = np.logspace(0, np.log10(max(component_sizes) + 1), 20)
        right.hist(component_sizes, bins=bins, color="#DD8452")
        right.set_xscale("log")
    right.set(xlabel="component size (pixels)", ylabel="components", title="Anomaly components")
    figure.tight_layout()
    return figure
