"""Tables in the paper's shapes: percent with two decimals (AUPRC ↑, FPR95 ↓)."""

from __future__ import annotations

import csv
import io
import math

COLUMNS = (("auprc", "AUPRC"), ("fpr95", "FPR95"), ("auroc", "AUROC"))
CONDITIONS = ("clear", "adverse", "whole")


def percent(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _rows(results: dict):
    yield "all", "all", results["all"]
    for name, values in results.get("groups", {}).items():
        for value, metrics in values.items():
            if not (name == "condition" and value == "whole"):
                yield name, value, metrics


def run_table_markdown(results: dict) -> str:
    """One run: the whole set and every group, metrics in percent."""
    lines = ["| group | AUPRC | FPR95 | AUROC | frames | pixels | anomaly % |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, value, metrics in _rows(results):
        anomaly_share = metrics["n_anomaly"] / metrics["n_pixels"] if metrics["n_pixels"] else None
        label = "all" if name == "all" else f"{name}: {value}"
        lines.append(
            f"| {label} | {percent(metrics['auprc'])} | {percent(metrics['fpr95'])} | {percent(metrics['auroc'])} "
            f"| {metrics['n_frames']} | {metrics['n_pixels']:,} | {percent(anomaly_share)} |"
        )
    conditions = results.get("groups", {}).get("condition")
    if conditions:
        lines += ["", "Table II shape (percent):", "", condition_table_markdown({results.get("method", "method"): results})]
    return "\n".join(lines) + "\n"


def condition_table_markdown(runs: dict[str, dict]) -> str:
    """Methods × {clear, adverse, whole} × {AUPRC, FPR95} (Table II)."""
    header = "| method | " + " | ".join(f"{c} AUPRC | {c} FPR95" for c in CONDITIONS) + " |"
    lines = [header, "|---|" + "---:|" * (2 * len(CONDITIONS))]
    for method, results in runs.items():
        conditions = results.get("groups", {}).get("condition", {})
        cells = []
        for condition in CONDITIONS:
            metrics = results["all"] if condition == "whole" else conditions.get(condition, {})
            cells += [percent(metrics.get("auprc")), percent(metrics.get("fpr95"))]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_table_csv(results: dict) -> str:
    stream = io.StringIO()
    writer = csv.writer(stream)
    writer.writerow(["group", "value", "auprc", "fpr95", "auroc", "n_frames", "n_pixels", "n_anomaly"])
    for name, value, metrics in _rows(results):
        writer.writerow([name, value, *(metrics[k] for k, _ in COLUMNS), metrics["n_frames"], metrics["n_pixels"], metrics["n_anomaly"]])
    return stream.getvalue()


def comparison_tables(runs: list[dict], benchmarks: list[str], names: dict[str, str]) -> dict[str, str]:
    """Methods × benchmarks × {AUPRC, FPR95} with per-method averages (Table III): md, tex, csv."""
    methods = list(dict.fromkeys(run["method"] for run in runs))
    value = {(run["method"], run["benchmark"]): run["all"] for run in runs}

    def cells(method):
        row = []
        for benchmark in benchmarks:
            metrics = value.get((method, benchmark), {})
            row += [metrics.get("auprc"), metrics.get("fpr95")]
        for offset in (0, 1):
            present = [v for v in row[offset::2] if v is not None and not math.isnan(v)]
            row.append(sum(present) / len(present) if len(present) == len(benchmarks) else None)
        return row

    columns = [f"{names.get(b, b)} {m}" for b in benchmarks for m in ("AUPRC", "FPR95")] + ["Avg AUPRC", "Avg FPR95"]
    md = ["| method | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    tex_rows = []
    stream = io.StringIO()
    writer = csv.writer(stream)
    writer.writerow(["method", *columns])
    for method in methods:
        row = cells(method)
        md.append(f"| {method} | " + " | ".join(percent(v) for v in row) + " |")
        tex_rows.append(f"{_tex_escape(method)} & " + " & ".join(percent(v).replace("–", "--") for v in row) + r" \\")
        writer.writerow([method, *("" if v is None else v for v in row)])
    header = " & ".join(
        [r"\multirow{2}{*}{Method}"] + [rf"\multicolumn{{2}}{{c}}{{{_tex_escape(names.get(b, b))}}}" for b in benchmarks] + [r"\multicolumn{2}{c}{Average}"]
    )
    sub = " & " + " & ".join([r"AUPRC$\uparrow$ & FPR$_{95}\downarrow$"] * (len(benchmarks) + 1))
    tex = "\n".join(
        [
            r"\begin{tabular}{l" + "rr" * (len(benchmarks) + 1) + "}",
            r"\toprule",
            header + r" \\",
            sub + r" \\",
            r"\midrule",
            *tex_rows,
            r"\bottomrule",
            r"\end{tabular}",
        ]
    )
    return {"md": "\n".join(md) + "\n", "tex": tex + "\n", "csv": stream.getvalue()}


def _tex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text
