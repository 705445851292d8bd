"""``diffeel synth paste`` / ``preview`` and training recipes reading a generated (JSON-lines) bank."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from diffeel.cli import main
from diffeel.labels import ANOMALY_TRAIN_ID
from diffeel.synth.bank_builder import build_object_bank
from diffeel.synth.generate import plan_objects, read_backgrounds, read_objects
from diffeel.train.recipes import build_synthesizer, preset


class CentreExtractor:
    def extract(self, rgb):
        mask = np.zeros(rgb.shape[:2], bool)
        mask[8:40, 12:36] = True
        return SimpleNamespace(mask=mask, reason=None)


def run(*args):
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paste")
    rng = np.random.default_rng(0)
    plans = plan_objects(3, 0, read_objects(), read_backgrounds())
    build_object_bank(root / "bank", plans, lambda chunk: [rng.integers(60, 255, (48, 48, 3), dtype=np.uint8) for _ in chunk],
                      CentreExtractor(), progress=False)
    for folder in ("images", "labels"):
        (root / folder).mkdir()
    for index in range(3):  # Cityscapes-sized frames: the default camera's road starts below the horizon
        label = np.full((512, 1024), 10, np.uint8)
        label[300:] = 0
        Image.fromarray(rng.integers(0, 256, (512, 1024, 3), dtype=np.uint8)).save(root / "images" / f"f{index}.png")
        Image.fromarray(label).save(root / "labels" / f"f{index}.png")
    return root


def test_paste_writes_exact_pairs_resumes_and_harmonizing_keeps_the_labels(inputs, tmp_path):
    base = ["synth", "paste", "--bank", inputs / "bank", "--images", inputs / "images", "--labels", inputs / "labels", "--k", "1..2", "--quiet"]
    code, printed, err = run(*base, "--out", tmp_path / "pairs")
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "pairs" / "pastes.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["f0", "f1", "f2"] and sum(len(r["objects"]) for r in records) >= 3
    for record in records:
        source_image = np.array(Image.open(inputs / "images" / f"{record['id']}.png"))
        source_label = np.array(Image.open(inputs / "labels" / f"{record['id']}.png"))
        image = np.array(Image.open(tmp_path / "pairs" / "images" / f"{record['id']}.png"))
        label = np.array(Image.open(tmp_path / "pairs" / "labels" / f"{record['id']}.png"))
        pasted = label == ANOMALY_TRAIN_ID
        assert pasted.any() == bool(record["objects"])
        assert np.array_equal(label[~pasted], source_label[~pasted])  # Eq. 1: only object pixels change
        assert np.array_equal(image[~pasted], source_image[~pasted])
    code, printed, _ = run(*base, "--out", tmp_path / "pairs")
    assert code == 0 and "0 written" in printed and "3 already there" in printed
    assert run(*base, "--no-harmonize", "--out", tmp_path / "plain")[0] == 0
    for record in records:
        harmonized = np.array(Image.open(tmp_path / "pairs" / "labels" / f"{record['id']}.png"))
        plain = np.array(Image.open(tmp_path / "plain" / "labels" / f"{record['id']}.png"))
        assert np.array_equal(harmonized, plain)  # the blender changes colours, never the label map
    code, _, err = run(*base, "--k", "3", "--out", tmp_path / "pairs")
    assert code == 2 and "made with other settings" in err
    code, _, err = run("synth", "paste", "--bank", inputs / "bank", "--images", inputs / "images", "--out", tmp_path / "x")
    assert code == 2 and "--images needs --labels" in err


def test_preview_is_a_contact_sheet(inputs, tmp_path):
    code, printed, err = run("synth", "preview", "--bank", inputs / "bank", "--images", inputs / "images", "--labels", inputs / "labels",
                             "--rows", 2, "--out", tmp_path / "sheet.png")
    assert code == 0, err
    sheet = np.array(Image.open(tmp_path / "sheet.png"))
    assert sheet.shape[0] == 32 + 2 * 224 and sheet.shape[1] == 5 * 224


def test_recipes_read_a_generated_bank(inputs):
    synthesizer = build_synthesizer(preset("demo-rpl+eel"), inputs / "bank")
    assert len(synthesizer.bank) == 3 and synthesizer.bank[0].kind in {e.object for e in read_objects()}


def test_an_interrupted_paste_says_what_it_kept(inputs, tmp_path, monkeypatch):
    from diffeel.synth import pairs

    written = []
    original = pairs.write_image_atomic

    def write_then_stop(path, array):
        if len(written) == 4:  # two pairs on disk, then Ctrl-C
            raise KeyboardInterrupt
        written.append(path)
        original(path, array)

    monkeypatch.setattr(pairs, "write_image_atomic", write_then_stop)
    code, _, err = run("synth", "paste", "--bank", inputs / "bank", "--images", inputs / "images", "--labels", inputs / "labels",
                       "--quiet", "--out", tmp_path / "pairs")
    assert code == 130 and "finished outputs are kept, rerun to resume" in err and "nothing was written" not in err
    assert len(list((tmp_path / "pairs" / "images").iterdir())) == 2
