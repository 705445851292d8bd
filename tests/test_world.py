import numpy as np
import pytest

from diffeel.geometry import SKY_DEPTH, Camera
from diffeel.labels import ANOMALY, TRAIN_ID, VOID
from diffeel.world import shapes
from diffeel.world.make import ANIMALS, DEBRIS, evaluation_label, plan_test, plan_train
from diffeel.world.scene import LANDFORMS, MIN_ANOMALY_DEPTH, _Canvas, render_scene

SIZE = (256, 128)


def test_camera_matches_cityscapes_geometry():
    camera = Camera()
    assert camera.horizon_row == pytest.approx(427.0, abs=1.0)
    scaled = Camera.for_size(512, 256)
    assert scaled.horizon_row == pytest.approx(camera.horizon_row / 4, rel=1e-9)
    row = scaled.row_at_depth(20.0)
    assert scaled.ground_depth_at_row(row) == pytest.approx(20.0)
    # an object 1.5 m tall at 20 m: h·(v_b - v_h)/cam_height == fy·h/d
    assert scaled.pixel_height(1.5, row) == pytest.approx(scaled.fy * 1.5 / 20.0)


def test_scene_labels_depth_and_instances_agree():
    scene = render_scene("urban", 3, SIZE, anomalies=("cow", "dog", "sheep"), anomaly_on_road=(True, True, False))
    assert scene.image.shape == (128, 256, 3) and scene.image.dtype == np.uint8
    sky = scene.train_ids == TRAIN_ID["sky"]
    assert sky.any() and np.all(scene.depth[sky] == SKY_DEPTH)
    road = scene.train_ids == TRAIN_ID["road"]
    camera = Camera.for_size(*SIZE)
    rows = np.nonzero(road)[0]
    np.testing.assert_allclose(scene.depth[road], camera.ground_depth_at_row(rows + 0.5), rtol=1e-5)
    label = evaluation_label(scene)
    assert set(np.unique(label)) <= {0, 1, 255}
    anomaly_instances = {a.instance: a for a in scene.anomalies}
    # every anomaly pixel was drawn by an on-road anomaly object, and every such visible pixel is labelled
    assert set(np.unique(scene.instances[label == ANOMALY])) <= {k for k, a in anomaly_instances.items() if a.on_road}
    for instance, anomaly in anomaly_instances.items():
        pixels = scene.instances == instance
        assert np.unique(label[pixels]).size == 1  # one decision per object
        assert np.all(scene.depth[pixels] == np.float32(anomaly.depth))
        if not anomaly.on_road:
            assert np.all(label[pixels] == VOID)
    assert np.all(label[scene.instances == 0] == 0)


def test_classes_and_landforms_are_varied():
    seen = set()
    for index, landform in enumerate(LANDFORMS):
        seen |= set(np.unique(render_scene(landform, index, SIZE).train_ids).tolist())
    assert len(seen - {VOID}) >= 12


def test_depth_buffer_makes_occlusion_independent_of_drawing_order(rng):
    near = shapes.Sprite(np.full((10, 10, 3), 0.2, np.float32), np.ones((10, 10), bool), (5, 9))
    far = shapes.Sprite(np.full((20, 20, 3), 0.8, np.float32), np.ones((20, 20), bool), (10, 19))
    buffers = []
    for order in ((far, 30.0, 1), (near, 10.0, 2)), ((near, 10.0, 2), (far, 30.0, 1)):
        canvas = _Canvas(40, 40)
        for sprite, depth, train_id in order:
            canvas.sprite(sprite, 20, 30, depth, train_id)
        buffers.append((canvas.rgb.copy(), canvas.train_ids.copy(), canvas.depth.copy()))
    for first, second in zip(*buffers):
        np.testing.assert_array_equal(first, second)
    assert buffers[0][1][25, 20] == 2 and buffers[0][1][13, 20] == 1  # near in front, far above it


def test_rendering_is_deterministic_per_seed():
    first = render_scene("forest", 11, SIZE, anomalies=("deer",))
    again = render_scene("forest", 11, SIZE, anomalies=("deer",))
    other = render_scene("forest", 12, SIZE, anomalies=("deer",))
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.train_ids, again.train_ids)
    assert not np.array_equal(first.image, other.image)


def test_train_and_test_anomaly_families_are_disjoint():
    assert set(ANIMALS).isdisjoint(DEBRIS) and ANIMALS and DEBRIS
    for plan in plan_test(5, per_weather=3):
        assert set(plan.anomalies) <= set(ANIMALS) and any(plan.on_road)
    for plan in plan_train(5, 7):
        assert plan.anomalies == () and plan.weather == "clear"
        scene = render_scene(plan.landform, plan.seed, SIZE)
        assert scene.anomalies == [] and not (scene.train_ids == VOID).any()  # every training pixel has a class


def test_test_plan_is_balanced_over_weathers_and_landforms():
    plans = plan_test(0, per_weather=7)
    pairs = {(p.weather, p.landform) for p in plans}
    assert len(pairs) == 49  # every weather meets every landform
    assert [p.weather for p in plans].count("fog") == 7
    assert [p.weather for p in plans].count("clear") == round(6 * 7 * 250 / 218)  # ComsAmy's clear : adverse ratio


def test_hazards_on_the_road_are_framed_and_large_like_comsamy_photos():
    heights, shares = [], []
    for seed in range(40):
        scene = render_scene("country", seed, SIZE, anomalies=("cow", "dog"))
        shares.append((evaluation_label(scene) == ANOMALY).mean())
        assert scene.anomalies  # hazards are in view (one may hide the other)
        for anomaly in scene.anomalies:
            assert anomaly.depth >= MIN_ANOMALY_DEPTH
            rows = np.nonzero(scene.instances == anomaly.instance)[0]
            heights.append((rows.max() - rows.min() + 1) / SIZE[1])
    assert len(heights) >= 50 and np.median(heights) > 0.25  # hazards ahead, not specks on the horizon
    assert np.mean(shares) > 0.04  # several percent of the pixels (ComsAmy: 13 %)


def test_anomalies_on_the_road_scale_with_distance():
    camera = Camera.for_size(*SIZE)
    scene = render_scene("highway", 2, SIZE, anomalies=("barrel",))
    anomaly = scene.anomalies[0]
    rows = np.nonzero(scene.instances == anomaly.instance)[0]
    expected = camera.fy * np.array(shapes.ANOMALY_KINDS["barrel"].height_range) / anomaly.depth
    assert expected[0] - 2 <= rows.max() - rows.min() + 1 <= expected[1] + 2
    assert abs(rows.max() + 1 - camera.row_at_depth(anomaly.depth)) <= 1.5  # it stands on the road
