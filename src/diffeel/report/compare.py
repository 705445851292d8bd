"""Comparing evaluation runs: methods × benchmarks tables (Table III), Table II, Figure 8, HTML."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..data.benchmarks import DISPLAY_NAMES, WEATHERS
from ..errors import DiffeelError
from . import html as html_report
from . import plots
from .output import read_json
from .tables import comparison_tables, condition_table_markdown

BENCHMARK_ORDER = ("fs-laf", "fs-static", "smiyc-anomaly", "smiyc-obstacle", "road-anomaly", "laf", "comsamy", "folder")


def load_runs(run_dirs) -> list[dict]:
    runs = []
    for run_dir in map(Path, run_dirs):
        path = run_dir / "results.json"
        if not path.is_file():
            raise DiffeelError(f"{run_dir} is not an evaluation run (no results.json; make one with diffeel eval)")
        try:
            results = read_json(path)
            results["method"], results["benchmark"], results["all"]
        except (ValueError, KeyError, TypeError):
            raise DiffeelError(f"{path} is not a diffeel results file") from None
        results["_dir"] = run_dir
        runs.append(results)
    seen = {}
    for run in runs:
        key = (run["method"], run["benchmark"])
        if key in seen:
            raise DiffeelError(f"{seen[key]} and {run['_dir']} both hold {run['method']} on {run['benchmark']}")
        seen[key] = run["_dir"]
    return runs


def _read_curves(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as archive:
            curves = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise DiffeelError(f"{path} could not be read ({type(error).__name__}); rerun diffeel eval for that run") from None
    expected = {"precision", "fpr", "tpr"}
    if not expected <= set(curves):
        raise DiffeelError(f"{path} lacks the curve array(s) {', '.join(sorted(expected - set(curves)))}; rerun diffeel eval for that run")
    return curves


def _nan(value):
    return float("nan") if value is None else float(value)


def comparison_files(runs: list[dict]) -> dict[str, str]:
    """Every comparison output as {file name: text}."""
    benchmarks = sorted({run["benchmark"] for run in runs}, key=lambda b: BENCHMARK_ORDER.index(b) if b in BENCHMARK_ORDER else 99)
    tables = comparison_tables(runs, benchmarks, DISPLAY_NAMES)
    files = {"comparison.md": tables["md"], "comparison.tex": tables["tex"], "comparison.csv": tables["csv"]}
    protocols = sorted({run.get("protocol", "pooled") for run in runs})
    note = f"Protocol: {', '.join(protocols)}; void pixels excluded; percent; averages only over methods evaluated on every benchmark."
    if len(protocols) > 1:
        note += " Warning: the runs use different protocols, so their numbers are not comparable."
    sections = [("Methods × benchmarks (Table III shape)", f"<p class='note'>{note}</p>" + _comparison_html(runs, benchmarks))]

    comsamy = {run["method"]: run for run in runs if run.get("groups", {}).get("condition")}
    if comsamy:
        files["conditions.md"] = condition_table_markdown(comsamy) + "\n"
        sections.append(("Clear vs adverse weather (Table II shape)", _condition_html(comsamy)))
        sections.append(("Per weather (Figure 8 shape)", plots.svg(plots.methods_by_group_figure(comsamy, "weather", [w for w in WEATHERS if any(w in r["groups"].get("weather", {}) for r in comsamy.values())]))))

    for benchmark in benchmarks:
        curve_sets = {}
        for run in runs:
            curve_file = run["_dir"] / "curves.npz"
            if run["benchmark"] == benchmark and curve_file.is_file():
                curve_sets[run["method"]] = _read_curves(curve_file)
        if curve_sets:
            sections.append((f"{DISPLAY_NAMES.get(benchmark, benchmark)}: PR and ROC curves", plots.svg(plots.curves_figure(curve_sets))))
    files["report.html"] = html_report.page("diffeel comparison", sections)
    return files


def _comparison_html(runs, benchmarks) -> str:
    header = ["method"] + [f"{DISPLAY_NAMES.get(b, b)} {m}" for b in benchmarks for m in ("AUPRC", "FPR95")]
    rows = []
    for method in dict.fromkeys(run["method"] for run in runs):
        row = [method]
        for benchmark in benchmarks:
            found = [r["all"] for r in runs if r["method"] == method and r["benchmark"] == benchmark]
            row += [_nan(found[0]["auprc"]), _nan(found[0]["fpr95"])] if found else [None, None]
        rows.append(row)
    best = {1 + 2 * i: "max" for i in range(len(benchmarks))} | {2 + 2 * i: "min" for i in range(len(benchmarks))}
    return html_report.table_html(header, rows, best)


def _condition_html(runs: dict[str, dict]) -> str:
    header = ["method", "clear AUPRC", "clear FPR95", "adverse AUPRC", "adverse FPR95", "whole AUPRC", "whole FPR95"]
    rows = []
    for method, results in runs.items():
        conditions = results["groups"]["condition"]
        row = [method]
        for condition in ("clear", "adverse"):
            metrics = conditions.get(condition, {})
            row += [_nan(metrics.get("auprc")), _nan(metrics.get("fpr95"))]
        row += [_nan(results["all"]["auprc"]), _nan(results["all"]["fpr95"])]
        rows.append(row)
    return html_report.table_html(header, rows, {1: "max", 2: "min", 3: "max", 4: "min", 5: "max", 6: "min"})
