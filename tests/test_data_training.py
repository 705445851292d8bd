"""Training data on disk: Cityscapes frames and COCO outliers (Meta-OoD's selection), on tiny layouts."""

import json

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from diffeel.data.cityscapes import CityscapesFrame, list_cityscapes, read_cityscapes_frame
from diffeel.synth.coco import COCO_CITYSCAPES_OVERLAP, CocoOutliers
from diffeel.data.images import read_image
from diffeel.errors import DiffeelError
from diffeel.synth.bank import BankObject

# ---- Cityscapes ---------------------------------------------------------------------------------

H, W = 8, 12
# Cityscapes labelIds → train ids, written out by hand from the official table (not from diffeel).
LABEL_TO_TRAIN = {0: 255, 1: 255, 7: 0, 8: 1, 24: 11, 26: 13, 33: 18, 34: 255}


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def cityscapes_tree(root, rng):
    """Two cities, three frames; ``bochum_000000_000042`` has only a labelIds file."""
    truth = {}
    for city, frame_id in (("bochum", "bochum_000000_000042"), ("aachen", "aachen_000001_000019"),
                           ("aachen", "aachen_000000_000019")):
        rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        _png(root / "leftImg8bit" / "train" / city / f"{frame_id}_leftImg8bit.png", rgb)
        labels = root / "gtFine" / "train" / city
        if city == "bochum":
            label_ids = rng.choice(list(LABEL_TO_TRAIN), (H, W)).astype(np.uint8)
            _png(labels / f"{frame_id}_gtFine_labelIds.png", label_ids)
            train_ids = np.vectorize(LABEL_TO_TRAIN.get)(label_ids).astype(np.uint8)
        else:
            train_ids = rng.choice([*range(19), 255], (H, W)).astype(np.uint8)
            _png(labels / f"{frame_id}_gtFine_labelTrainIds.png", train_ids)
            # The labelIds beside it must be ignored: all zeros would read as void everywhere.
            _png(labels / f"{frame_id}_gtFine_labelIds.png", np.zeros((H, W), np.uint8))
        truth[frame_id] = (rgb, train_ids)
    (root / "leftImg8bit" / "val").mkdir()
    return truth


def test_cityscapes_frames_are_sorted_and_prefer_train_ids(tmp_path, rng):
    truth = cityscapes_tree(tmp_path, rng)
    frames = list_cityscapes(tmp_path)
    assert [f.id for f in frames] == ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000042"]
    kinds = {f.id: f.label_kind for f in frames}
    assert kinds == {"aachen_000000_000019": "train_ids", "aachen_000001_000019": "train_ids",
                     "bochum_000000_000042": "label_ids"}
    assert all(f.label_path.name.endswith("_labelTrainIds.png") for f in frames if f.label_kind == "train_ids")
    for frame in frames:
        rgb, train_ids = read_cityscapes_frame(frame)
        assert rgb.dtype == np.uint8 and train_ids.dtype == np.uint8 and train_ids.shape == (H, W)
        np.testing.assert_array_equal(rgb, truth[frame.id][0])
        np.testing.assert_array_equal(train_ids, truth[frame.id][1])


def test_cityscapes_label_ids_are_converted_to_train_ids(tmp_path):
    label_ids = np.array([[7, 26, 0, 33], [8, 24, 1, 34]], np.uint8)
    _png(tmp_path / "leftImg8bit/train/ulm/ulm_000000_000001_leftImg8bit.png", np.zeros((2, 4, 3), np.uint8))
    _png(tmp_path / "gtFine/train/ulm/ulm_000000_000001_gtFine_labelIds.png", label_ids)
    [frame] = list_cityscapes(tmp_path)
    _, train_ids = read_cityscapes_frame(frame)
    np.testing.assert_array_equal(train_ids, [[0, 13, 255, 18], [1, 11, 255, 255]])


