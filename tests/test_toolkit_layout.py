"""The SegmentMeIfYouCan toolkit: its files (written and read), its binned protocol, submissions.

The fixtures under tests/data/smiyc were written by the toolkit's own code
(tests/official/record_smiyc_toolkit.py): its datasets' layout, the score maps its
``Evaluation.save_output`` wrote, and its ``PixBinaryClass`` results in both editions.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from diffeel.cli import main
from diffeel.data.score_maps import read_score_file
from diffeel.data.toolkit_layout import write_toolkit_map
from diffeel.metrics import PixelMetrics

FIXTURES = Path(__file__).parent / "data" / "smiyc"
RECORDED = json.loads((FIXTURES / "toolkit_results.json").read_text())
TREE = FIXTURES / "outputs"
BENCHMARKS = {  # diffeel benchmark → (root, the toolkit's dataset)
    "smiyc-obstacle": (FIXTURES / "datasets", "ObstacleTrack-all"),
    "smiyc-anomaly": (FIXTURES / "datasets" / "dataset_AnomalyTrack", "AnomalyTrack-all"),
    "laf": (FIXTURES / "datasets" / "dataset_LostAndFound", "LostAndFound-test"),
}
EDITIONS = {"smiyc": "2023", "smiyc-2021": "2021"}


def run(*args) -> tuple[int, str, str]:
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def evaluate(tmp_path: Path, benchmark: str, scores, *extra) -> dict:
    out = tmp_path / f"eval-{len(list(tmp_path.iterdir()))}"
    code, _, err = run("eval", "--benchmark", benchmark, "--root", BENCHMARKS[benchmark][0], "--scores", scores,
                       "--out", out, "--quiet", *extra)
    assert code == 0, err
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("protocol", sorted(EDITIONS))
@pytest.mark.parametrize("benchmark", sorted(BENCHMARKS))
def test_the_binned_protocol_equals_the_toolkits_recorded_results(tmp_path, benchmark, protocol):
    expected = RECORDED["results"][EDITIONS[protocol]][BENCHMARKS[benchmark][1]]
    results = evaluate(tmp_path, benchmark, TREE, "--protocol", protocol)
    overall = results["all"]
    assert results["method"] == RECORDED["method"] and overall["n_frames"] == len(expected["frames"])
    for ours, theirs in (("auprc", "area_PRC"), ("fpr95", "tpr95_fpr"), ("auroc", "area_ROC"), ("best_f1", "best_f1"),
                         ("fpr95_threshold", "tpr95_threshold"), ("best_f1_threshold", "best_f1_threshold")):
        assert overall[ours] == pytest.approx(expected[theirs], abs=1e-9), ours


@pytest.mark.parametrize("protocol", sorted(EDITIONS))
@pytest.mark.parametrize("benchmark", sorted(BENCHMARKS))
def test_components_under_the_toolkit_protocol_equal_its_segeval(tmp_path, benchmark, protocol):
    """``--components obstacle`` under a toolkit protocol: the toolkit's SegEval-ObstacleTrack, at
    the threshold it takes from its binned curve (on the AnomalyTrack fixture that threshold is 1.0
    and its ``>`` predicts nothing)."""
    expected = RECORDED["results"][EDITIONS[protocol]][BENCHMARKS[benchmark][1]]["SegEval-ObstacleTrack"]
    components = evaluate(tmp_path, benchmark, TREE, "--protocol", protocol, "--components", "obstacle")["all"]["components"]
    assert components["rules"] == "toolkit" and components["threshold"] == expected["thresh_p"]
    assert components["siou"] == pytest.approx(expected["sIoU_gt"], abs=1e-12)
    assert components["mean_f1"] == pytest.approx(expected["f1_mean"], abs=1e-12)
    if np.isnan(expected["prec_pred"]):
        assert components["ppv"] is None or np.isnan(components["ppv"])
    else:
        assert components["ppv"] == pytest.approx(expected["prec_pred"], abs=1e-12)
    taus = [round(t, 2) for t in components["taus"]]
    for count in ("tp", "fn", "fp"):
        assert np.mean(components[f"{count}_per_tau"]) == pytest.approx(expected[f"{count}_mean"], abs=1e-12)
        for tau in (0.25, 0.5, 0.75):
            assert components[f"{count}_per_tau"][taus.index(tau)] == expected[f"{count}_{int(tau * 100)}"]


def test_the_toolkits_component_rules_on_a_hand_worked_case():
    """A prediction running through a small ground-truth component (2 px, below min_gt = 3) into a
    kept one (3 px). The paper's rules void the small component first, which cuts the prediction
    in two; the toolkit labels the prediction whole and then counts it outside the void only."""
    from diffeel.metrics.components import ComponentMetrics, component_stats

    prediction, truth, void = (np.zeros((5, 12), bool) for _ in range(3))
    prediction[2, 2:10] = True
    truth[2, 5:7] = True  # small
    truth[2, 8:11] = True  # kept
    prediction[4, 0:2] = truth[4, 0:2] = True  # a prediction lying wholly on small ground truth
    siou, ppv = component_stats(prediction, truth, void, min_pred=2, min_gt=3)
    assert siou.tolist() == [0.5] and ppv.tolist() == [0.0, 2 / 3]
    siou, ppv = component_stats(prediction, truth, void, min_pred=2, min_gt=3, rules="toolkit")
    assert siou.tolist() == [2 / 7] and ppv.tolist() == [2 / 6]
    scores = prediction.astype(np.float32)
    labels = truth.astype(np.uint8)
    at_threshold = {rules: ComponentMetrics(None, min_pred=2, min_gt=3, rules=rules).update(scores, labels, 1.0).compute()
                    for rules in ("paper", "toolkit")}
    assert at_threshold["paper"]["n_pred_components"] == 2 and at_threshold["toolkit"]["n_pred_components"] == 0  # > vs ≥
    with pytest.raises(ValueError, match="cannot merge"):
        ComponentMetrics("obstacle").merge(ComponentMetrics("obstacle", rules="toolkit"))


def test_the_binned_protocols_are_not_the_exact_one(tmp_path):
    """A wrong dispatch (the exact metrics under the toolkit's name) fails here: on the fixtures
    the binned AP differs from the exact one by far more than the 1e-9 the recorded results are held to."""
    exact = evaluate(tmp_path, "smiyc-obstacle", TREE)["all"]
    binned = evaluate(tmp_path, "smiyc-obstacle", TREE, "--protocol", "smiyc")["all"]
    old = evaluate(tmp_path, "smiyc-obstacle", TREE, "--protocol", "smiyc-2021")["all"]
    assert abs(exact["auprc"] - binned["auprc"]) > 1e-5 and abs(binned["auprc"] - old["auprc"]) > 1e-3
    assert exact["n_pixels"] == binned["n_pixels"]  # the same pixels, counted another way


def test_lostandfound_under_the_toolkit_protocol_takes_the_toolkits_classes(tmp_path):
    """The toolkit counts LostAndFound's non-hazard ids as obstacles; diffeel's default leaves them void."""
    toolkit = evaluate(tmp_path, "laf", TREE, "--protocol", "smiyc")
    default = evaluate(tmp_path, "laf", TREE)
    assert toolkit["all"]["n_anomaly"] > default["all"]["n_anomaly"]
    assert "toolkit's LostAndFound classes" in toolkit["config"]["labels"]
    same = evaluate(tmp_path, "laf", TREE, "--protocol", "smiyc", "--label-map", "1:0,0:255,*:1")
    assert "labels" not in same["config"] and same["all"]["n_anomaly"] == toolkit["all"]["n_anomaly"]


def test_workers_and_batches_give_the_toolkits_numbers(tmp_path, rng):
    one = evaluate(tmp_path, "smiyc-obstacle", TREE, "--protocol", "smiyc")["all"]
    two = evaluate(tmp_path, "smiyc-obstacle", TREE, "--protocol", "smiyc", "--jobs", "2")["all"]
    assert {k: one[k] for k in ("auprc", "fpr95", "auroc")} == {k: two[k] for k in ("auprc", "fpr95", "auroc")}
    scores = rng.random((3, 20, 30)).astype(np.float16)
    labels = (rng.random((3, 20, 30)) < 0.1).astype(np.uint8)
    labels[:, :2] = 255
    batched = PixelMetrics("smiyc").update(scores, labels).compute()
    frame_by_frame = PixelMetrics("smiyc")
    for score, label in zip(scores, labels):
        frame_by_frame.update(score, label)
    assert batched["auprc"] == frame_by_frame.compute()["auprc"]


def test_diffeel_writes_the_toolkits_files(tmp_path):
    """The same dataset, dtype and compression as a file the toolkit's Evaluation wrote; the
    recording script checked that the toolkit's loader reads diffeel's file back unchanged."""
    toolkit_file = next((TREE / "anomaly_p" / RECORDED["method"] / "ObstacleTrack-all").glob("*.hdf5"))
    with h5py.File(toolkit_file) as handle:
        theirs = handle["value"]
        values, properties = theirs[()], (theirs.dtype, theirs.compression, theirs.compression_opts, theirs.shape)
    write_toolkit_map(tmp_path / "ours.hdf5", values.astype(np.float32))
    with h5py.File(tmp_path / "ours.hdf5") as handle:
        assert list(handle) == ["value"]
        ours = handle["value"]
        assert (ours.dtype, ours.compression, ours.compression_opts, ours.shape) == properties == (np.float16, "gzip", 9, values.shape)
        assert np.array_equal(ours[()], values)
    recorded = FIXTURES / "diffeel_written.hdf5"  # diffeel's file that the toolkit's loader read in the recording
    write_toolkit_map(tmp_path / "probe.hdf5", np.linspace(-3, 5, 48 * 80, dtype=np.float32).reshape(48, 80))
    assert np.array_equal(read_score_file(tmp_path / "probe.hdf5"), read_score_file(recorded))
    with pytest.raises(Exception, match="float16's range"):
        write_toolkit_map(tmp_path / "huge.hdf5", np.full((2, 2), 1e6, np.float32))
    assert not (tmp_path / "huge.hdf5").exists()


def test_score_writes_the_layout_resumably_and_eval_reads_it_back_losslessly(tmp_path):
    """diffeel → toolkit layout → diffeel: the same numbers as the default layout's float16 maps;
    the AnomalyTrack's test frame (no label) is scored at its image's size and left out of eval."""
    model = ["--model", "small_deeplab", "--random-weights", "1", "--benchmark", "smiyc-anomaly",
             "--root", BENCHMARKS["smiyc-anomaly"][0], "--quiet"]
    code, _, err = run("score", *model, "--layout", "smiyc", "--method", "Mine", "--scores", "eel", "--out", tmp_path / "tree")
    assert code == 0, err
    folder = tmp_path / "tree" / "anomaly_p" / "Mine" / "AnomalyTrack-all"
    assert sorted(p.name for p in folder.glob("*.hdf5")) == ["animal_0.hdf5", "debris_1.hdf5", "testframe_2.hdf5"]
    assert read_score_file(folder / "testframe_2.hdf5").shape == (48, 80)
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.hdf5")}
    (folder / "debris_1.hdf5").unlink()  # an interrupted run: rerun scores only what is missing
    code, out, _ = run("score", *model, "--layout", "smiyc", "--method", "Mine", "--scores", "eel", "--out", tmp_path / "tree")
    assert code == 0 and "kept 2" in out
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.hdf5") if p.name != "debris_1.hdf5"} == \
        {k: v for k, v in stamps.items() if k != "debris_1.hdf5"}
    assert run("score", *model, "--scores", "eel", "--out", tmp_path / "plain")[0] == 0
    for name in ("animal_0", "debris_1"):
        assert np.array_equal(read_score_file(folder / f"{name}.hdf5"), np.load(tmp_path / "plain" / "eel" / f"{name}.npy"))
    from_tree = evaluate(tmp_path, "smiyc-anomaly", tmp_path / "tree")
    from_plain = evaluate(tmp_path, "smiyc-anomaly", tmp_path / "plain" / "eel")
    assert from_tree["method"] == "Mine" and from_tree["all"]["n_frames"] == 2
    assert {k: from_tree["all"][k] for k in ("auprc", "fpr95", "auroc")} == {k: from_plain["all"][k] for k in ("auprc", "fpr95", "auroc")}


def test_eval_of_a_tree_picks_the_method_and_names_what_is_wrong(tmp_path):
    tree = tmp_path / "outputs"
    shutil.copytree(TREE, tree)
    shutil.copytree(tree / "anomaly_p" / RECORDED["method"], tree / "anomaly_p" / "Other")
    root = BENCHMARKS["smiyc-obstacle"][0]
    code, _, err = run("eval", "--benchmark", "smiyc-obstacle", "--root", root, "--scores", tree, "--out", tmp_path / "e", "--quiet")
    assert code == 2 and "name one with --method" in err and "Other" in err
    assert evaluate(tmp_path, "smiyc-obstacle", tree, "--method", "Other")["method"] == "Other"
    assert evaluate(tmp_path, "smiyc-obstacle", tree / "anomaly_p", "--method", "Other")["method"] == "Other"
    (tree / "anomaly_p" / "Other" / "ObstacleTrack-all" / "stray_frame.hdf5").write_bytes(
        (tree / "anomaly_p" / "Other" / "ObstacleTrack-all" / "gravel_2_a.hdf5").read_bytes())
    code, _, err = run("eval", "--benchmark", "smiyc-obstacle", "--root", root, "--scores", tree, "--method", "Other",
                       "--out", tmp_path / "e", "--quiet")
    assert code == 2 and "stray_frame.hdf5" in err and "matches no frame" in err
    code, _, err = run("eval", "--benchmark", "smiyc-obstacle", "--root", root, "--scores", tmp_path, "--layout", "smiyc",
                       "--out", tmp_path / "e", "--quiet")
    assert code == 2 and "no anomaly_p folder" in err
    code, _, err = run("eval", "--benchmark", "smiyc-obstacle", "--root", root, "--scores", TREE, "--protocol", "smiyc",
                       "--bootstrap", "10", "--out", tmp_path / "e", "--quiet")
    assert code == 2 and "--bootstrap" in err and not (tmp_path / "e").exists()


def test_score_refuses_what_the_layout_cannot_hold(tmp_path):
    base = ["score", "--model", "small_deeplab", "--random-weights", "0", "--benchmark", "smiyc-anomaly",
            "--root", BENCHMARKS["smiyc-anomaly"][0], "--out", tmp_path / "t", "--quiet"]
    for extra, message in ((["--layout", "smiyc", "--scores", "eel"], "needs --method"),
                           (["--layout", "smiyc", "--method", "M"], "name the score with --scores"),
                           (["--layout", "smiyc", "--method", "M", "--scores", "eel,msp"], "one map per frame"),
                           (["--layout", "smiyc", "--method", "../up", "--scores", "eel"], "cannot name a folder"),
                           (["--layout", "smiyc", "--method", "M", "--scores", "eel", "--dtype", "float32"], "float16"),
                           (["--method", "M"], "with --layout smiyc")):
        code, _, err = run(*base, *extra)
        assert code == 2 and message in err, (extra, err)
    code, _, err = run(*base[:6], "comsamy", "--root", tmp_path, "--layout", "smiyc", "--method", "M", "--scores", "eel",
                       "--out", tmp_path / "t")
    assert code == 2 and ("no dataset for comsamy" in err or "does not exist" in err)
    assert not (tmp_path / "t").exists()


@pytest.fixture
def fixture_counts(monkeypatch):
    """The fixture's datasets are small: the toolkit's frame counts, scaled down to theirs."""
    import diffeel.data.toolkit_layout as layout

    monkeypatch.setitem(layout.FRAME_COUNTS, "AnomalyTrack-all", 3)
    monkeypatch.setitem(layout.FRAME_COUNTS, "LostAndFound-test", 3)
    for split, number in {"test": 3, "night": 1, "snowstorm": 1, "validation": 1}.items():
        monkeypatch.setitem(layout.OBSTACLE_SPLIT_COUNTS, split, number)


def submit(tree, out, *extra):
    return run("submit", "smiyc", "--scores", tree, "--root", FIXTURES / "datasets", "--out", out, "--quiet", *extra)


def test_a_submission_holds_exactly_every_frames_map_byte_for_byte(tmp_path, fixture_counts):
    import zipfile

    tree = tmp_path / "outputs"
    shutil.copytree(TREE, tree)
    (tree / "anomaly_p" / RECORDED["method"] / "AnomalyTrack-all" / "score_config.json").write_text("{}")
    code, out, err = submit(tree, tmp_path / "a.zip")
    assert code == 0, err and "9 maps" in out
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        names = archive.namelist()
        expected = sorted(str(p.relative_to(tree)) for d in ("AnomalyTrack-all", "ObstacleTrack-all")
                          for p in (tree / "anomaly_p" / RECORDED["method"] / d).glob("*.hdf5"))
        assert names == expected and len(names) == 9  # the test frame without a label included, the config not
        assert all(archive.read(name) == (tree / name).read_bytes() for name in names)
    assert submit(tree, tmp_path / "b.zip")[0] == 0
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()  # the same maps, the same archive
    code, _, err = submit(tree, tmp_path / "a.zip")
    assert code == 2 and "--overwrite" in err
    code, out, err = run("submit", "smiyc", "--scores", tree, "--root", FIXTURES / "datasets", "--benchmarks", "smiyc-obstacle,laf",
                         "--laf-root", BENCHMARKS["laf"][0], "--out", tmp_path / "c.zip", "--quiet")
    assert code == 0 and "LostAndFound-test 3" in out, err


def test_each_missing_or_malformed_map_is_one_sentence_and_nothing_is_written(tmp_path, fixture_counts):
    tree = tmp_path / "outputs"
    shutil.copytree(TREE, tree)
    folder = tree / "anomaly_p" / RECORDED["method"] / "ObstacleTrack-all"
    (folder / "gravel_2_a.hdf5").unlink()
    write_toolkit_map(folder / "driveway_1_a.hdf5", np.zeros((24, 80), np.float32))
    with h5py.File(folder / "motorway_3_empty.hdf5", "w") as handle:
        handle.create_dataset("value", data=np.full((48, 80), np.nan, np.float16))
    (folder / "snowstorm1_4_a.hdf5").write_bytes(b"not hdf5")
    with h5py.File(folder / "validation_5_a.hdf5", "w") as handle:
        handle.create_dataset("scores", data=np.zeros((48, 80), np.float16))
    shutil.copy(folder / "curvy-street_0_a.hdf5", folder / "curvy-street_9_z.hdf5")
    code, _, err = submit(tree, tmp_path / "s.zip")
    lines = err.strip().splitlines()
    assert code == 2 and not (tmp_path / "s.zip").exists() and not list(tmp_path.glob(".s.zip*"))
    for frame, words in (("gravel_2_a", "no map"), ("driveway_1_a", "shape (24, 80)"), ("motorway_3_empty", "NaN or infinite"),
                         ("snowstorm1_4_a", "not a readable HDF5"), ("validation_5_a", "no 'value' dataset"),
                         ("curvy-street_9_z", "matches no frame")):
        assert sum(frame in line and words in line for line in lines) == 1, (frame, err)
    assert "6 problem(s)" in lines[-1] and "no archive was written" in lines[-1]


def test_a_submission_refuses_an_incomplete_dataset_copy_and_unknown_tracks(tmp_path):
    code, _, err = submit(TREE, tmp_path / "s.zip")
    assert code == 2 and "3 frames where the toolkit lists 110" in err
    for extra, words in ((["--benchmarks", "comsamy"], "--benchmarks takes"), (["--benchmarks", "laf"], "needs --laf-root"),
                         (["--method", "Nobody"], "--method Nobody is not among them")):
        code, _, err = submit(TREE, tmp_path / "s.zip", *extra)
        assert code == 2 and words in err, (extra, err)
    assert not (tmp_path / "s.zip").exists()


def test_lostandfound_subsets_are_the_toolkits_selections(tmp_path):
    """testValid leaves out the frames at the toolkit's positions in id order, testNoKnown also the
    sequences with known objects; both need the whole test split; eval accepts a tree holding
    the maps of every test frame."""
    from PIL import Image

    from diffeel.data.benchmarks import LOST_AND_FOUND_INVALID_POSITIONS, load_benchmark

    known = [f"01_Hanns_Klemm_Str_45_000006_{k:06d}" for k in range(100)]  # first in id order
    others = [f"02_Somewhere_{k:06d}_000000" for k in range(1103)]
    label = np.ones((2, 2), np.uint8)
    label[0, 0] = 5
    for frame_id in reversed(known + others):  # written out of order: the selection sorts by id
        scene = frame_id[:21] if frame_id.startswith("01") else "02_Somewhere"
        for folder, suffix in (("gtCoarse", "gtCoarse_labelIds"), ("leftImg8bit", "leftImg8bit")):
            (tmp_path / "laf" / folder / "test" / scene).mkdir(parents=True, exist_ok=True)
            Image.fromarray(label).save(tmp_path / "laf" / folder / "test" / scene / f"{frame_id}_{suffix}.png")
    ids = known + others
    valid = [f.id for f in load_benchmark("laf", tmp_path / "laf", subset="testValid")]
    assert valid == [i for position, i in enumerate(ids) if position not in LOST_AND_FOUND_INVALID_POSITIONS]
    assert len(valid) == 1186 and ids[17] not in valid and ids[16] in valid and ids[793] not in valid
    no_known = [f.id for f in load_benchmark("laf", tmp_path / "laf", subset="testNoKnown")]
    assert no_known == [i for i in valid if not i.startswith("01_Hanns_Klemm_Str_45_000006")] and len(no_known) == 1091
    scores = tmp_path / "tree" / "anomaly_p" / "M" / "LostAndFound-test"
    scores.mkdir(parents=True)
    for frame_id in ids:
        write_toolkit_map(scores / f"{frame_id}.hdf5", label.astype(np.float32))
    code, _, err = run("eval", "--benchmark", "laf", "--root", tmp_path / "laf", "--subset", "testNoKnown", "--scores",
                       tmp_path / "tree", "--protocol", "smiyc", "--out", tmp_path / "e", "--quiet")
    assert code == 0, err
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert results["all"]["n_frames"] == 1091 and results["config"]["subset"] == "testNoKnown"
    (tmp_path / "laf" / "gtCoarse" / "test" / "02_Somewhere" / f"{others[0]}_gtCoarse_labelIds.png").unlink()
    with pytest.raises(Exception, match="holds 1202"):
        load_benchmark("laf", tmp_path / "laf", subset="testNoKnown")
    code, _, err = run("eval", "--benchmark", "smiyc-obstacle", "--root", FIXTURES / "datasets", "--subset", "testValid",
                       "--scores", TREE, "--out", tmp_path / "e2", "--quiet")
    assert code == 2 and "--subset selects LostAndFound test frames" in err
