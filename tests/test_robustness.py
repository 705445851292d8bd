"""What a hostile user hits: interrupts, concurrent runs, outputs over inputs, stale files, limits."""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import benchmark_fixtures as fixtures
from diffeel.cli import main
from diffeel.data.benchmarks import load_benchmark
from diffeel.errors import DiffeelError
from diffeel.parallel import available_cpus, worker_count
from diffeel.report.output import atomic_output_dir, exclusive_lock


def run_cli(*args, **kwargs):
    process = subprocess.run([sys.executable, "-m", "diffeel.cli", *map(str, args)], capture_output=True, text=True, **kwargs)
    return process.returncode, process.stdout, process.stderr


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---- interrupts -------------------------------------------------------------------------------

SLOW_POOL = textwrap.dedent('''
    import signal, sys, time
    from diffeel.parallel import run_chunks

    def slow(chunk, progress=None):
        time.sleep(60)
        return chunk

    if __name__ == "__main__":
        # as in a terminal: a shell running this in the background (CI) may have SIGINT ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("started", flush=True)
        try:
            run_chunks(slow, [[1], [2], [3], [4]], (), 2)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
''')


@pytest.mark.parametrize("delay", [0.2, 2.5])  # while the workers start, and while they work
def test_ctrl_c_stops_the_workers_at_once_without_tracebacks(tmp_path, delay):
    script = tmp_path / "pool.py"
    script.write_text(SLOW_POOL)
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    assert process.stdout.readline().strip() == "started"
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the whole process group
    stdout, stderr = process.communicate(timeout=20)  # the old pool waited for its 60 s workers
    assert process.returncode == 130 and "interrupted" in stdout
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr


def test_an_interrupt_message_promises_a_resume_only_where_there_is_one(monkeypatch, capsys, tmp_path):
    import diffeel.evaluation
    import diffeel.world.make

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(diffeel.evaluation, "evaluate", interrupted)
    monkeypatch.setattr(diffeel.world.make, "make_world", interrupted)
    fixtures.comsamy(tmp_path / "C", np.random.default_rng(0))
    assert main(["eval", "--benchmark", "comsamy", "--root", str(tmp_path / "C"), "--scores", str(tmp_path), "--out", str(tmp_path / "O")]) == 130
    assert "interrupted; nothing was written." in capsys.readouterr().err
    assert main(["world", "make", "--out", str(tmp_path / "W")]) == 130
    assert "rerun to resume" in capsys.readouterr().err


