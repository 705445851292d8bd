"""The demo's report: Table II, Figure 8, Table V, Figures 6 and 7, and the paper's claims checked."""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

from ..data.benchmarks import WEATHERS
from ..report import html as html_report
from ..report import plots
from ..report.tables import percent

MAIN_METHODS = ("closed/msp", "closed/energy", "rpl/energy", "rpl+eel/eel")
POOL_RUNS = ("rpl+eel pool 25%", "rpl+eel pool 50%", "rpl+eel")  # 25 / 50 / 100 % of the object bank
DATA_NAMES = {"rpl-mix": "RPL's random paste", "placement": "diffeel placement + illumination", "none": "inliers only"}


def _auprc(results: dict, method: str, group: str = "whole") -> float:
    value = results["methods"].get(method, {}).get(group, {}).get("auprc")
    return math.nan if value is None else value


def main_methods(results: dict) -> list[str]:
    """The Table II methods this run trained (the quick run has no RPL-loss baseline)."""
    return [m for m in MAIN_METHODS if m in results["methods"]]


def findings(results: dict) -> list[dict]:
    """The paper's directions, each measured here: claim, holds (bool), evidence.

    A direction that needs a recipe this run did not train is left out, not reported as failed.
    """
    a = lambda method, group="whole": _auprc(results, method, group)  # noqa: E731
    trained = lambda *methods: all(m in results["methods"] for m in methods)  # noqa: E731
    main = main_methods(results)
    checks = [
        ("rpl+eel/eel beats closed/msp by at least 5 AUPRC points (whole test set)",
         a("rpl+eel/eel") - a("closed/msp") >= 0.05, f"{100 * a('rpl+eel/eel'):.2f} vs {100 * a('closed/msp'):.2f}"),
        ("closed/msp is better in clear than in adverse weather",
         a("closed/msp", "clear") > a("closed/msp", "adverse"), f"{100 * a('closed/msp', 'clear'):.2f} vs {100 * a('closed/msp', 'adverse'):.2f}"),
        ("EEL score ≥ energy ≥ MSP (rpl+eel model)",
         a("rpl+eel/eel") >= a("rpl+eel/energy") >= a("rpl+eel/msp"),
         f"{100 * a('rpl+eel/eel'):.2f} ≥ {100 * a('rpl+eel/energy'):.2f} ≥ {100 * a('rpl+eel/msp'):.2f}"),
    ]
    if trained("rpl/energy"):
        checks.append(("RPL + DiffEEL (EEL loss and score, diffeel's data) beats RPL as published (its loss, mixing and energy score)",
                       a("rpl+eel/eel") >= a("rpl/energy"), f"{100 * a('rpl+eel/eel'):.2f} vs {100 * a('rpl/energy'):.2f}"))
    if trained("rpl-loss/eel"):
        checks += [
            ("EEL loss ≥ RPL loss (same data, same EEL score)", a("rpl+eel/eel") >= a("rpl-loss/eel"),
             f"{100 * a('rpl+eel/eel'):.2f} vs {100 * a('rpl-loss/eel'):.2f}"),
            ("EEL loss ≥ RPL loss (same data, same energy score)", a("rpl+eel/energy") >= a("rpl-loss/energy"),
             f"{100 * a('rpl+eel/energy'):.2f} vs {100 * a('rpl-loss/energy'):.2f}"),
        ]
    if trained("rpl/energy", "rpl-loss/energy"):
        checks.append(("diffeel's placement beats RPL's random paste (RPL loss, energy score)", a("rpl-loss/energy") >= a("rpl/energy"),
                       f"{100 * a('rpl-loss/energy'):.2f} vs {100 * a('rpl/energy'):.2f}"))
    checks.append(("adverse weather degrades every main method", all(a(m, "adverse") < a(m, "clear") for m in main),
                   ", ".join(f"{m}: {100 * a(m, 'clear'):.1f}→{100 * a(m, 'adverse'):.1f}" for m in main)))
    gaps = results.get("energy_gap", {})
    if "rpl-loss" in gaps and "rpl+eel" in gaps:
        checks.append(("EEL loss widens the energy gap between hard inliers and hard anomalies (Figure 7; same data)",
                       gaps["rpl+eel"]["gap"] > gaps["rpl-loss"]["gap"], f"{gaps['rpl+eel']['gap']:.2f} vs {gaps['rpl-loss']['gap']:.2f}"))
    if trained("rpl+eel pool 25%/eel", "rpl+eel pool 50%/eel"):
        pools = [a(f"{run}/eel") for run in POOL_RUNS]
        checks.append(("more synthesized objects help (Table V: 25 % ≤ 50 % ≤ 100 % of the object pool)", pools[0] <= pools[1] <= pools[2],
                       " ≤ ".join(f"{100 * value:.2f}" for value in pools)))
    if trained("rpl+eel k=3/eel"):
        checks.append(("three pasted objects per image help (rpl+eel; objects per image, not the pool size)", a("rpl+eel k=3/eel") >= a("rpl+eel/eel"),
                       f"{100 * a('rpl+eel k=3/eel'):.2f} vs {100 * a('rpl+eel/eel'):.2f}"))
    return [{"claim": claim, "holds": bool(holds), "evidence": evidence} for claim, holds, evidence in checks]


