import json

import numpy as np
import pytest

import benchmark_fixtures as fixtures
from diffeel.data.benchmarks import load_benchmark
from diffeel.data.images import read_image, read_label
from diffeel.errors import DiffeelError
from diffeel.labels import LabelMapping


def labels_of(frames):
    return {frame.id: frame.load_label() for frame in frames}


def assert_labels(frames, truth):
    loaded = labels_of(frames)
    assert sorted(loaded) == sorted(truth)
    for frame_id, label in truth.items():
        np.testing.assert_array_equal(loaded[frame_id], label)


def test_smiyc_anomaly_track_skips_colour_labels_and_accepts_parent_or_track_root(tmp_path, rng):
    truth = fixtures.smiyc(tmp_path, rng)
    for root in (tmp_path, tmp_path / "dataset_AnomalyTrack"):
        frames = load_benchmark("smiyc-anomaly", root)
        assert_labels(frames, truth)
        assert all(f.image_path.suffix == ".jpg" and f.load_image().shape == (16, 24, 3) for f in frames)


def test_smiyc_obstacle_scenes_and_weather_tags(tmp_path, rng):
    ids = ("snowstorm1_00_000", "driveway_00_001", "darkasphalt_00_002")
    fixtures.smiyc(tmp_path, rng, track="dataset_ObstacleTrack", ids=ids, suffix=".webp")
    frames = {f.id: f.metadata for f in load_benchmark("smiyc-obstacle", tmp_path)}
    assert frames["snowstorm1_00_000"] == {"scene": "snowstorm1", "weather": "snow"}
    assert frames["driveway_00_001"] == {"scene": "driveway", "weather": "night"}
    assert frames["darkasphalt_00_002"]["weather"] == "clear"


def test_fishyscapes_laf_labels_alone_suffice(tmp_path, rng):
    truth = fixtures.fishyscapes_laf(tmp_path, rng)
    frames = load_benchmark("fs-laf", tmp_path)
    assert_labels(frames, truth)
    assert all(f.image_path is None for f in frames)
    with pytest.raises(DiffeelError, match="has no image"):
        frames[0].load_image()


def test_fishyscapes_static_applies_the_overlay_to_the_cityscapes_image(tmp_path, rng):
    cityscapes = tmp_path / "cityscapes"
    truth = fixtures.fishyscapes_static(tmp_path / "static", rng, cityscapes=cityscapes)
    frames = load_benchmark("fs-static", tmp_path / "static", images=cityscapes)
    assert_labels(frames, truth)
    frame = frames[0]
    image = frame.load_image()
    original = read_image(frame.image_path)
    anomaly = truth[frame.id] == 1
    assert (image[anomaly] == 255).all()  # 300 added, clipped
    np.testing.assert_array_equal(image[~anomaly], original[~anomaly])


def test_road_anomaly_maps_two_to_anomaly(tmp_path, rng):
    truth = fixtures.road_anomaly(tmp_path, rng)
    assert_labels(load_benchmark("road-anomaly", tmp_path), truth)


def test_lost_and_found_maps_void_road_and_obstacles(tmp_path, rng):
    truth = fixtures.lost_and_found(tmp_path, rng)
    frames = load_benchmark("laf", tmp_path)
    assert_labels(frames, truth)
    assert {f.metadata["scene"] for f in frames} == {"02_Hanns_Klemm_Str_44", "04_Maurener_Weg_8"}


@pytest.mark.parametrize("manifest", ["csv", "json"])
def test_comsamy_manifest_metadata(tmp_path, rng, manifest):
    truth = fixtures.comsamy(tmp_path, rng, manifest=manifest)
    frames = load_benchmark("comsamy", tmp_path)
    assert_labels(frames, truth)
    first = frames[0].metadata
    assert first["weather"] == "clear" and first["landform"] == "desert" and first["anomalies"] == ["cow", "tyre"]


def test_comsamy_rejects_bad_weather_and_unlisted_labels(tmp_path, rng):
    fixtures.comsamy(tmp_path, rng)
    text = (tmp_path / "manifest.csv").read_text()
    (tmp_path / "manifest.csv").write_text(text.replace(",fog,", ",smog,"))
    with pytest.raises(DiffeelError, match="weather 'smog'"):
        load_benchmark("comsamy", tmp_path)
    (tmp_path / "manifest.csv").write_text("\n".join(text.splitlines()[:-1]) + "\n")
    with pytest.raises(DiffeelError, match=r"label scene003.png is not in the manifest"):
        load_benchmark("comsamy", tmp_path)


def test_folder_benchmark_matches_stems_and_decodes_by_content(tmp_path, rng):
    truth = {}
    for index in range(3):
        stem = f"frame{index}"
        # a JPEG behind a .png name, as in some public validation sets
        fixtures.write_image(tmp_path / "images" / f"{stem}.png", rng, image_format="JPEG")
        stored = fixtures.random_eval_label(rng, anomaly_value=2, void=False)
        fixtures.write_png(tmp_path / "labels_masks" / f"{stem}.png", stored)
        truth[stem] = (stored == 2).astype(np.uint8)
    frames = load_benchmark("folder", tmp_path, label_map=LabelMapping.parse("2:1"))
    assert_labels(frames, truth)
    assert frames[0].load_image().shape == (16, 24, 3)
    with pytest.raises(DiffeelError, match=r"no mapping for them: 2"):
        load_benchmark("folder", tmp_path)[0].load_label()


def test_layout_errors_name_the_first_culprit(tmp_path, rng):
    fixtures.smiyc(tmp_path, rng)
    (tmp_path / "dataset_AnomalyTrack" / "images" / "validation0001.jpg").unlink()
    with pytest.raises(DiffeelError, match=r"validation0001_labels_semantic.png has no image validation0001"):
        load_benchmark("smiyc-anomaly", tmp_path)
    with pytest.raises(DiffeelError, match="unknown benchmark"):
        load_benchmark("cityscapes-ood", tmp_path)
    with pytest.raises(DiffeelError, match="does not exist"):
        load_benchmark("road-anomaly", tmp_path / "nowhere")
    with pytest.raises(DiffeelError, match="no labelled frames"):
        (tmp_path / "ra" / "frames").mkdir(parents=True)
        load_benchmark("road-anomaly", tmp_path / "ra")


def test_corrupt_and_colour_labels_are_clear_errors(tmp_path, rng):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DiffeelError, match="not a readable image"):
        read_label(tmp_path / "broken.png")
    fixtures.write_image(tmp_path / "colour.png", rng)
    with pytest.raises(DiffeelError, match="not a single-channel label map"):
        read_label(tmp_path / "colour.png")


def test_label_mapping_parsing_and_application():
    mapping = LabelMapping.parse("2:1, 0:0, *:255")
    np.testing.assert_array_equal(mapping.apply(np.array([0, 2, 7, 1], dtype=np.uint8)), [0, 1, 255, 255])
    identity = LabelMapping()
    np.testing.assert_array_equal(identity.apply(np.array([0, 1, 255])), [0, 1, 255])
    wide = LabelMapping.parse("0:255,1:0,*:1")
    np.testing.assert_array_equal(wide.apply(np.array([0, 1, 2, 300], dtype=np.int32)), [255, 0, 1, 1])
    for bad in ("2-1", "x:1", "2:7"):
        with pytest.raises(ValueError):
            LabelMapping.parse(bad)
    json.dumps(mapping.mapping)  # plain data, reportable
