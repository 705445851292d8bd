"""The object generator and the bank it builds: plans, tiny Stable Diffusion offline, records, shards, resume."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from diffeel.cli import main
from diffeel.errors import DiffeelError
from diffeel.synth import ObjectBank
from diffeel.synth.bank import read_records
from diffeel.synth.bank_builder import build_object_bank
from diffeel.synth.generate import (GenerationSettings, check_model_files, generate_images, load_pipeline, plan_objects, read_backgrounds,
                                    read_objects)
from sd_fixtures import tiny_stable_diffusion


@pytest.fixture(scope="module")
def stable_diffusion(tmp_path_factory) -> Path:
    return tiny_stable_diffusion(tmp_path_factory.mktemp("sd"))


class CentreExtractor:
    """A stand-in extractor: the centre square is the object; images whose mean is dark are rejected."""

    name = "centre"

    def extract(self, rgb):
        mask = np.zeros(rgb.shape[:2], bool)
        h, w = mask.shape
        mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = True
        return SimpleNamespace(mask=mask, reason="too_small" if rgb.mean() < 100 else None)


def run(*args):
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def test_vocabularies_and_plans():
    objects, backgrounds = read_objects(), read_backgrounds()
    assert {"animal", "static obstacle", "dynamic obstacle", "unusual vehicle"} <= {e.category for e in objects}
    assert all(0 < e.height_range[0] <= e.height_range[1] for e in objects) and "street" in backgrounds
    plans = plan_objects(10, 3, objects, backgrounds)
    assert plans == plan_objects(10, 3, objects, backgrounds) and plans != plan_objects(10, 4, objects, backgrounds)
    assert plans[2].prompt == f"One {plans[2].object} in the {plans[2].background}"
    shards = [plan_objects(10, 3, objects, backgrounds, (i, 3)) for i in range(3)]
    assert sorted(p.index for s in shards for p in s) == list(range(10))
    assert sorted((p for s in shards for p in s), key=lambda p: p.index) == plans
    assert plan_objects(12, 3, objects, backgrounds)[:10] == plans  # planning more objects changes none of the first


def test_bad_vocabularies_and_model_paths(tmp_path):
    (tmp_path / "empty.csv").write_text("object,category,min_height_m,max_height_m\n")
    with pytest.raises(DiffeelError, match="lists no objects"):
        read_objects(tmp_path / "empty.csv")
    (tmp_path / "bg.txt").write_text("# nothing\n\n")
    with pytest.raises(DiffeelError, match="lists no backgrounds"):
        read_backgrounds(tmp_path / "bg.txt")
    (tmp_path / "bad.csv").write_text("object,category,min_height_m,max_height_m\ndog,animal,1.0,0.5\n")
    with pytest.raises(DiffeelError, match="line 2"):
        read_objects(tmp_path / "bad.csv")
    with pytest.raises(DiffeelError, match="does not exist; expected a diffusers folder"):
        check_model_files(tmp_path / "sd15")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model_index.json").write_text("{}")
    with pytest.raises(DiffeelError, match="lacks unet/, vae/, text_encoder/, tokenizer/, scheduler/"):
        check_model_files(tmp_path / "half")
    (tmp_path / "v1-5.safetensors").write_bytes(b"x")
    with pytest.raises(DiffeelError, match="needs --config"):
        check_model_files(tmp_path / "v1-5.safetensors")


def test_tiny_pipeline_draws_each_object_from_its_own_seed(stable_diffusion):
    pipeline = load_pipeline(stable_diffusion)
    plans = plan_objects(3, 0, read_objects(), read_backgrounds())
    settings = GenerationSettings(steps=2, size=32)
    together = generate_images(pipeline, plans, settings)
    alone = generate_images(pipeline, plans[1:2], settings)
    assert together[0].shape == (32, 32, 3) and together[0].dtype == np.uint8
    assert np.array_equal(alone[0], together[1])  # not changed by its batch mates
    assert not np.array_equal(together[0], together[1])


def _bank_files(bank: Path) -> dict[str, bytes]:
    return {str(p.relative_to(bank)): p.read_bytes() for p in sorted(bank.rglob("*.png"))}


def test_bank_records_shards_and_resume(tmp_path):
    objects, backgrounds = read_objects(), read_backgrounds()
    rng_images = {}

    def draw(chunk):
        # a stand-in for diffusion: an image from the plan's own seed
        return [rng_images.setdefault(p.id, np.random.default_rng(p.seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)) for p in chunk]

    plans = plan_objects(8, 1, objects, backgrounds)
    counts = build_object_bank(tmp_path / "one", plans, draw, CentreExtractor(), batch=3, provenance={"model": {"name": "m"}}, progress=False)
    records = read_records(tmp_path / "one")
    assert counts["ok"] + counts["rejected"] == 8 and len(records) == 8
    assert [r["id"] for r in records] == [p.id for p in plans]
    for record, plan in zip(records, plans):
        assert record["prompt"] == plan.prompt and record["seed"] == plan.seed and record["model"] == {"name": "m"}
        assert (tmp_path / "one" / record["image"]).is_file()
        assert (record["status"] == "ok") == (tmp_path / "one" / "objects" / f"{plan.id}.png").is_file()
    assert {r["status"] for r in records} <= {"ok", "too_small"}
    # a rerun draws nothing
    again = build_object_bank(tmp_path / "one", plans, lambda chunk: pytest.fail("drew again"), CentreExtractor(),
                              provenance={"model": {"name": "m"}}, progress=False)
    assert again["kept"] == 8 and again["ok"] == again["rejected"] == 0
    # two shards into one folder: the same records and files as one run
    for part in range(2):
        build_object_bank(tmp_path / "two", plan_objects(8, 1, objects, backgrounds, (part, 2)), draw, CentreExtractor(), shard=(part, 2),
                          provenance={"model": {"name": "m"}}, progress=False)
    assert sorted((tmp_path / "two").glob("objects*.jsonl")) == [tmp_path / "two" / "objects-00000-of-00002.jsonl",
                                                                 tmp_path / "two" / "objects-00001-of-00002.jsonl"]
    assert read_records(tmp_path / "two") == records
    assert _bank_files(tmp_path / "two") == _bank_files(tmp_path / "one")
    # another model into the same bank is refused
    with pytest.raises(DiffeelError, match="made with another model"):
        build_object_bank(tmp_path / "one", plans, draw, CentreExtractor(), provenance={"model": {"name": "other"}}, progress=False)


def test_an_interruption_leaves_a_consistent_bank(tmp_path):
    objects, backgrounds = read_objects(), read_backgrounds()
    plans = plan_objects(4, 2, objects, backgrounds)
    draw = lambda chunk: [np.full((16, 16, 3), 200, np.uint8) for _ in chunk]  # noqa: E731
    build_object_bank(tmp_path / "bank", plans[:2], draw, CentreExtractor(), progress=False)
    records_file = tmp_path / "bank" / "objects.jsonl"
    # killed while writing object 2: its PNGs exist, its record line is cut short
    (tmp_path / "bank" / "objects" / "000002.png").write_bytes(b"half")
    (tmp_path / "bank" / "generated" / "000002.png").write_bytes(b"half")
    records_file.write_text(records_file.read_text() + '{"id": "000002", "sta')
    counts = build_object_bank(tmp_path / "bank", plans, draw, CentreExtractor(), progress=False)
    assert counts["kept"] == 2 and counts["ok"] == 2
    records = read_records(tmp_path / "bank")
    assert [r["id"] for r in records] == [p.id for p in plans]
    bank = ObjectBank.from_folder(tmp_path / "bank")  # every record's file is a readable cut-out
    assert len(bank) == 4 and bank[0].kind == plans[0].object


def test_bank_with_a_missing_png_is_refused(tmp_path):
    plans = plan_objects(2, 0, read_objects(), read_backgrounds())
    build_object_bank(tmp_path, plans, lambda chunk: [np.full((16, 16, 3), 200, np.uint8) for _ in chunk], CentreExtractor(),
                      progress=False)
    (tmp_path / "objects" / "000001.png").unlink()
    with pytest.raises(DiffeelError, match="000001.png does not exist"):
        ObjectBank.from_folder(tmp_path)


def test_synth_objects_cli_end_to_end(stable_diffusion, tmp_path):
    args = ["synth", "objects", "--model", stable_diffusion, "--count", 3, "--steps", 2, "--size", 32, "--extractor", "grabcut", "--quiet"]
    code, printed, err = run(*args, "--out", tmp_path / "bank")
    assert code == 0, err
    records = read_records(tmp_path / "bank")
    assert len(records) == 3 and all(r["settings"]["extractor"] == "grabcut" and r["model"]["fingerprint"] for r in records)
    for record in records:
        assert (tmp_path / "bank" / record["image"]).is_file()
        assert (record["status"] == "ok") == ("file" in record and (tmp_path / "bank" / record["file"]).is_file())
    code, printed, _ = run(*args, "--out", tmp_path / "bank")
    assert code == 0 and "3 already there" in printed and "0 accepted, 0 rejected" in printed
    for part in ("0/2", "1/2"):
        assert run(*args, "--shard", part, "--out", tmp_path / "sharded")[0] == 0
    assert read_records(tmp_path / "sharded") == records
    code, _, err = run("synth", "objects", "--model", tmp_path / "nowhere", "--count", 1, "--out", tmp_path / "x", "--quiet")
    assert code == 2 and "does not exist; expected a diffusers folder" in err and not (tmp_path / "x").exists()