def test_cityscapes_unknown_train_ids_are_named(tmp_path, rng):
    cityscapes_tree(tmp_path, rng)
    frame = list_cityscapes(tmp_path)[0]
    bad = np.zeros((H, W), np.uint8)
    bad[0, 0], bad[1, 1], bad[2, 2] = 19, 200, 255
    _png(frame.label_path, bad)
    with pytest.raises(DiffeelError, match=r"contains train ids 19, 200, outside 0\.\.18") as error:
        read_cityscapes_frame(frame)
    assert str(frame.label_path) in str(error.value)


def test_cityscapes_image_and_label_sizes_must_agree(tmp_path, rng):
    cityscapes_tree(tmp_path, rng)
    frame = list_cityscapes(tmp_path)[0]
    _png(frame.label_path, np.zeros((H, W + 1), np.uint8))
    with pytest.raises(DiffeelError, match=f"is {W}x{H} but its label .* is {W + 1}x{H}"):
        read_cityscapes_frame(frame)


def test_cityscapes_layout_errors(tmp_path, rng):
    with pytest.raises(DiffeelError, match="Cityscapes root .* does not exist"):
        list_cityscapes(tmp_path / "nowhere")
    cityscapes_tree(tmp_path, rng)
    with pytest.raises(DiffeelError, match=r"leftImg8bit/test does not exist \(splits under .*: train, val\)"):
        list_cityscapes(tmp_path, "test")
    with pytest.raises(DiffeelError, match=r"gtFine/val does not exist \(splits under .*: train\)"):
        list_cityscapes(tmp_path, "val")
    (tmp_path / "gtFine" / "val").mkdir()
    with pytest.raises(DiffeelError, match="no Cityscapes frames found under .*leftImg8bit/val"):
        list_cityscapes(tmp_path, "val")
    for path in (tmp_path / "gtFine/train/aachen").glob("aachen_000001_000019_*"):
        path.unlink()
    with pytest.raises(DiffeelError, match="frame aachen_000001_000019 has no label: neither .*"
                                           "aachen_000001_000019_gtFine_labelTrainIds.png nor"):
        list_cityscapes(tmp_path)


def test_cityscapes_frame_rejects_an_unknown_label_kind(tmp_path):
    with pytest.raises(DiffeelError, match="label_kind must be one of"):
        CityscapesFrame("a_0_0", tmp_path / "a.png", tmp_path / "b.png", "colour")


# ---- COCO ---------------------------------------------------------------------------------------

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 7, "name": "train"}, {"id": 16, "name": "bird"},
              {"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}, {"id": 20, "name": "sheep"},
              {"id": 21, "name": "cow"}]


def box(x0, y0, x1, y1, height, width):
    """A numpy-filled rectangle, columns x0..x1-1 and rows y0..y1-1."""
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def annotation(number, image_id, category_id, segmentation, area, crowd=0):
    return {"id": number, "image_id": image_id, "category_id": category_id, "segmentation": segmentation,
            "area": area, "iscrowd": crowd, "bbox": [0, 0, 1, 1]}


