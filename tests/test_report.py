import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

import benchmark_fixtures as fixtures
from diffeel.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def evaluate(tmp_path, rng, benchmark, root_name, scores_name, truth):
    scores = tmp_path / f"{scores_name}_{benchmark}"
    fixtures.write_scores(scores, truth, rng)
    out = tmp_path / f"run_{scores_name}_{benchmark}"
    assert main(["eval", "--benchmark", benchmark, "--root", str(tmp_path / root_name), "--method", scores_name,
                 "--scores", str(scores), "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture
def runs(tmp_path, rng):
    comsamy = fixtures.comsamy(tmp_path / "C", rng, weathers=("clear", "fog", "night", "clear", "rain"))
    road = fixtures.road_anomaly(tmp_path / "RA", rng)
    return [
        evaluate(tmp_path, rng, "comsamy", "C", "alpha", comsamy),
        evaluate(tmp_path, rng, "road-anomaly", "RA", "alpha", road),
        evaluate(tmp_path, rng, "comsamy", "C", "beta", comsamy),
    ]


def test_compare_tables_hold_each_runs_numbers_and_fair_averages(tmp_path, runs, capsys):
    out = tmp_path / "comparison"
    assert main(["compare", *map(str, runs), "--out", str(out)]) == 0
    results = [json.loads((run / "results.json").read_text()) for run in runs]
    markdown = (out / "comparison.md").read_text()
    alpha = next(line for line in markdown.splitlines() if line.startswith("| alpha"))
    beta = next(line for line in markdown.splitlines() if line.startswith("| beta"))
    cells = [c.strip() for c in alpha.strip("|").split("|")]
    # columns: method, RoadAnomaly AUPRC/FPR95, ComsAmy AUPRC/FPR95 (paper order), averages
    assert cells[1] == f"{100 * results[1]['all']['auprc']:.2f}"
    assert cells[3] == f"{100 * results[0]['all']['auprc']:.2f}"
    assert cells[5] == f"{100 * (results[0]['all']['auprc'] + results[1]['all']['auprc']) / 2:.2f}"
    assert beta.count("–") == 4  # beta has no RoadAnomaly run, so no average either
    assert "\\begin{tabular}" in (out / "comparison.tex").read_text()
    assert (out / "comparison.csv").read_text().startswith("method,")
    conditions = (out / "conditions.md").read_text()
    assert "| alpha |" in conditions and "| beta |" in conditions
    page = (out / "report.html").read_text()
    assert page.count("<svg") >= 3 and "<table>" in page
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)  # nothing fetched from outside


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_report_opens_in_headless_chromium(tmp_path, runs):
    out = tmp_path / "comparison"
    assert main(["compare", *map(str, runs), "--out", str(out)]) == 0
    process = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", (out / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert process.returncode == 0, process.stderr[-500:]
    assert "<svg" in process.stdout and "alpha" in process.stdout and "Table III" in process.stdout


def test_compare_rejects_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    process = subprocess.run([sys.executable, "-m", "diffeel.cli", "compare", str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
                             capture_output=True, text=True)
    assert process.returncode == 2 and "is not an evaluation run" in process.stderr
    assert len(process.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_stats_match_direct_counts(tmp_path, rng, capsys):
    truth = fixtures.comsamy(tmp_path / "C", rng, weathers=("clear", "fog", "clear"))
    for label in truth.values():
        label[-3:, :2] = 1  # a second component in a corner
    for frame_id, label in truth.items():
        fixtures.write_png(tmp_path / "C" / "labels" / f"{frame_id}.png", label)
    assert main(["stats", "--benchmark", "comsamy", "--root", str(tmp_path / "C"), "--out", str(tmp_path / "S"), "--quiet"]) == 0
    stats = json.loads((tmp_path / "S" / "stats.json").read_text())
    labels = np.stack(list(truth.values()))
    assert stats["n_frames"] == 3
    assert stats["anomaly_pixel_percent"] == pytest.approx(100 * (labels == 1).sum() / (labels != 255).sum())
    expected_components = sum(ndimage.label(l == 1, structure=np.ones((3, 3)))[1] for l in labels)
    assert stats["n_components"] == expected_components
    assert stats["metadata"]["weather"] == {"clear": 2, "fog": 1}
    assert (tmp_path / "S" / "heatmap.png").exists() and "| 3 |" in capsys.readouterr().out


def test_weather_bars_carry_the_seed_spread_as_error_bars():
    from diffeel.report import plots

    groups = {"weather": {"clear": {"auprc": 0.4, "fpr95": 0.5}, "fog": {"auprc": 0.2, "fpr95": 0.9}}}
    spread = {"weather": {"clear": {"auprc": 0.03, "fpr95": 0.01}, "fog": {"auprc": 0.05, "fpr95": 0.02}}}
    figure = plots.methods_by_group_figure({"a": {"groups": groups, "spread": spread}, "b": {"groups": groups}}, "weather")
    auprc_axis = figure.axes[0]
    lengths = sorted(round(float(abs(np.diff(segment, axis=0)).max()), 6)
                     for collection in auprc_axis.collections for segment in collection.get_segments())
    assert lengths == [6.0, 10.0]  # 2 × 3 and 2 × 5 points: only the run with a spread has error bars