def test_sigterm_while_writing_leaves_no_staging_folder_and_a_dead_runs_staging_is_removed(tmp_path):
    fixtures.road_anomaly(tmp_path / "RA", np.random.default_rng(0), count=40)
    process = subprocess.Popen([sys.executable, "-m", "diffeel.cli", "weather", "apply", "--benchmark", "road-anomaly", "--root",
                                str(tmp_path / "RA"), "--condition", "rain", "--out", str(tmp_path / "out")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.staging-*")) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143 and "terminated; nothing was written" in stderr and "Traceback" not in stderr
    assert not list(tmp_path.glob(".out*")) and not (tmp_path / "out").exists()
    # a staging folder of a process that no longer exists (killed with SIGKILL) goes on the next run
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.staging-{dead.pid}-deadbeef"
    stale.mkdir()
    with atomic_output_dir(tmp_path / "out") as staging:
        (staging / "a.txt").write_text("a")
    assert not stale.exists() and (tmp_path / "out" / "a.txt").exists()


# ---- outputs: replaced whole, never over foreign files or inputs -------------------------------


def test_an_output_folder_is_replaced_whole_and_foreign_files_are_never_touched(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as staging:
        (staging / "results.json").write_text("{}")
        (staging / "groups.png").write_text("old")
    (out / "my_notes.txt").write_text("mine")  # added by the user afterwards
    with atomic_output_dir(out) as staging:
        (staging / "results.json").write_text('{"new": 1}')
    assert not (out / "groups.png").exists()  # the earlier run's file this run did not write is gone
    assert (out / "my_notes.txt").read_text() == "mine" and json.loads((out / "results.json").read_text()) == {"new": 1}
    user_folder = tmp_path / "photos"
    user_folder.mkdir()
    (user_folder / "holiday.jpg").write_text("x")
    with pytest.raises(DiffeelError, match="did not write"):
        with atomic_output_dir(user_folder):
            pass
    assert listing(user_folder) == ["holiday.jpg"]


def test_eval_rerun_into_the_same_folder_drops_files_of_the_earlier_run(tmp_path, rng):
    truth = fixtures.comsamy(tmp_path / "C", rng)
    fixtures.write_scores(tmp_path / "S", truth, rng)
    common = ["eval", "--benchmark", "comsamy", "--root", str(tmp_path / "C"), "--scores", str(tmp_path / "S"), "--out", str(tmp_path / "O"), "--quiet"]
    assert main(common) == 0 and (tmp_path / "O" / "groups.png").exists()
    assert main(common + ["--group-by", ""]) == 0
    assert not (tmp_path / "O" / "groups.png").exists() and (tmp_path / "O" / "results.json").exists()


def test_weather_apply_refuses_to_write_over_or_inside_its_input_and_keeps_metadata(tmp_path, rng):
    fixtures.comsamy(tmp_path / "C", rng)
    before = {p: p.read_bytes() for p in (tmp_path / "C").rglob("*") if p.is_file()}
    for out in (tmp_path / "C", tmp_path / "C" / "fog"):
        code, _, stderr = run_cli("weather", "apply", "--benchmark", "comsamy", "--root", tmp_path / "C", "--condition", "fog", "--out", out)
        assert code == 2 and "overlaps the input" in stderr
    assert {p: p.read_bytes() for p in (tmp_path / "C").rglob("*") if p.is_file()} == before
    assert main(["weather", "apply", "--benchmark", "comsamy", "--root", str(tmp_path / "C"), "--condition", "fog",
                 "--out", str(tmp_path / "fog"), "--quiet"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "fog" / "manifest.csv")))
    assert {r["anomalies"] for r in rows} == {"cow|tyre"} and {r["weather"] for r in rows} == {"fog"}
    assert {r["source_weather"] for r in rows} == {"clear", "fog", "night"}
    for row in rows:  # relative to the variant, so the pair can be moved together
        assert not os.path.isabs(row["source"]) and (tmp_path / "fog" / row["source"]).resolve().is_file()
    assert len(load_benchmark("comsamy", tmp_path / "fog")) == 4


# ---- the world: only its own files, one writer at a time ----------------------------------------


def test_world_make_removes_only_what_the_world_wrote_and_refuses_foreign_folders(tmp_path):
    out = tmp_path / "W"
    common = ["world", "make", "--out", str(out), "--size", "64x32", "--quiet"]
    assert main(common + ["--per-weather", "1", "--clear", "1", "--train", "2"]) == 0
    (out / "test" / "images" / "holiday.jpg").write_bytes(b"mine")
    (out / "train" / "labels" / "mine.png").write_bytes(b"mine")
    assert main(common + ["--per-weather", "1", "--clear", "0", "--train", "1"]) == 0
    assert (out / "test" / "images" / "holiday.jpg").read_bytes() == b"mine"
    assert (out / "train" / "labels" / "mine.png").read_bytes() == b"mine"
    assert not (out / "test" / "images" / "clear_0000.png").exists()  # its own unplanned frame did go
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    code, _, stderr = run_cli(*common[:2], "--out", foreign, "--per-weather", "0", "--train", "1", "--quiet")
    assert code == 2 and "holds no world" in stderr and listing(foreign) == ["notes.txt"]


def test_a_second_world_make_into_the_same_folder_fails_at_once(tmp_path):
    out = tmp_path / "W"
    with exclusive_lock(tmp_path / ".W.lock", "the world"):
        code, _, stderr = run_cli("world", "make", "--out", out, "--per-weather", "0", "--train", "1", "--size", "64x32", "--quiet")
    assert code == 2 and "another diffeel run" in stderr
    assert main(["world", "make", "--out", str(out), "--per-weather", "0", "--train", "1", "--size", "64x32", "--quiet"]) == 0


def test_a_damaged_world_json_is_one_sentence(tmp_path):
    (tmp_path / "W").mkdir()
    (tmp_path / "W" / "world.json").write_text('{"seed": "x"}')
    code, _, stderr = run_cli("world", "make", "--out", tmp_path / "W", "--train", "1", "--per-weather", "0")
    assert code == 2 and "is damaged" in stderr and len(stderr.strip().splitlines()) == 1


# ---- limits --------------------------------------------------------------------------------------


def test_workers_are_capped_at_the_cpus_and_counts_are_validated(capsys):
    assert worker_count(500) == available_cpus()
    assert "available CPUs" in capsys.readouterr().err
    for bad in (0, -3, 1.5):
        with pytest.raises(ValueError):
            worker_count(bad)
    for args in (["eval", "--jobs", "0"], ["world", "make", "--out", "x", "--per-weather", "-2"], ["world", "make", "--out", "x", "--train", "-3"],
                 ["world", "make", "--out", "x", "--clear", "-1"], ["demo", "--jobs", "-3"]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2


def test_group_by_an_unknown_field_is_an_error(tmp_path, rng):
    truth = fixtures.comsamy(tmp_path / "C", rng)
    fixtures.write_scores(tmp_path / "S", truth, rng)
    code, _, stderr = run_cli("eval", "--benchmark", "comsamy", "--root", tmp_path / "C", "--scores", tmp_path / "S",
                              "--out", tmp_path / "O", "--group-by", "wether")
    assert code == 2 and "'wether'" in stderr and "weather" in stderr and not (tmp_path / "O").exists()


def test_an_output_that_is_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "taken").write_text("x")
    # the benchmark root does not exist either: the --out check comes first, before reading anything
    code, _, stderr = run_cli("eval", "--benchmark", "comsamy", "--root", tmp_path / "none", "--scores", tmp_path, "--out", tmp_path / "taken")
    assert code == 2 and "existing file" in stderr
    code, _, stderr = run_cli("world", "preview", "--out", tmp_path)
    assert code == 2 and "is a folder" in stderr and not list(tmp_path.rglob("*.tmp"))
    # a file output may go into a folder that holds other things (--out photos/sheet.png)
    assert main(["world", "preview", "--out", str(tmp_path / "sheet.png"), "--size", "64x32"]) == 0
    assert (tmp_path / "taken").read_text() == "x" and (tmp_path / "sheet.png").stat().st_size > 0