def _metric(results, method, group, key):
    value = results["methods"].get(method, {}).get(group, {}).get(key)
    return math.nan if value is None else value


def _table2(results) -> tuple[list[str], list[list]]:
    header = ["method", "clear AUPRC", "clear FPR95", "adverse AUPRC", "adverse FPR95", "whole AUPRC", "whole FPR95"]
    rows = [[m] + [_metric(results, m, g, k) for g in ("clear", "adverse", "whole") for k in ("auprc", "fpr95")] for m in main_methods(results)]
    return header, rows


def _ablation(results) -> tuple[list[str], list[list]]:
    header = ["study", "variant", "whole AUPRC", "whole FPR95", "adverse AUPRC"]
    cells = lambda method: [_metric(results, method, g, k) for g, k in (("whole", "auprc"), ("whole", "fpr95"), ("adverse", "auprc"))]  # noqa: E731
    present = lambda *runs: all(f"{run}/eel" in results["methods"] for run in runs)  # noqa: E731
    rows = [["anomaly score (rpl+eel model)", score, *cells(f"rpl+eel/{score}")] for score in ("energy", "entropy", "eel")]
    if present("rpl", "rpl-loss"):  # the synthesizer and loss ablations need the RPL-loss runs
        rows += [["synthesizer (RPL loss, energy score)", label, *cells(f"{run}/energy")]
                 for run, label in (("rpl", "RPL's random paste"), ("rpl-loss", "diffeel placement"))]
        rows += [["training loss (same data, EEL score)", label, *cells(f"{run}/eel")]
                 for run, label in (("rpl-loss", "RPL loss"), ("rpl+eel", "EEL loss (Eq. 8)"))]
    if present(*POOL_RUNS):
        rows += [["amount of anomalous objects (object pool, EEL)", label, *cells(f"{run}/eel")]
                 for run, label in zip(POOL_RUNS, ("25 % of the bank", "50 % of the bank", "100 % of the bank"))]
    if present("rpl+eel k=3"):
        rows += [["pasted objects per image (EEL; extra)", label, *cells(f"{run}/eel")]
                 for run, label in (("rpl+eel", "1 object / image"), ("rpl+eel k=3", "3 objects / image"))]
    return header, rows


def _runs_table(results) -> tuple[list[str], list[list]]:
    """Which loss and which data each trained run used."""
    header = ["run", "loss", "training data", "object pool", "objects / image", "steps"]
    rows = [[name, run["loss"], DATA_NAMES.get(run["synthesizer"], run["synthesizer"]), f"{100 * run['object_pool']:.0f} %",
             str(run["objects_per_image"]) if run["synthesizer"] != "none" else "–", str(run["steps"])]
            for name, run in results.get("runs", {}).items()]
    return header, rows


def _markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(percent(c) if isinstance(c, float) else str(c) for c in row) + " |")
    return "\n".join(lines)


def _figure_weather(results):
    runs = {m: {"groups": {"weather": {w: results["methods"][m][w] for w in WEATHERS}}} for m in main_methods(results)}
    return plots.methods_by_group_figure(runs, "weather", WEATHERS)


def _figure_maps(example):
    import matplotlib.pyplot as plt

    recipes = [r for r in ("closed", "rpl", "rpl-loss", "rpl+eel") if r in example["maps"]]
    figure, axes = plt.subplots(len(recipes), 5, figsize=(15, 2.2 * len(recipes)), squeeze=False)
    for row, recipe in enumerate(recipes):
        panels = [("image", example["image"], None), ("label (anomaly white, void grey)", example["label"], "gray")]
        panels += [(f"{recipe}: {name}", example["maps"][recipe][name], "magma") for name in ("energy", "entropy", "eel")]
        for column, (title, data, cmap) in enumerate(panels):
            axis = axes[row][column]
            if cmap == "gray":
                data = np.where(data == 1, 1.0, np.where(data == 255, 0.5, 0.0))
            axis.imshow(data, cmap=cmap)
            axis.set(title=title, xticks=[], yticks=[])
    figure.tight_layout()
    return figure