def coco_tree(root, rng):
    """A COCO layout whose selection is known: returns the full-image union mask of each kept image."""
    h10, w10 = 480, 512
    cow = box(300, 200, 350, 300, h10, w10)
    rle = mask_utils.encode(np.asfortranarray(cow.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    # An uncompressed (crowd) RLE written by hand: column-major runs, zeros first (columns 400..409).
    crowd = {"size": [h10, w10], "counts": [400 * h10, 10 * h10, (w10 - 410) * h10]}
    images = [
        {"id": 10, "file_name": "000000000010.jpg", "height": h10, "width": w10},
        {"id": 20, "file_name": "000000000020.jpg", "height": 480, "width": 480},  # has a person
        {"id": 30, "file_name": "000000000030.jpg", "height": 480, "width": 480},  # a crowd of persons
        {"id": 40, "file_name": "000000000040.jpg", "height": 479, "width": 600},  # too small
        {"id": 50, "file_name": "000000000050.jpg", "height": 480, "width": 640},  # no annotation
        {"id": 60, "file_name": "000000000060.png", "height": 500, "width": 480},  # one tiny instance
        {"id": 70, "file_name": "000000000070.jpg", "height": 480, "width": 600},  # a train (not excluded)
    ]
    annotations = [
        annotation(1, 10, 18, polygon(100, 50, 200, 150), 10000.0),
        annotation(2, 10, 21, rle, 5000.0),
        annotation(3, 10, 20, crowd, 4800.0, crowd=1),
        annotation(4, 10, 16, polygon(10, 10, 15, 15), 25.0),
        annotation(5, 20, 18, polygon(0, 0, 50, 50), 2500.0),
        annotation(6, 20, 1, polygon(100, 100, 150, 200), 5000.0),
        annotation(7, 30, 17, polygon(0, 0, 60, 60), 3600.0),
        annotation(8, 30, 1, {"size": [480, 480], "counts": [0, 480 * 480]}, 230400.0, crowd=1),
        annotation(9, 40, 18, polygon(0, 0, 100, 100), 10000.0),
        annotation(10, 60, 16, polygon(200, 300, 205, 305), 25.0),
        annotation(11, 70, 7, polygon(20, 30, 220, 130), 20000.0),
    ]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    folder = root / "train2017"
    folder.mkdir()
    for image in images:
        if image["id"] in (10, 60, 70):
            rgb = rng.integers(0, 256, (image["height"], image["width"], 3), dtype=np.uint8)
            Image.fromarray(rgb).save(folder / image["file_name"])
    big = box(100, 50, 200, 150, h10, w10) | cow | box(400, 0, 410, h10, h10, w10)
    return {
        "000000000010.jpg": (big | box(10, 10, 15, 15, h10, w10), big, "dog"),
        "000000000060.png": (box(200, 300, 205, 305, 500, 480), None, "bird"),
        "000000000070.jpg": (box(20, 30, 220, 130, 480, 600), box(20, 30, 220, 130, 480, 600), "train"),
    }


def crop(array, mask):
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return array[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def test_meta_ood_excluded_categories():
    # person, bicycle, car, motorcycle, bus, truck, traffic light, stop sign; train (7) is kept.
    assert COCO_CITYSCAPES_OVERLAP == (1, 2, 3, 4, 6, 8, 10, 13)


def test_coco_selection_follows_meta_ood(tmp_path, rng, capsys):
    truth = coco_tree(tmp_path, rng)
    outliers = CocoOutliers(tmp_path)
    assert capsys.readouterr().out == ""  # pycocotools' progress lines are swallowed
    assert outliers.file_names == ["000000000010.jpg", "000000000060.png", "000000000070.jpg"]
    assert len(outliers) == 3
    for index, name in enumerate(outliers.file_names):
        union, _, kind = truth[name]
        np.testing.assert_array_equal(outliers.mask(index), union)
        item = outliers[index]
        assert isinstance(item, BankObject)
        assert (item.kind, item.source, item.height_range) == (kind, name, (0.3, 2.0))
        np.testing.assert_array_equal(item.mask, crop(union, union))
        np.testing.assert_array_equal(item.rgb, crop(read_image(tmp_path / "train2017" / name), union))


def test_coco_instance_area_threshold_drops_small_instances_and_emptied_images(tmp_path, rng):
    truth = coco_tree(tmp_path, rng)
    outliers = CocoOutliers(tmp_path, min_instance_area=50, height_range=(0.5, 1.0))
    assert outliers.file_names == ["000000000010.jpg", "000000000070.jpg"]
    np.testing.assert_array_equal(outliers.mask(0), truth["000000000010.jpg"][1])
    assert outliers[0].height_range == (0.5, 1.0)


def test_coco_image_size_and_exclusion_are_settable(tmp_path, rng):
    coco_tree(tmp_path, rng)
    assert CocoOutliers(tmp_path, min_image_size=0).file_names == [
        "000000000010.jpg", "000000000040.jpg", "000000000060.png", "000000000070.jpg"]
    with pytest.raises(DiffeelError, match="left after filtering"):  # every kept image has a 480 px side
        CocoOutliers(tmp_path, min_image_size=481)
    # Excluding only trains lets the person images in and drops the train image.
    assert CocoOutliers(tmp_path, exclude=(7,)).file_names == [
        "000000000010.jpg", "000000000020.jpg", "000000000030.jpg", "000000000060.png"]


def test_coco_sample_is_deterministic_for_a_seed(tmp_path, rng):
    coco_tree(tmp_path, rng)
    outliers = CocoOutliers(tmp_path)
    first, second = np.random.default_rng(3), np.random.default_rng(3)
    sequence = [outliers.sample(first).source for _ in range(12)]
    assert sequence == [outliers.sample(second).source for _ in range(12)]
    assert set(sequence) == set(outliers.file_names)


def many_images(root, count):
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": 480, "width": 480} for i in range(1, count + 1)]
    annotations = [annotation(i, i, 18, polygon(0, 0, 10, 10), 100.0) for i in range(1, count + 1)]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    (root / "train2017").mkdir()
    return [image["file_name"] for image in images]


def test_coco_limit_is_a_seeded_nested_subset(tmp_path):
    names = many_images(tmp_path, 40)
    five = CocoOutliers(tmp_path, limit=5, seed=1).file_names
    assert len(five) == 5 and set(five) <= set(names) and five == sorted(five)
    assert CocoOutliers(tmp_path, limit=5, seed=1).file_names == five
    assert CocoOutliers(tmp_path, limit=5, seed=2).file_names != five
    assert set(five) <= set(CocoOutliers(tmp_path, limit=10, seed=1).file_names)
    assert CocoOutliers(tmp_path, limit=100).file_names == names
    with pytest.raises(DiffeelError, match="limit must be a positive whole number"):
        CocoOutliers(tmp_path, limit=0)


def test_coco_proxy_set_is_redrawn_every_epoch(tmp_path):
    """RPL draws a new proxy set of its filtered COCO images every epoch: over 40 epochs of 5 of 40
    images, nearly every image is seen (1 - (35/40)^40 = 99.5 % expected), and each epoch's set is
    a function of (seed, epoch) alone."""
    names = many_images(tmp_path, 40)
    outliers = CocoOutliers(tmp_path, proxy_size=5, seed=3)
    assert len(outliers) == 40
    epochs = [outliers.for_epoch(epoch).file_names for epoch in range(40)]
    assert all(len(chosen) == 5 and len(set(chosen)) == 5 and set(chosen) <= set(names) for chosen in epochs)
    assert epochs[0] != epochs[1]
    assert CocoOutliers(tmp_path, proxy_size=5, seed=3).for_epoch(7).file_names == epochs[7]
    assert CocoOutliers(tmp_path, proxy_size=5, seed=4).for_epoch(7).file_names != epochs[7]
    assert len(set().union(*epochs)) >= 36
    assert len(CocoOutliers(tmp_path, proxy_size=40).for_epoch(3)) == 40  # a proxy as large as the set is the set
    half = CocoOutliers(tmp_path, pool=0.5, proxy_size=5, seed=3)
    assert len(half) == 20 and set(half.file_names) <= set(names)
    assert set(half.for_epoch(2).file_names) <= set(half.file_names)
    with pytest.raises(DiffeelError, match="proxy_size must be a positive whole number"):
        CocoOutliers(tmp_path, proxy_size=0)
    with pytest.raises(DiffeelError, match="pool must be a share"):
        CocoOutliers(tmp_path, pool=0)


def write_json(root, data):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / "instances_train2017.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_coco_missing_root_and_annotations(tmp_path):
    with pytest.raises(DiffeelError, match="COCO root .*nowhere does not exist"):
        CocoOutliers(tmp_path / "nowhere")
    with pytest.raises(DiffeelError, match=r"annotations/instances_val2017\.json do not exist"):
        CocoOutliers(tmp_path, split="val2017")


def test_coco_unreadable_json(tmp_path):
    write_json(tmp_path, '{"images": [')
    with pytest.raises(DiffeelError, match=r"instances_train2017\.json are not valid JSON \(line 1"):
        CocoOutliers(tmp_path)
    write_json(tmp_path, "[1, 2]")
    with pytest.raises(DiffeelError, match="hold a list, not an object"):
        CocoOutliers(tmp_path)


@pytest.mark.parametrize("field", ["images", "annotations", "categories"])
def test_coco_json_lacking_a_field(tmp_path, field):
    data = {"images": [], "annotations": [], "categories": []}
    del data[field]
    write_json(tmp_path, data)
    with pytest.raises(DiffeelError, match=f"lack the field '{field}'"):
        CocoOutliers(tmp_path)


@pytest.mark.parametrize("field", ["segmentation", "area", "image_id", "category_id"])
def test_coco_annotation_lacking_a_field(tmp_path, field):
    item = annotation(5, 1, 18, polygon(0, 0, 10, 10), 100.0)
    del item[field]
    write_json(tmp_path, {"images": [{"id": 1, "file_name": "a.jpg", "height": 480, "width": 480}],
                          "annotations": [item], "categories": CATEGORIES})
    with pytest.raises(DiffeelError, match=rf"annotation 1 \(id 5\) lacks the field '{field}'"):
        CocoOutliers(tmp_path)


def test_coco_nothing_left_names_the_thresholds(tmp_path, rng):
    coco_tree(tmp_path, rng)
    with pytest.raises(DiffeelError, match=r"no COCO image .* is left after filtering \(at least 5000 px .*"
                                           r"area >= 30000, no category among 1, 2, 3, 4, 6, 8, 10, 13\)"):
        CocoOutliers(tmp_path, min_image_size=5000, min_instance_area=30000)


def test_coco_missing_or_resized_image_is_named_when_drawn(tmp_path, rng):
    coco_tree(tmp_path, rng)
    outliers = CocoOutliers(tmp_path)  # the listing itself needs no pixels
    (tmp_path / "train2017" / "000000000070.jpg").unlink()
    with pytest.raises(DiffeelError, match=r"COCO image .*000000000070\.jpg listed in .* does not exist"):
        outliers[2]
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "train2017" / "000000000060.png")
    with pytest.raises(DiffeelError, match="is 20x10 but .* says 480x500"):
        outliers[1]


def test_coco_malformed_segmentation_is_named_when_drawn(tmp_path):
    write_json(tmp_path, {"images": [{"id": 1, "file_name": "a.jpg", "height": 480, "width": 480}],
                          "annotations": [annotation(5, 1, 18, [[1, 2, 3]], 100.0)], "categories": CATEGORIES})
    (tmp_path / "train2017").mkdir()
    Image.fromarray(np.zeros((480, 480, 3), np.uint8)).save(tmp_path / "train2017" / "a.jpg")
    with pytest.raises(DiffeelError, match="a segmentation of image 1 could not be decoded"):
        CocoOutliers(tmp_path)[0]


# ---------------------------------------------------------------------------------------------
# Mask2Former's data pipeline: multi-scale resize, SSD colour


def test_shortest_edge_sizes_follow_detectron2():
    from diffeel.models.mask2anomaly_inference import official_resize_shape as shortest_edge_size

    assert shortest_edge_size(1024, 2048, 512, 4096) == (512, 1024)
    assert shortest_edge_size(720, 1280, 2048, 4096) == (2048, 3641)  # 1280·2048/720 = 3640.9, rounded half up
    assert shortest_edge_size(1024, 2048, 2048, 4096) == (2048, 4096)
    assert shortest_edge_size(500, 3000, 1024, 4096) == (683, 4096)  # 6144 long: shrunk to 4096, 682.67 → 683
    assert shortest_edge_size(2048, 1024, 512, 4096) == (1024, 512)  # portrait


def test_mask2former_short_sides_are_its_config_list():
    from diffeel.train.recipes import MASK2FORMER_SHORT_SIDES, preset

    assert MASK2FORMER_SHORT_SIDES == [512, 614, 716, 819, 921, 1024, 1126, 1228, 1331, 1433, 1536, 1638, 1740, 1843, 1945, 2048]
    for recipe in ("m2a", "m2a+eel"):
        config = preset(recipe)
        assert config.resize_short_side == MASK2FORMER_SHORT_SIDES and config.resize_max_size == 4096
        assert config.photometric == "ssd" and config.decay_norm_and_embedding is False
    assert preset("rpl").photometric == "none" and preset("demo-closed").photometric == "jitter"
    assert preset("rpl", photometric=True).photometric == "jitter"  # configs saved when photometric was a switch
    with pytest.raises(DiffeelError, match="photometric must be one of"):
        preset("rpl", photometric="sepia")


def test_multi_scale_resize_draws_a_short_side_and_keeps_labels_nearest():
    from diffeel.train.data import resize_shortest_edge

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 80, 3), dtype=np.uint8)
    label = rng.choice(np.array([0, 1, 13, 254, 255], np.uint8), size=(40, 80))
    seen = set()
    for seed in range(30):
        resized, labels, scale = resize_shortest_edge(image, label, [20, 60, 100], 1000, np.random.default_rng(seed))
        assert resized.shape[:2] == labels.shape and labels.shape[0] in (20, 60, 100)
        assert labels.shape[1] == 2 * labels.shape[0] and scale == (labels.shape[0] / 40, labels.shape[1] / 80)
        assert set(np.unique(labels)) <= {0, 1, 13, 254, 255}
        seen.add(labels.shape[0])
    assert seen == {20, 60, 100}
    same, same_labels, _ = resize_shortest_edge(image, label, [40], 1000, rng)
    assert np.array_equal(same, image) and np.array_equal(same_labels, label)


