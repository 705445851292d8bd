"""Training RPL / RPL+EEL on Cityscapes around rpl_wrn38: data split, DDP equality, resume, logs, CLI."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

import benchmark_fixtures as fixtures
from diffeel.cli import main
from diffeel.data.benchmarks import load_benchmark
from diffeel.distributed import Distributed, end_process_group
from diffeel.errors import DiffeelError
from diffeel.models import RPLWiderResNet38, create_model, scoring_logits
from diffeel.scoring import validate_model
from diffeel.train.data import EpochBatches
from diffeel.train.recipes import preset, train_on_cityscapes
from test_data_training import coco_tree

TINY = {"width_divisor": 16}


def write_cityscapes(root: Path, frames: int = 8) -> None:
    """Frames of 48×64: sky above, road below with a car on it (placement needs road)."""
    rng = np.random.default_rng(0)
    for index in range(frames):
        city = "aachen" if index < frames // 2 else "bochum"
        frame_id = f"{city}_000000_{index:06d}"
        label = np.full((48, 64), 10, np.uint8)
        label[24:] = 0
        label[30:36, 5:15] = 13
        for kind, array, suffix in (("leftImg8bit", rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), "leftImg8bit"),
                                    ("gtFine", label, "gtFine_labelTrainIds")):
            folder = root / kind / "train" / city
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / f"{frame_id}_{suffix}.png")


def write_bank(folder: Path) -> None:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    rows = ["file,kind,min_height_m,max_height_m"]
    for index in range(3):
        rgba = np.zeros((12, 10, 4), np.uint8)
        rgba[..., :3] = rng.integers(0, 256, (12, 10, 3))
        rgba[2:10, 1:9, 3] = 255
        Image.fromarray(rgba).save(folder / f"object{index}.png")
        rows.append(f"object{index}.png,debris,0.5,1.5")
    (folder / "objects.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cityscapes")
    write_cityscapes(root / "cityscapes")
    write_bank(root / "bank")
    torch.manual_seed(1)
    host = RPLWiderResNet38(**TINY)  # NVIDIA's layout: module. prefix, no residual module
    state = {"module." + k: v for k, v in host.state_dict().items() if not k.startswith("residual_block.")}
    torch.save({"state_dict": state}, root / "cityscapes_best.pth")
    fixtures.comsamy(root / "bench", np.random.default_rng(2))
    return root


def config(**overrides):
    return preset("rpl+eel", **{"steps": 2, "batch_size": 4, "crop": [32, 48], "save_every": 1, **overrides})


def make_model(root: Path):
    return lambda: create_model("rpl_wrn38", checkpoint=root / "cityscapes_best.pth", **TINY)


def train_process(rank: int, world_size: int, root: Path, out: Path, init_file: Path) -> None:
    """One process of a data-parallel run (gloo, as torchrun would start it)."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    train_on_cityscapes(config(), root / "cityscapes", out, make_model(root), objects=root / "bank", device=torch.device("cpu"),
                        context=Distributed(rank, world_size, rank), progress=False)
    end_process_group()


def states(path: Path) -> dict:
    return torch.load(path / "checkpoint.pt", weights_only=True)


