"""Training a residual adapter (RPL's recipes on a host without RPL's module): DDP equality, loading back, CLI."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from diffeel.cli import main
from diffeel.distributed import Distributed, end_process_group
from diffeel.models import SmallDeepLab, create_model
from diffeel.models.adapter import ResidualAdapter
from diffeel.train.recipes import preset, train_on_cityscapes
from test_train_cityscapes import states, write_bank, write_cityscapes


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adapter")
    write_cityscapes(root / "cityscapes")
    write_bank(root / "bank")
    torch.manual_seed(4)
    torch.save({"model": SmallDeepLab().state_dict()}, root / "host.pt")
    return root


def config(recipe="rpl+eel", **overrides):
    return preset(recipe, **{"steps": 2, "batch_size": 4, "crop": [32, 48], "save_every": 1, **overrides})


def make_model(root: Path):
    return lambda: create_model("small_deeplab", checkpoint=root / "host.pt")


def train_process(rank: int, world_size: int, root: Path, out: Path, init_file: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    train_on_cityscapes(config(), root / "cityscapes", out, make_model(root), objects=root / "bank", device=torch.device("cpu"),
                        context=Distributed(rank, world_size, rank), progress=False)
    end_process_group()


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


def test_two_gloo_processes_train_the_adapter_as_one(data, single, tmp_path):
    out = tmp_path / "two"
    mp.spawn(train_process, args=(2, data, out, tmp_path / "init"), nprocs=2)
    ours = states(out)["model"]
    reference = states(single)["model"]
    assert ours.keys() == reference.keys() and any(key.startswith("residual_adapter.") for key in ours)
    for key in reference:
        assert torch.allclose(ours[key].float(), reference[key].float(), rtol=1e-6, atol=1e-6), key


def test_the_trained_adapter_loads_back_around_the_unchanged_host(data, single):
    trained = create_model("small_deeplab", checkpoint=single / "checkpoint.pt")
    host = create_model("small_deeplab", checkpoint=data / "host.pt")
    assert isinstance(trained, ResidualAdapter) and trained.point == "bot_aspp"
    for key, value in host.state_dict().items():
        assert torch.equal(trained.host.state_dict()[key], value), key  # only the adapter trained
    assert trained.residual_adapter.project.weight.abs().sum() > 0  # it moved off its zero start
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        out1, out2 = trained(x)
        assert torch.equal(out1, host(x)) and not torch.equal(out2, out1)
        assert torch.equal(trained.scoring_logits(x), out2)  # scores come from the adapted output


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def test_cli_trains_an_adapter_at_a_chosen_point_and_refuses_a_wrong_one(data, tmp_path):
    base = ["train", "--cityscapes", data / "cityscapes", "--host", "small_deeplab", "--checkpoint", data / "host.pt",
            "--objects", data / "bank", "--set", "steps=1", "--set", "batch_size=2", "--set", "crop=[32,48]", "--workers", "0", "--quiet"]
    for recipe in ("rpl", "rpl+eel"):
        code, out, err = run(*base, "--recipe", recipe, "--set", "adapter_point=layer3", "--out", tmp_path / recipe)
        assert code == 0, err
        trained = create_model("small_deeplab", checkpoint=tmp_path / recipe / "checkpoint.pt")
        assert isinstance(trained, ResidualAdapter) and trained.point == "layer3"
    code, _, err = run(*base, "--recipe", "rpl+eel", "--set", "adapter_point=layer9", "--out", tmp_path / "bad")
    errors = [line for line in err.splitlines() if "error" in line]
    assert code != 0 and len(errors) == 1 and "no module 'layer9'" in errors[0]
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()


def test_unlabelled_images_train_on_the_hosts_own_predictions(data, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((data / "cityscapes" / "leftImg8bit").rglob("*.png"))[:4]:
        (images / path.name).write_bytes(path.read_bytes())
    base = ["train", "--recipe", "rpl+eel", "--images", images, "--host", "small_deeplab", "--checkpoint", data / "host.pt",
            "--objects", data / "bank", "--set", "steps=1", "--set", "batch_size=2", "--set", "crop=[32,48]", "--workers", "0",
            "--quiet", "--out", tmp_path / "run"]
    code, _, err = run(*base)
    assert code == 0, err
    host = create_model("small_deeplab", checkpoint=data / "host.pt")
    from diffeel.data.images import read_image, read_label

    for path in sorted(images.iterdir()):
        with torch.no_grad():
            expected = host(torch.from_numpy(read_image(path).copy()).permute(2, 0, 1)[None].float() / 255).argmax(1)[0]
        assert np.array_equal(read_label(tmp_path / "run" / "pseudo_labels" / f"{path.stem}.png"), expected.numpy())
    code, _, err = run(*base[:-1], tmp_path / "run", "--cityscapes", data / "cityscapes")
    assert code != 0 and "give one of --cityscapes, --camvid and --images" in err


def test_a_data_loading_workers_error_arrives_as_its_own_sentence(data, tmp_path):
    import shutil

    root = tmp_path / "cityscapes"
    shutil.copytree(data / "cityscapes", root)
    for image in (root / "leftImg8bit").rglob("*.png"):
        image.write_bytes(b"not a png")  # every frame unreadable: whichever a worker reads first fails
    code, _, err = run("train", "--recipe", "rpl", "--cityscapes", root, "--host", "small_deeplab", "--checkpoint", data / "host.pt",
                       "--objects", data / "bank", "--set", "steps=1", "--set", "batch_size=2", "--set", "crop=[32,48]",
                       "--workers", "2", "--quiet", "--out", tmp_path / "run")
    errors = [line for line in err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1 and "is not a readable image" in errors[0]
    assert "Caught" not in err and "Traceback" not in err and len(errors[0]) < 300