def test_ssd_colour_steps_by_hand():
    from diffeel.train.data import SSDColour, draw_ssd_colour, ssd_colour

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    nothing = SSDColour(None, True, None, None, None)
    assert np.array_equal(ssd_colour(image, nothing), image)
    brighter = ssd_colour(image, SSDColour(20.7, True, None, None, None))
    assert np.array_equal(brighter, np.clip(image.astype(np.float32) + 20.7, 0, 255).astype(np.uint8))  # truncated, not rounded
    contrast = ssd_colour(image, SSDColour(None, True, 1.3, None, None))
    assert np.array_equal(contrast, np.clip(image.astype(np.float32) * 1.3, 0, 255).astype(np.uint8))
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) - 15) % 180
    assert np.array_equal(ssd_colour(image, SSDColour(None, True, None, None, -15)), cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))
    # the order: contrast before or after saturation (saturation of a clipped image differs)
    first, last = (ssd_colour(image, SSDColour(None, order, 1.5, 0.6, None)) for order in (True, False))
    assert not np.array_equal(first, last)
    draws = [draw_ssd_colour(np.random.default_rng(seed)) for seed in range(2000)]
    for field in ("brightness", "contrast", "saturation", "hue"):
        share = np.mean([getattr(d, field) is not None for d in draws])
        assert 0.45 < share < 0.55, field
    assert all(-32 <= d.brightness <= 32 for d in draws if d.brightness is not None)
    assert {d.hue for d in draws if d.hue is not None} == set(range(-18, 19))