@pytest.fixture(scope="module")
def single(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    torch.set_num_threads(1)
    try:
        train_on_cityscapes(config(), data / "cityscapes", out, make_model(data), objects=data / "bank", device=torch.device("cpu"),
                            progress=False)
    finally:
        torch.set_num_threads(2)
    return out


def test_epoch_batches_split_the_global_batch_between_processes():
    one = list(EpochBatches(10, 4, steps=6, seed=3))
    two = [EpochBatches(10, 4, steps=6, seed=3, rank=r, world_size=2) for r in range(2)]
    for step, (batch, *shares) in enumerate(zip(one, *two)):
        assert sorted(batch) == sorted(shares[0] + shares[1]) and len(shares[0]) == 2
        assert {epoch for epoch, _ in batch} == {step // 2}  # 10 frames // 4 = 2 steps per epoch
    epoch_zero = [index for batch in one[:2] for _, index in batch]
    assert len(set(epoch_zero)) == 8  # no frame twice within an epoch
    assert list(EpochBatches(10, 4, steps=6, seed=3, start=3)) == one[3:]
    with pytest.raises(Exception, match="does not split evenly over 3 processes"):
        EpochBatches(10, 4, steps=6, seed=3, world_size=3)


def test_two_gloo_processes_take_the_single_process_step(data, single, tmp_path):
    out = tmp_path / "two"
    mp.spawn(train_process, args=(2, data, out, tmp_path / "init"), nprocs=2)
    ours, reference = states(out)["model"], states(single)["model"]
    assert ours.keys() == reference.keys()
    for key in reference:
        assert torch.allclose(ours[key].float(), reference[key].float(), rtol=1e-6, atol=1e-6), key
    logs = [(out / "log.jsonl").read_text().splitlines(), (single / "log.jsonl").read_text().splitlines()]
    assert len(logs[0]) == 2
    for ours_line, reference_line in zip(*logs):
        a, b = json.loads(ours_line), json.loads(reference_line)
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)


def test_checkpoint_loads_back_with_a_frozen_host_and_records_the_run(data, single):
    state = states(single)
    assert state["step"] == 2 and state["config"]["recipe"] == "rpl+eel" and state["revision"]
    trained = create_model("rpl_wrn38", checkpoint=single / "checkpoint.pt", **TINY)
    original = create_model("rpl_wrn38", checkpoint=data / "cityscapes_best.pth", **TINY)
    assert trained.residual_trained
    host_keys = [k for k in original.state_dict() if not k.startswith("residual_block.")]
    assert all(torch.equal(trained.state_dict()[k], original.state_dict()[k]) for k in host_keys)
    assert not torch.equal(trained.residual_block.atten_aspp_final.weight, original.residual_block.atten_aspp_final.weight)
    images = torch.randn(1, 3, 32, 48)
    with torch.inference_mode():
        assert torch.equal(trained(images).host_logits, original(images).host_logits)
    assert list((single / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_equals_an_uninterrupted_run(data, single, tmp_path):
    out = tmp_path / "resumed"
    torch.set_num_threads(1)
    try:
        for stop in (1, None):
            train_on_cityscapes(config(), data / "cityscapes", out, make_model(data), objects=data / "bank",
                                device=torch.device("cpu"), progress=False, stop_after=stop)
    finally:
        torch.set_num_threads(2)
    resumed, reference = states(out)["model"], states(single)["model"]
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert (out / "log.jsonl").read_text() == (single / "log.jsonl").read_text()


def test_validation_hook_and_coco_outliers(data, tmp_path):
    coco_tree(tmp_path / "coco", np.random.default_rng(5))
    frames = load_benchmark("comsamy", data / "bench")
    out = tmp_path / "coco-run"
    train_on_cityscapes(config(synthesizer="rpl-mix", steps=1), data / "cityscapes", out, make_model(data), coco=tmp_path / "coco",
                        device=torch.device("cpu"), progress=False,
                        validate=lambda model: validate_model(model, frames, device=torch.device("cpu")))
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    validation = [line["validation"] for line in lines if "validation" in line]
    assert len(validation) == 1 and set(validation[0]) == {"energy/auprc", "energy/fpr95", "eel/auprc", "eel/fpr95"}
    assert all(0 <= value <= 100 for value in validation[0].values())


def test_validation_scores_the_residual_module_being_trained(data, tmp_path):
    """NVIDIA's closed-set file holds no residual module, so scoring it alone uses out1; a run that
    trains the residual module must validate out2, and its numbers move with the residual."""
    frames = load_benchmark("comsamy", data / "bench")
    probe = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    scored, validations = [], []

    def validate(model):
        with torch.no_grad():
            scored.append((scoring_logits(model, probe), model(probe)))
        validations.append(validate_model(model, frames, device=torch.device("cpu")))
        return validations[-1]

    train_on_cityscapes(config(steps=3, validate_every=1, lr=1e-2), data / "cityscapes", tmp_path / "run", make_model(data),
                        objects=data / "bank", device=torch.device("cpu"), progress=False, validate=validate)
    assert len(scored) == 3
    for logits, (host, residual) in scored:
        assert torch.equal(logits, residual) and not torch.equal(logits, host)
    assert not torch.equal(scored[0][0], scored[-1][0])
    assert validations[0] != validations[-1]


def test_each_epoch_pastes_from_its_own_coco_proxy_set(data, tmp_path):
    """Items of epoch e paste objects of epoch e's proxy set (one image per epoch here), so the
    outliers change with the epoch as in RPL, whoever decodes the item."""
    from diffeel.data.cityscapes import read_cityscapes_frame
    from diffeel.synth import RPLMixSynthesizer
    from diffeel.synth.coco import CocoOutliers
    from diffeel.train.data import CityscapesTraining, augment_frame
    from diffeel.train.recipes import outlier_source

    coco_tree(tmp_path / "coco", np.random.default_rng(5))
    outliers = CocoOutliers(tmp_path / "coco", proxy_size=1, seed=0)
    chosen = {epoch: outliers.for_epoch(epoch).file_names[0] for epoch in range(12)}
    first, other = 0, next(epoch for epoch in chosen if chosen[epoch] != chosen[0])
    synthesizer = RPLMixSynthesizer(outliers, scales=(1.0,))
    dataset = CityscapesTraining(data / "cityscapes", seed=0, synthesizer=synthesizer)
    image, label = read_cityscapes_frame(dataset.frames[0])
    for epoch, wrong in ((first, other), (other, first)):
        item_image, item_label = dataset[(epoch, 0)]
        rng = lambda: np.random.default_rng([0, epoch, 0])  # noqa: E731
        expected = augment_frame(image, label, rng(), synthesizer=synthesizer.for_epoch(epoch))
        wrong_epoch = augment_frame(image, label, rng(), synthesizer=synthesizer.for_epoch(wrong))
        assert np.array_equal(item_image.permute(1, 2, 0).numpy(), expected[0]) and np.array_equal(item_label.numpy(), expected[1])
        assert not np.array_equal(item_image.permute(1, 2, 0).numpy(), wrong_epoch[0])
    source = outlier_source(config(synthesizer="rpl-mix"), coco=tmp_path / "coco", inlier_frames=2)
    assert len(source) == 3 and len(source.for_epoch(0)) == 2  # the whole filtered set, 2 of it per epoch
    assert len(outlier_source(config(synthesizer="rpl-mix", object_pool=0.5), coco=tmp_path / "coco", inlier_frames=2)) == 2


def anomaly_crop_share(crop_around_anomaly: bool, samples: int = 40, resize=None) -> float:
    """The share of crops holding anomaly pixels when objects are placed on a Cityscapes-like frame
    (2:1, road below the horizon, 0.5-1.5 m objects) before a crop of 0.34 × its width, as
    rpl+eel's 700×700 crops of 2048×1024 frames."""
    from diffeel.labels import ANOMALY_TRAIN_ID
    from diffeel.synth import BankObject, CopyPasteSynthesizer, ObjectBank
    from diffeel.train.data import augment_frame

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 512, 3), dtype=np.uint8)
    label = np.full((256, 512), 10, np.uint8)  # sky
    label[100:125] = 2  # buildings
    label[125:] = 0  # road
    objects = [BankObject(np.full((24, 16, 3), 40 * k, np.uint8), np.ones((24, 16), bool), "debris", (0.5, 1.5), str(k))
               for k in range(3)]
    synthesizer = CopyPasteSynthesizer(ObjectBank(objects), harmonize=False)
    held = 0
    for sample in range(samples):
        _, cropped = augment_frame(image, label, np.random.default_rng([1, sample]), crop=(175, 175), synthesizer=synthesizer,
                                   paste_before_crop=True, crop_around_anomaly=crop_around_anomaly, resize=resize)
        held += bool((cropped == ANOMALY_TRAIN_ID).any())
    return held / samples


def test_crops_hold_the_placed_anomaly():
    """Placed on the whole view and then cropped at random, many crops miss the object; chosen
    around a placed object, (nearly) every crop holds anomaly pixels, as RPL's do."""
    random_crops, kept = anomaly_crop_share(False), anomaly_crop_share(True)
    assert kept >= 0.95 and random_crops < 0.8
    assert anomaly_crop_share(True, resize=([128, 384], 4096)) >= 0.95  # the kept box follows a multi-scale resize


def test_a_crop_window_holds_the_box_it_must_keep():
    from diffeel.train.data import random_crop

    image = np.arange(60 * 80 * 3, dtype=np.int64).reshape(60, 80, 3) % 251
    label = np.zeros((60, 80), np.uint8)
    label[40:46, 70:76] = 254
    for seed in range(30):
        _, cropped = random_crop(image, label, (20, 20), np.random.default_rng(seed), keep=(40, 70, 6, 6))
        assert (cropped == 254).sum() == 36  # the whole box, wherever the window lands
    label[:] = 0
    label[10:50, 30:70] = 254  # a box larger than the window: the window is centred on it
    _, cropped = random_crop(image, label, (20, 20), np.random.default_rng(0), keep=(10, 30, 40, 40))
    assert (cropped == 254).all()


def test_the_training_log_reports_the_share_of_crops_with_anomalies(data, tmp_path):
    train_on_cityscapes(config(steps=2), data / "cityscapes", tmp_path / "run", make_model(data), objects=data / "bank",
                        device=torch.device("cpu"), progress=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [line["anomaly_crops"] for line in lines] == [1.0, 1.0]


def test_mask2former_optimizer_leaves_norm_and_embedding_parameters_undecayed():
    from diffeel.train.loop import make_optimizer
    from diffeel.train.recipes import mask_parameter_groups

    model = create_model("mask2anomaly_r50", hidden_dim=32, num_queries=10, dec_layers=3, width_divisor=16, norm_groups=4,
                         dim_feedforward=32, enc_layers=1, enc_dim_feedforward=32, nheads=4)
    names = {id(p): name for name, p in model.named_parameters()}
    decayed, undecayed = mask_parameter_groups(model, decay_norm_and_embedding=False)
    undecayed_names = {names[id(p)] for p in undecayed["params"]}
    assert {"sem_seg_head.predictor.query_feat.weight", "sem_seg_head.predictor.query_embed.weight",
            "sem_seg_head.predictor.level_embed.weight"} <= undecayed_names  # embeddings
    assert any(".norm" in name and name.endswith(".bias") for name in undecayed_names)  # LayerNorm
    assert "sem_seg_head.pixel_decoder.adapter_1.norm.weight" in undecayed_names  # GroupNorm
    assert "sem_seg_head.pixel_decoder.transformer.level_embed" not in undecayed_names  # a bare parameter, decayed as upstream
    assert all(not name.startswith("backbone.") for name in map(names.get, map(id, decayed["params"] + undecayed["params"])))
    optimizer = make_optimizer(preset("m2a"), [decayed, undecayed])
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.05, 0.0]
    assert len(mask_parameter_groups(model)) == 1  # decay everywhere unless asked


def run(*args):
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def test_cli_trains_and_refuses_bad_data(data, tmp_path):
    base = ["train", "--recipe", "rpl", "--set", "steps=1", "--set", "batch_size=2", "--set", "crop=[32,48]", "--host", "rpl_wrn38",
            "--model-option", "width_divisor=16", "--checkpoint", data / "cityscapes_best.pth", "--workers", "0", "--quiet"]
    code, printed, err = run(*base, "--cityscapes", data / "cityscapes", "--objects", data / "bank", "--out", tmp_path / "run")
    assert code == 0, err
    assert "for 1 steps on 1 process(es)" in printed
    assert create_model("rpl_wrn38", checkpoint=tmp_path / "run" / "checkpoint.pt", **TINY).residual_trained
    (tmp_path / "bad-coco" / "annotations").mkdir(parents=True)
    (tmp_path / "bad-coco" / "annotations" / "instances_train2017.json").write_text('{"images": [], "annotations": []}')
    (tmp_path / "broken.pth").write_bytes(b"PK\x03\x04 half a checkpoint")
    cases = [
        (["--cityscapes", data / "cityscapes", "--coco", tmp_path / "bad-coco"], "categories"),
        (["--cityscapes", tmp_path / "nowhere", "--objects", data / "bank"], "does not exist"),
        (["--cityscapes", data / "cityscapes"], "--coco (a COCO root), --objects (an object bank folder), or both"),
        (["--cityscapes", data / "cityscapes", "--coco", tmp_path / "no-coco"], "no-coco"),
    ]
    broken = [a if a != data / "cityscapes_best.pth" else tmp_path / "broken.pth" for a in base]
    cases.append((["--cityscapes", data / "cityscapes", "--objects", data / "bank"], "could not be read", broken))
    for extra, phrase, *arguments in cases:
        code, _, err = run(*(arguments[0] if arguments else base), *extra, "--out", tmp_path / "bad")
        assert code == 2 and phrase in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()


def test_generated_and_coco_objects_pool_into_one_source(data, tmp_path):
    from diffeel.train.recipes import PooledSource, outlier_source

    coco_tree(tmp_path / "coco", np.random.default_rng(5))
    source = outlier_source(config(), coco=tmp_path / "coco", objects=data / "bank", inlier_frames=8)
    assert isinstance(source, PooledSource) and len(source) == 3 + len(source.sources[1])
    rng = np.random.default_rng(0)
    kinds = {source.sample(rng).kind for _ in range(60)}
    assert "debris" in kinds and kinds - {"debris"}  # both the bank's and COCO's objects are drawn


TINY_MASK = {"hidden_dim": 32, "num_queries": 10, "dec_layers": 3, "width_divisor": 16, "norm_groups": 4, "dim_feedforward": 32,
             "enc_layers": 1, "enc_dim_feedforward": 32, "nheads": 4}


@pytest.mark.parametrize("recipe", ["m2a", "m2a+eel"])
def test_mask2anomaly_recipes_train_resume_and_load_back(data, tmp_path, recipe):
    torch.manual_seed(2)
    torch.save({"model": create_model("mask2anomaly_r50", **TINY_MASK).state_dict()}, tmp_path / "model_final.pth")
    make = lambda: create_model("mask2anomaly_r50", checkpoint=tmp_path / "model_final.pth", **TINY_MASK)  # noqa: E731
    settings = {"steps": 2, "batch_size": 2, "crop": [32, 48], "save_every": 1, "paste_probability": 1.0,
                "mask_loss": {**preset(recipe).mask_loss, "train_points": 64}}
    runs = {}
    for name, stops in (("whole", (None,)), ("resumed", (1, None))):
        for stop in stops:
            train_on_cityscapes(preset(recipe, **settings), data / "cityscapes", tmp_path / name, make, objects=data / "bank",
                                device=torch.device("cpu"), progress=False, stop_after=stop)
        runs[name] = states(tmp_path / name)["model"]
    assert all(torch.equal(runs["whole"][k], runs["resumed"][k]) for k in runs["whole"])
    log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and ("eel" if recipe == "m2a+eel" else "contrastive") in log[0]
    trained = create_model("mask2anomaly_r50", checkpoint=tmp_path / "whole" / "checkpoint.pt", **TINY_MASK)
    original = make()
    backbone = [k for k in original.state_dict() if k.startswith("backbone.")]
    assert all(torch.equal(trained.state_dict()[k], original.state_dict()[k]) for k in backbone)  # frozen
    assert not all(torch.equal(trained.state_dict()[k], original.state_dict()[k]) for k in original.state_dict())


def mask_settings():
    return {"steps": 2, "batch_size": 4, "crop": [32, 48], "save_every": 1, "mask_loss": {**preset("m2a+eel").mask_loss, "train_points": 64}}


def train_mask_process(rank: int, world_size: int, root: Path, checkpoint: Path, out: Path, init_file: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    train_on_cityscapes(preset("m2a+eel", **mask_settings()), root / "cityscapes", out,
                        lambda: create_model("mask2anomaly_r50", checkpoint=checkpoint, **TINY_MASK), objects=root / "bank",
                        device=torch.device("cpu"), context=Distributed(rank, world_size, rank), progress=False)
    end_process_group()


def test_mask2anomaly_two_gloo_processes_take_the_single_process_step(data, tmp_path):
    """The matcher's points are drawn per image (seeded by the step and the image), batch means are
    global: two processes take one process's step."""
    torch.manual_seed(3)
    torch.save({"model": create_model("mask2anomaly_r50", **TINY_MASK).state_dict()}, tmp_path / "model_final.pth")
    torch.set_num_threads(1)
    try:
        train_on_cityscapes(preset("m2a+eel", **mask_settings()), data / "cityscapes", tmp_path / "one",
                            lambda: create_model("mask2anomaly_r50", checkpoint=tmp_path / "model_final.pth", **TINY_MASK),
                            objects=data / "bank", device=torch.device("cpu"), progress=False)
    finally:
        torch.set_num_threads(2)
    mp.spawn(train_mask_process, args=(2, data, tmp_path / "model_final.pth", tmp_path / "two", tmp_path / "init"), nprocs=2)
    one, two = states(tmp_path / "one")["model"], states(tmp_path / "two")["model"]
    for key in one:
        assert torch.allclose(one[key].float(), two[key].float(), rtol=1e-6, atol=1e-6), key


def test_mask2anomaly_stage_one_then_fine_tuning_from_it(data, tmp_path):
    """m2a-inlier trains from backbone weights alone (Mask2Anomaly's stage 1, no anomaly term);
    m2a+eel starts from its checkpoint quietly, and warns when started from another file (such as
    the released model_final.pth, already contrastive-tuned)."""
    torch.manual_seed(3)
    donor = create_model("mask2anomaly_r50", **TINY_MASK).state_dict()
    torch.save({"model": {k: v for k, v in donor.items() if k.startswith("backbone.")}}, tmp_path / "backbone.pth")
    torch.save({"model": donor}, tmp_path / "model_final.pth")
    options = [a for key, value in TINY_MASK.items() for a in ("--model-option", f"{key}={value}")]
    small = ["--set", "steps=1", "--set", "batch_size=2", "--set", "crop=[32,48]", "--set", 'mask_loss={"train_points": 64}']
    common = ["train", "--cityscapes", data / "cityscapes", "--host", "mask2anomaly_r50", *options, *small, "--quiet"]
    code, _, err = run(*common, "--recipe", "m2a-inlier", "--backbone", tmp_path / "backbone.pth", "--out", tmp_path / "stage1")
    assert code == 0, err
    stage1 = torch.load(tmp_path / "stage1" / "checkpoint.pt", weights_only=True)
    assert stage1["config"]["recipe"] == "m2a-inlier"
    assert all(torch.equal(stage1["model"][k], v) for k, v in donor.items() if k.startswith("backbone."))
    log = json.loads((tmp_path / "stage1" / "log.jsonl").read_text().splitlines()[0])
    assert {"ce", "mask", "dice"} <= set(log) and not {"eel", "contrastive"} & set(log)

    code, _, err = run(*common, "--recipe", "m2a+eel", "--objects", data / "bank", "--checkpoint", tmp_path / "stage1" / "checkpoint.pt",
                       "--out", tmp_path / "stage2")
    assert code == 0 and "warning" not in err, err
    code, _, err = run(*common, "--recipe", "m2a+eel", "--objects", data / "bank", "--checkpoint", tmp_path / "model_final.pth",
                       "--out", tmp_path / "released")
    assert code == 0 and "warning" in err and "contrastive loss (its stage 2)" in err and "--recipe m2a-inlier" in err
    code, _, err = run(*common, "--recipe", "m2a-inlier", "--checkpoint", tmp_path / "model_final.pth", "--out", tmp_path / "bad")
    assert code == 2 and "--backbone" in err


def test_diffeel_presets_run_the_paper_blender_and_say_which_stages_ran(data, tmp_path):
    """rpl+eel / m2a+eel: the placement search, illumination, DoveNet when its weights are given;
    without them the recorded config says illumination only, and the run says why."""
    from diffeel.models.dovenet import DoveNetGenerator
    from diffeel.synth.harmonize import DoveNetBlender
    from diffeel.synth.synthesizer import IlluminationBlender
    from diffeel.train.recipes import build_synthesizer, harmonizer_stages

    for recipe in ("rpl+eel", "m2a+eel"):
        config = preset(recipe)
        assert config.placement == "best" and config.harmonizer == "illumination+dovenet"
        quiet, note = harmonizer_stages(config, None)
        assert quiet.harmonizer == "illumination" and "DoveNet harmonization not run" in note
        assert harmonizer_stages(config, "weights.pth") == (config, None)
    with pytest.raises(DiffeelError, match="--harmonizer weights are for a placement recipe"):
        harmonizer_stages(preset("rpl"), "weights.pth")
    assert preset("rpl").harmonizer == "none" and preset("m2a").harmonizer == "none"  # no blender: none claimed

    synthesizer = build_synthesizer(preset("rpl+eel"), data / "bank", harmonizer_weights=DoveNetGenerator(ngf=4))
    assert synthesizer.search == "best"
    assert [type(stage) for stage in synthesizer.blender.stages] == [IlluminationBlender, DoveNetBlender]
    with pytest.raises(DiffeelError, match="asks for DoveNet"):
        build_synthesizer(preset("rpl+eel"), data / "bank")

    code, out, err = run("train", "--recipe", "rpl+eel", "--show-config")
    assert code == 0 and 'harmonizer: "illumination"  # DoveNet harmonization not run' in out
    code, out, _ = run("train", "--recipe", "rpl+eel", "--show-config", "--harmonizer", tmp_path / "latest_net_G.pth")
    assert code == 0 and 'harmonizer: "illumination+dovenet"  # paper IV-A' in out
    code, _, err = run("train", "--recipe", "rpl+eel", "--cityscapes", data / "cityscapes", "--host", "rpl_wrn38",
                       "--checkpoint", data / "cityscapes_best.pth", "--model-option", "width_divisor=16", "--objects", data / "bank",
                       "--set", "steps=1", "--set", "batch_size=2", "--set", "crop=[32,48]", "--out", tmp_path / "run", "--quiet")
    assert code == 0 and "note: DoveNet harmonization not run" in err, err
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["config"]["harmonizer"] == "illumination"
