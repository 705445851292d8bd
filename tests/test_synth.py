"""Copy-paste anomaly synthesis: Eq. 1, the object bank, placement, illumination, the synthesizer."""

import csv
import itertools

import cv2
import numpy as np
import pytest
from PIL import Image

from diffeel.errors import DiffeelError
from diffeel.geometry import Camera
from diffeel.labels import ANOMALY_TRAIN_ID, TRAIN_ID, VOID
from diffeel.synth import (
    BankObject,
    CopyPasteSynthesizer,
    ObjectBank,
    Placement,
    find_placement,
    match_illumination,
    paste,
    resize_object,
)
from diffeel.world.make import write_objects

WIDTH, ROWS = 256, 128
CAMERA = Camera.for_size(WIDTH, ROWS)
HORIZON = CAMERA.horizon_row  # ≈ 53.4
ROAD, SIDEWALK, SKY, CAR = TRAIN_ID["road"], TRAIN_ID["sidewalk"], TRAIN_ID["sky"], TRAIN_ID["car"]


# ---------------------------------------------------------------- helpers

def random_frame(seed=0, rows=40, cols=50):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (rows, cols, 3), dtype=np.uint8)
    label = rng.choice(np.array([0, 1, 2, 8, 10, VOID], np.uint8), (rows, cols))
    return image, label


def random_object(seed=1, h=9, w=13):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.random((h, w)) < 0.6


def pad_to(array, offset, rows, cols):
    """Zero-pad ``array`` to ``rows × cols`` with its top-left corner at ``offset`` (clipping what is outside)."""
    h, w = array.shape[:2]
    top, left = offset
    extra = ((top + h, rows + h - top), (left + w, cols + w - left)) + ((0, 0),) * (array.ndim - 2)
    return np.pad(array, extra)[h:h + rows, w:w + cols]  # pad on a canvas one object larger each side, cut out


def scene_labels(road_rows=(60, ROWS), road_cols=(40, 216)):
    """Sky above the horizon, sidewalk elsewhere, a rectangle of road."""
    labels = np.full((ROWS, WIDTH), SIDEWALK, np.uint8)
    labels[: int(HORIZON)] = SKY
    labels[road_rows[0]:road_rows[1], road_cols[0]:road_cols[1]] = ROAD
    return labels


def textured_image(seed=3):
    rng = np.random.default_rng(seed)
    return rng.integers(60, 200, (ROWS, WIDTH, 3), dtype=np.uint8)


def solid_object(colour, kind, h=20, w=16, height_range=(0.8, 1.2)):
    return BankObject(np.full((h, w, 3), colour, np.uint8), np.ones((h, w), bool), kind, height_range, kind)


