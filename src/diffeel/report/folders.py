"""The output folders of the evaluation commands, each written whole (:func:`.output.atomic_output_dir`):
an evaluation run (``diffeel eval``; :func:`~diffeel.report.compare.load_runs` reads it back) and
a benchmark's statistics (``diffeel stats``)."""

from __future__ import annotations

import numpy as np

from . import plots
from .output import atomic_output_dir, write_json
from .tables import run_table_csv, run_table_markdown


def write_eval_run(out, results: dict, curves: dict) -> None:
    """results.json (fractions), results.csv, table.md (percent), curves.png / .npz and, when the
    results are grouped, groups.png."""
    method, benchmark, protocol = results["method"], results["benchmark"], results["protocol"]
    with atomic_output_dir(out) as staging:
        write_json(staging / "results.json", results)
        (staging / "results.csv").write_text(run_table_csv(results))
        header = f"# {method} on {benchmark}\n\nProtocol: {protocol}; void pixels excluded; percent.\n\n"
        (staging / "table.md").write_text(header + run_table_markdown(results))
        plots.save(plots.curves_figure({method: curves}), staging / "curves.png")
        np.savez_compressed(staging / "curves.npz", **plots.thinned_curves(curves))
        if results["groups"]:
            plots.save(plots.group_bars_figure(results), staging / "groups.png")


def write_stats(out, benchmark: str, stats: dict, material: dict, text: str) -> None:
    """stats.json, stats.md (``text``), heatmap.png and sizes.png of :func:`~diffeel.data.stats.benchmark_stats`."""
    with atomic_output_dir(out) as staging:
        write_json(staging / "stats.json", stats)
        (staging / "stats.md").write_text(text)
        plots.save(plots.heatmap_figure(material["heatmap"], f"{benchmark}: where anomalies lie"), staging / "heatmap.png")
        plots.save(plots.histograms_figure(material["anomaly_percent"], material["component_sizes"]), staging / "sizes.png")