def _figure_gap(gaps):
    import matplotlib.pyplot as plt

    recipes = list(gaps)
    figure, axis = plt.subplots(figsize=(7, 3.6))
    positions = np.arange(len(recipes))
    axis.bar(positions - 0.2, [gaps[r]["worst_inlier_mean"] for r in recipes], 0.4, label="lowest-energy 25 % of inliers")
    axis.bar(positions + 0.2, [gaps[r]["worst_anomaly_mean"] for r in recipes], 0.4, label="highest-energy 25 % of anomalies")
    for position, recipe in zip(positions, recipes):
        axis.annotate(f"gap {gaps[recipe]['gap']:.2f}", (position, max(gaps[recipe]["worst_inlier_mean"], gaps[recipe]["worst_anomaly_mean"])),
                      ha="center", va="bottom", fontsize=9)
    axis.set_xticks(positions, recipes)
    axis.set(ylabel="energy response E = logsumexp", title="Energy gap between hard inliers and hard anomalies (Figure 7)")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure


def write(folder: Path, results: dict, material: dict) -> None:
    """report.md, report.html and the figures into ``folder``."""
    figures = {"fig8_weather": _figure_weather(results), "fig7_energy_gap": _figure_gap(results["energy_gap"])}
    if material.get("example") and material["example"]["maps"]:
        figures["fig6_score_maps"] = _figure_maps(material["example"])
    svgs = {}
    for name, figure in figures.items():
        figure.savefig(folder / f"{name}.png", dpi=100)
        svgs[name] = plots.svg(figure)

    config = results["config"]
    table2, ablation = _table2(results), _ablation(results)
    all_methods = [["method", "whole AUPRC", "whole FPR95", "whole AUROC", "clear AUPRC", "adverse AUPRC"]]
    for method in results["methods"]:
        all_methods.append([method] + [_metric(results, method, g, k) for g, k in (("whole", "auprc"), ("whole", "fpr95"), ("whole", "auroc"), ("clear", "auprc"), ("adverse", "auprc"))])
    findings_md = "\n".join(f"- {'holds' if f['holds'] else '**does not hold**'}: {f['claim']} ({f['evidence']})" for f in results["findings"])
    scope = ("quick run: fewer frames and steps; no RPL baseline and no pool or objects-per-image ablation (the default run has them)"
             if config["quick"] else "default run")
    scope += ("; CPU-sized training (the demo-* recipes: a small DeepLab, AdamW, minutes), not the published recipes "
              "(diffeel train --recipe rpl+eel --show-config prints those)")
    timings = ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in results["timings"].items())
    markdown = f"""# diffeel demo: energy-entropy learning on the embedded world

{scope}; {results['n_test_frames']} test frames ({config['per_weather']} per adverse weather, the rest clear as in ComsAmy's 250 : 218; unseen anomaly family), {config['train_frames']} training frames,
{config['size'][0]}×{config['size'][1]} px, seed {config['seed']}. Pixel metrics pooled, void excluded, percent (AUPRC ↑, FPR95 ↓).

## The paper's directions, as measured here

{findings_md}

## Table II shape: clear vs adverse weather

{_markdown_table(*table2)}

## Figure 8 shape: per weather

![per weather](fig8_weather.png)

## The runs: which loss and which data

{_markdown_table(*_runs_table(results))}

## Table V shape: ablation

{_markdown_table(*ablation)}

## Every recipe and score

{_markdown_table(all_methods[0], all_methods[1:])}

## Figure 6 shape: energy, entropy and EEL score maps

![score maps](fig6_score_maps.png)

## Figure 7 shape: energy gap

![energy gap](fig7_energy_gap.png)

Timings: {timings}.
"""
    (folder / "report.md").write_text(markdown)
    sections = [
        ("The paper's directions, as measured here", "<ul>" + "".join(
            f"<li>{'holds' if f['holds'] else '<b>does not hold</b>'}: {html.escape(f['claim'])} ({html.escape(f['evidence'])})</li>"
            for f in results["findings"]) + "</ul>"),
        ("Table II shape: clear vs adverse weather", html_report.table_html(*table2, {1: "max", 2: "min", 3: "max", 4: "min", 5: "max", 6: "min"})),
        ("Figure 8 shape: per weather", svgs["fig8_weather"]),
        ("The runs: which loss and which data", html_report.table_html(*_runs_table(results))),
        ("Table V shape: ablation", html_report.table_html(*ablation)),
        ("Every recipe and score", html_report.table_html(all_methods[0], all_methods[1:], {1: "max", 2: "min", 3: "max"})),
        ("Figure 7 shape: energy gap", svgs["fig7_energy_gap"]),
    ]
    if "fig6_score_maps" in svgs:
        sections.insert(5, ("Figure 6 shape: score maps", svgs["fig6_score_maps"]))
    (folder / "report.html").write_text(html_report.page("diffeel demo", sections))