def write_bank(folder, objects):
    """objects: list of (file, kind, rgba array or None for a plain RGB file)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "objects.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["file", "kind", "family", "min_height_m", "max_height_m"])
        for file, kind, pixels in objects:
            writer.writerow([file, kind, "debris", 0.3, 0.6])
            if pixels is not None:
                Image.fromarray(pixels).save(folder / file)
    return folder


# ---------------------------------------------------------------- Eq. 1

@pytest.mark.parametrize("offset", [(5, 7), (0, 0), (-4, -6), (35, 44), (-8, 45), (31, 37), (40, 10), (-9, 0), (3, -13)])
def test_paste_is_eq1_pixel_by_pixel(offset):
    image, label = random_frame()
    rgb, mask = random_object()
    new_image, new_label = paste(image, label, rgb, mask, offset)

    rows, cols = label.shape
    pad_mask = pad_to(mask.astype(np.int64), offset, rows, cols)
    expected_image = (1 - pad_mask)[..., None] * image + pad_to(mask[..., None] * rgb.astype(np.int64), offset, rows, cols)
    expected_label = (1 - pad_mask) * label + pad_mask * ANOMALY_TRAIN_ID
    assert new_image.dtype == np.uint8 and new_label.dtype == np.uint8
    assert np.array_equal(new_image, expected_image)
    assert np.array_equal(new_label, expected_label)
    assert (new_label == ANOMALY_TRAIN_ID).sum() == pad_mask.sum()  # exactly the visible part of the mask


def test_paste_clips_an_object_hanging_over_the_bottom_right_corner():
    image, label = np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.uint8)
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    new_image, new_label = paste(image, label, rgb, np.ones((4, 5), bool), (8, 7))
    assert np.array_equal(new_image[8:, 7:], rgb[:2, :3])
    assert (new_label == ANOMALY_TRAIN_ID).sum() == 6 and (new_label[8:, 7:] == ANOMALY_TRAIN_ID).all()


def test_paste_leaves_its_inputs_alone():
    image, label = random_frame(4)
    rgb, mask = random_object(5)
    copies = [a.copy() for a in (image, label, rgb, mask)]
    new_image, new_label = paste(image, label, rgb, mask, (-2, 3))
    for original, copy in zip((image, label, rgb, mask), copies):
        assert np.array_equal(original, copy)
    assert not np.shares_memory(new_image, image) and not np.shares_memory(new_label, label)
    outside, _ = paste(image, label, rgb, mask, (100, 100))  # entirely outside: an unchanged copy
    assert np.array_equal(outside, image) and not np.shares_memory(outside, image)


def test_second_paste_covers_the_first_and_the_union_is_anomaly():
    image, label = random_frame(6)
    first_rgb, first_mask = np.full((12, 12, 3), 10, np.uint8), np.ones((12, 12), bool)
    second_rgb = np.full((10, 10, 3), 250, np.uint8)
    second_mask = np.zeros((10, 10), bool)
    second_mask[::2] = True  # striped, so parts of the first stay visible inside the second box
    image1, label1 = paste(image, label, first_rgb, first_mask, (5, 5))
    image2, label2 = paste(image1, label1, second_rgb, second_mask, (10, 12))

    first = pad_to(first_mask, (5, 5), *label.shape)
    second = pad_to(second_mask, (10, 12), *label.shape)
    assert first.sum() and second.sum() and (first & second).any() and (first & ~second).any()
    assert (image2[second] == 250).all()  # the later object wins where both masks are set
    assert (image2[first & ~second] == 10).all()
    assert np.array_equal(label2 == ANOMALY_TRAIN_ID, first | second)
    assert np.array_equal(image2[~(first | second)], image[~(first | second)])


def test_paste_rejects_malformed_input():
    image, label = random_frame()
    rgb, mask = random_object()
    with pytest.raises(DiffeelError, match="shape"):
        paste(image, label, rgb, mask[:, :-1], (0, 0))
    with pytest.raises(DiffeelError, match="offset"):
        paste(image, label, rgb, mask, (1.5, 2))
    with pytest.raises(DiffeelError, match="label"):
        paste(image, label[:-1], rgb, mask, (0, 0))


# ---------------------------------------------------------------- placement

def test_placement_stands_on_road_inside_the_image_at_perspective_height():
    labels = scene_labels(road_rows=(62, ROWS), road_cols=(90, 170))
    aspect, real_height = 1.3, 1.0
    for seed in range(40):
        p = find_placement(labels, aspect, real_height, CAMERA, np.random.default_rng(seed))
        assert p is not None
        assert 0 <= p.top and p.top + p.height <= ROWS and 0 <= p.left and p.left + p.width <= WIDTH
        assert p.foot_row == p.top + p.height - 1 and p.foot_row > HORIZON
        assert labels[p.foot_row, p.left + p.width // 2] == ROAD  # the contact point
        margin = int(np.floor(0.2 * p.width))
        assert (labels[p.foot_row, p.left + margin:p.left + p.width - margin] == ROAD).all()  # middle 60 % footprint
        assert abs(p.height - CAMERA.pixel_height(real_height, p.foot_row)) <= 1.0
        assert abs(p.width - aspect * p.height) <= 0.5 + 1e-9


def test_farther_objects_are_smaller():
    labels = scene_labels()
    placements = [find_placement(labels, 1.0, 0.8, CAMERA, np.random.default_rng(seed)) for seed in range(60)]
    placements = sorted(placements, key=lambda p: p.foot_row)
    assert placements[-1].foot_row - placements[0].foot_row > 30  # the draw spans near and far
    for far, near in itertools.pairwise(placements):
        assert far.height <= near.height
        if near.foot_row - far.foot_row >= 3:
            assert far.height < near.height


def test_no_placement_without_usable_road():
    rng = np.random.default_rng(0)
    assert find_placement(scene_labels(road_rows=(0, 0)), 1.0, 0.5, CAMERA, rng) is None  # no road at all
    assert find_placement(scene_labels(road_rows=(0, 50)), 1.0, 0.5, CAMERA, rng) is None  # road only above horizon
    narrow = scene_labels(road_cols=(120, 122))  # two columns: no footprint of a wide object fits
    assert find_placement(narrow, 2.0, 0.5, CAMERA, rng) is None
    assert find_placement(narrow, 2.0, 0.5, CAMERA, rng, drivable=(ROAD, SIDEWALK)) is not None
    huge = find_placement(scene_labels(), 1.0, 40.0, CAMERA, rng)  # taller than the image wherever it stands
    assert huge is None


def test_placement_never_covers_a_car_unless_allowed():
    labels = scene_labels()
    labels[75:100, 60:200] = CAR
    covered = []
    for seed in range(30):
        p = find_placement(labels, 1.0, 1.0, CAMERA, np.random.default_rng(seed))
        assert p is not None and not (labels[p.slices] == CAR).any()
        q = find_placement(labels, 1.0, 1.0, CAMERA, np.random.default_rng(seed), avoid=())
        covered.append((labels[q.slices] == CAR).any())
    assert any(covered)


def test_placement_rejects_a_camera_for_another_size():
    with pytest.raises(DiffeelError, match="Camera.for_size"):
        find_placement(scene_labels(), 1.0, 1.0, Camera(), np.random.default_rng(0))


# ---------------------------------------------------------------- illumination

def lab_l(rgb):
    return cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)[..., 0]


def test_illumination_moves_the_object_toward_its_ring_not_the_whole_image():
    image = np.full((ROWS, WIDTH, 3), 235, np.uint8)  # bright image ...
    placement = Placement(top=60, left=100, height=20, width=20, foot_row=79)
    image[45:95, 85:135] = (60, 55, 50)  # ... but a dark surrounding of the box
    rng = np.random.default_rng(0)
    rgb = np.clip(rng.normal((200, 120, 90), 12, (20, 20, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[2:, 3:17] = True

    ring_l = lab_l(image[45:95, 85:135]).mean()
    before = lab_l(rgb)[mask].mean()
    partial = match_illumination(rgb, mask, image, placement)
    full = match_illumination(rgb, mask, image, placement, strength=1.0)
    after, after_full = lab_l(partial)[mask].mean(), lab_l(full)[mask].mean()
    assert abs(after - ring_l) < 0.6 * abs(before - ring_l) and abs(after - ring_l) > 0.2 * abs(before - ring_l)
    assert abs(after_full - ring_l) < 1.5
    assert np.array_equal(partial[~mask], rgb[~mask])  # only object pixels change
    assert np.array_equal(match_illumination(rgb, mask, image, placement, strength=0.0), rgb)
    # object texture survives: pixel brightness order is kept
    assert np.corrcoef(lab_l(rgb)[mask], lab_l(partial)[mask])[0, 1] > 0.95


def test_resize_does_not_darken_the_rim_with_pixels_outside_the_mask():
    rgb = np.zeros((40, 40, 3), np.uint8)
    mask = np.zeros((40, 40), bool)
    cv2.circle(rgb, (20, 20), 15, (255, 255, 255), -1)
    cv2.circle(mask.view(np.uint8), (20, 20), 15, 1, -1)
    small_rgb, small_mask = resize_object(rgb, mask, 9, 7)
    assert small_rgb.shape == (9, 7, 3) and small_mask.shape == (9, 7) and small_mask.dtype == bool
    assert small_mask.any() and (small_rgb[small_mask] >= 250).all()


# ---------------------------------------------------------------- synthesizer

COLOURS = {"red": (250, 0, 0), "green": (0, 250, 0), "blue": (0, 0, 250)}


def colour_bank():
    return ObjectBank([solid_object(colour, kind) for kind, colour in COLOURS.items()])


def test_synthesizer_pastes_objects_and_changes_nothing_else():
    image, labels = textured_image(), scene_labels()
    synth = CopyPasteSynthesizer(colour_bank(), objects_per_image=3)
    result = synth.synthesize(image, labels, np.random.default_rng(7))
    new_image, new_labels = result.image, result.labels
    pasted = new_labels == ANOMALY_TRAIN_ID
    assert len(result.objects) >= 1 and pasted.any()
    assert set(np.unique(new_labels)) <= set(np.unique(labels)) | {ANOMALY_TRAIN_ID}
    assert np.array_equal(new_image[~pasted], image[~pasted])
    assert np.array_equal(new_labels[~pasted], labels[~pasted])
    for obj in result.objects:  # each stands on the road
        assert labels[obj.placement.foot_row, obj.placement.foot_col] == ROAD
        assert new_labels[obj.placement.foot_row, obj.placement.foot_col] == ANOMALY_TRAIN_ID


def test_synthesizer_is_deterministic_for_a_seed():
    image, labels = textured_image(), scene_labels()
    synth = CopyPasteSynthesizer(colour_bank(), objects_per_image=(1, 3))
    first = synth(image, labels, np.random.default_rng(11))
    again = synth(image, labels, np.random.default_rng(11))
    other = synth(image, labels, np.random.default_rng(12))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


def test_nearer_objects_cover_farther_ones():
    image, labels = textured_image(), scene_labels(road_cols=(110, 150))  # narrow road: boxes overlap
    synth = CopyPasteSynthesizer(colour_bank(), objects_per_image=6, harmonize=False)
    overlaps = 0
    for seed in range(8):
        result = synth.synthesize(image, labels, np.random.default_rng(seed))
        owner = np.full(labels.shape, -1)
        by_row = sorted(result.objects, key=lambda o: o.placement.foot_row)
        for index, obj in enumerate(by_row):
            overlaps += (owner[obj.placement.slices] >= 0).sum()
            owner[obj.placement.slices] = index  # solid rectangles: the nearest (last) box owns a pixel
        for index, obj in enumerate(by_row):
            assert (result.image[owner == index] == COLOURS[obj.kind]).all()
        assert np.array_equal(owner >= 0, result.labels == ANOMALY_TRAIN_ID)
    assert overlaps > 0


def test_synthesizer_skips_objects_without_a_place():
    image, labels = textured_image(), scene_labels(road_rows=(0, 0))
    new_image, new_labels = CopyPasteSynthesizer(colour_bank(), objects_per_image=3)(image, labels, np.random.default_rng(0))
    assert np.array_equal(new_image, image) and np.array_equal(new_labels, labels)


def test_synthesizer_harmonizes_pasted_objects_toward_the_road():
    image = np.full((ROWS, WIDTH, 3), 40, np.uint8)  # a dark scene
    labels = scene_labels()
    white = ObjectBank([solid_object((250, 250, 250), "white")])
    raw, raw_labels = CopyPasteSynthesizer(white, harmonize=False)(image, labels, np.random.default_rng(3))
    matched, matched_labels = CopyPasteSynthesizer(white)(image, labels, np.random.default_rng(3))
    assert np.array_equal(raw_labels, matched_labels)  # same placement; only the blender differs
    pasted = raw_labels == ANOMALY_TRAIN_ID
    assert (raw[pasted] == 250).all() and 40 < matched[pasted].mean() < 200


def test_bank_from_written_world_objects_feeds_the_synthesizer(tmp_path):
    count = write_objects(tmp_path, 0)
    bank = ObjectBank.from_folder(tmp_path / "train" / "objects")
    assert len(bank) == count > 0
    lazy = ObjectBank.from_folder(tmp_path / "train" / "objects", preload=False)
    for index in (0, count - 1):
        obj = bank[index]
        assert obj.mask.dtype == bool and obj.rgb.shape[:2] == obj.mask.shape
        assert obj.mask[0].any() and obj.mask[-1].any() and obj.mask[:, 0].any() and obj.mask[:, -1].any()  # tight
        assert 0 < obj.height_range[0] <= obj.height_range[1]
        assert np.array_equal(lazy[index].rgb, obj.rgb) and np.array_equal(lazy[index].mask, obj.mask)
    assert bank.sample(np.random.default_rng(5)).source == bank.sample(np.random.default_rng(5)).source
    _new_image, new_labels = CopyPasteSynthesizer(bank, 2)(textured_image(), scene_labels(), np.random.default_rng(1))
    assert (new_labels == ANOMALY_TRAIN_ID).any()


# ---------------------------------------------------------------- bank

def test_bank_mask_is_alpha_above_127_cropped_tightly(tmp_path):
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., :3] = 90
    rgba[5:15, 10:30, 3] = 200
    rgba[20:25, 0:40, 3] = 100  # translucent fringe: not part of the object
    bank = ObjectBank.from_folder(write_bank(tmp_path / "bank", [("a.png", "box", rgba)]))
    obj = bank.sample(np.random.default_rng(0))
    assert obj.mask.shape == (10, 20) and obj.mask.all() and obj.kind == "box" and obj.height_range == (0.3, 0.6)


def test_bank_errors_are_clear(tmp_path):
    rgba = np.full((8, 8, 4), 255, np.uint8)
    with pytest.raises(DiffeelError, match="does not exist"):
        ObjectBank.from_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffeelError, match="objects.csv"):
        ObjectBank.from_folder(tmp_path / "empty")
    with pytest.raises(DiffeelError, match="gone.png does not exist"):
        ObjectBank.from_folder(write_bank(tmp_path / "missing", [("a.png", "box", rgba), ("gone.png", "box", None)]))
    with pytest.raises(DiffeelError, match="no alpha"):
        ObjectBank.from_folder(write_bank(tmp_path / "rgb", [("a.png", "box", rgba[..., :3].copy())]))
    with pytest.raises(DiffeelError, match="no alpha"):
        ObjectBank.from_folder(write_bank(tmp_path / "rgb_lazy", [("a.png", "box", rgba[..., :3].copy())]), preload=False)
    with pytest.raises(DiffeelError, match="no opaque"):
        ObjectBank.from_folder(write_bank(tmp_path / "clear", [("a.png", "box", np.zeros((8, 8, 4), np.uint8))]))
    with pytest.raises(DiffeelError, match="lists no objects"):
        ObjectBank.from_folder(write_bank(tmp_path / "none", []))
    with pytest.raises(DiffeelError, match="at least one"):
        ObjectBank([])
    with pytest.raises(DiffeelError, match="height range"):
        solid_object((1, 2, 3), "x", height_range=(0.5, 0.2))


# ---------------------------------------------------------------------------------------------
# the placement search


def two_tone_road(rows=120, cols=240):
    """Road over the bottom half: its left half red like the object, its right half blue."""
    labels = np.full((rows, cols), TRAIN_ID["sky"], np.uint8)
    labels[rows // 2:] = TRAIN_ID["road"]
    image = np.zeros((rows, cols, 3), np.uint8)
    image[:, : cols // 2] = (200, 40, 40)
    image[:, cols // 2:] = (40, 40, 200)
    return image, labels


def test_placement_search_prefers_where_the_object_already_fits():
    """The best-scored placement lands where the surroundings share the object's colours; the first
    valid candidate lands anywhere on the road."""
    image, labels = two_tone_road()
    bank = ObjectBank([solid_object((190, 50, 50), "red", h=30, w=20, height_range=(1.0, 1.0))])
    sides = {}
    for search in ("first", "best"):
        synthesizer = CopyPasteSynthesizer(bank, harmonize=False, search=search)
        left = 0
        for seed in range(40):
            result = synthesizer.synthesize(image, labels, np.random.default_rng(seed))
            placement = result.objects[0].placement
            left += placement.left + placement.width // 2 < labels.shape[1] // 2
        sides[search] = left / 40
    assert sides["best"] >= 0.95 and 0.2 < sides["first"] < 0.8


def test_placement_score_counts_road_support_and_appearance():
    from diffeel.synth.illumination import to_lab
    from diffeel.synth.synthesizer import placement_scorer

    image, labels = two_tone_road()
    labels[90:, 100:140] = TRAIN_ID["sidewalk"]  # a patch of pavement under the middle of the road
    red = to_lab(np.full((4, 4, 3), (200, 40, 40), np.uint8)).reshape(-1, 3)
    score = placement_scorer(labels, to_lab(image), red)
    on_road = Placement(60, 20, 30, 20, 89)  # band: rows 89..95 (a quarter of the 30-row box), all road
    over_pavement = Placement(60, 110, 30, 20, 89)  # the same band over the pavement from row 90: 1 of 7 rows road
    support_only = placement_scorer(labels, np.zeros_like(to_lab(image)), np.zeros((4, 3), np.float32))
    assert support_only(on_road) == 1.0 and support_only(over_pavement) == pytest.approx(1 / 7)
    assert score(on_road) > score(over_pavement)
    with pytest.raises(DiffeelError, match="search must be"):
        CopyPasteSynthesizer(ObjectBank([solid_object((1, 2, 3), "x")]), search="random")
