"""Crop geometry, flips, augmentation and degradations, checked against independent computations."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from data_modules.landmarks import DATASETS, get_spec, permutation_from_pairs
from data_modules.transforms import (
    AugmentConfig,
    AugmentParams,
    Degradation,
    apply_colour,
    crop_frame,
    degrade,
    flip_landmarks,
    motion_blur,
    sample_augmentation,
)
from lightning_fa.geometry import (
    box_to_center_scale,
    crop_affine,
    invert_affine,
    landmarks_to_crop,
    transform_points,
    warp_image,
)

# ----------------------------------------------------------------------------- landmarks.py


def test_specs_match_spec_md() -> None:
    expected = {
        "300w": (68, (36, 45), 1.0),
        "300vw": (68, (36, 45), 1.0),
        "wflw": (98, (60, 72), 1.5),
        "cofw": (29, (8, 9), 1.5),
        "aflw": (19, None, 1.5),
    }
    for name, (points, eyes, sigma) in expected.items():
        spec = get_spec(name.upper())
        assert (spec.num_landmarks, spec.norm_indices, spec.sigma) == (points, eyes, sigma)
        perm = spec.flip_permutation
        assert all(perm[perm[i]] == i for i in range(points))
    assert get_spec("aflw").norm == "box"
    with pytest.raises(ValueError, match="unknown dataset 'lfw'"):
        get_spec("lfw")


def test_flip_pairs_swap_the_eye_corners() -> None:
    # The eye corners used for the inter-ocular distance are a left/right pair in every set.
    for spec in DATASETS.values():
        if spec.norm_indices is not None:
            a, b = spec.norm_indices
            assert spec.flip_permutation[a] == b
    # 68-point facts: jaw 0 <-> 16, nose tip 30 and chin 8 stay, mouth corners 48 <-> 54.
    perm = get_spec("300w").flip_permutation
    assert (perm[0], perm[8], perm[30], perm[48]) == (16, 8, 30, 54)
    assert sum(p != i for i, p in enumerate(perm)) == 2 * 29  # 29 pairs


def test_permutation_from_pairs_rejects_bad_pairs() -> None:
    with pytest.raises(ValueError, match="more than one flip pair"):
        permutation_from_pairs(4, [(0, 1), (1, 2)])
    with pytest.raises(ValueError, match="outside"):
        permutation_from_pairs(4, [(0, 4)])


# ----------------------------------------------------------------------------- crop geometry


def test_box_to_center_scale() -> None:
    center, scale = box_to_center_scale((10, 20, 50, 80))
    np.testing.assert_allclose(center, [30, 50])
    assert scale == 60
    with pytest.raises(ValueError, match="x1 < x2"):
        box_to_center_scale((10, 20, 5, 80))


def test_crop_affine_matches_opencv_rotation_matrix() -> None:
    center, scale, size, angle = (123.4, 87.6), 80.0, (64, 64), 17.0
    k = 64 / (80.0 * 1.25)
    reference = cv2.getRotationMatrix2D(center, angle, k)  # rotates about `center`
    reference[:, 2] += np.array([31.5, 31.5]) - np.array(center)  # then centre it in the crop
    # OpenCV rounds the centre to float32.
    np.testing.assert_allclose(crop_affine(center, scale, size, angle), reference, atol=1e-5)


def test_crop_affine_maps_region_edges_to_pixel_edges() -> None:
    affine = crop_affine((50.0, 40.0), 20.0, (10, 10), enlarge=1.0)
    edges = np.array([[40.0, 30.0], [60.0, 50.0], [50.0, 40.0]])
    np.testing.assert_allclose(
        transform_points(edges, affine), [[-0.5, -0.5], [9.5, 9.5], [4.5, 4.5]], atol=1e-12
    )


@given(
    st.floats(-90, 90),
    st.floats(10, 500),
    st.floats(-50, 50),
    st.floats(-50, 50),
    st.booleans(),
)
@settings(max_examples=30, deadline=None)
def test_invert_affine_round_trip(angle, scale, cx, cy, flip) -> None:
    affine = crop_affine((cx, cy), scale, (64, 48), angle, flip=flip, shift=(1.5, -2.0))
    points = np.random.default_rng(0).uniform(-100, 100, size=(7, 2))
    back = transform_points(transform_points(points, affine), invert_affine(affine))
    np.testing.assert_allclose(back, points, atol=1e-8)


def _blob(height: int, width: int, centre: np.ndarray, sigma: float) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    d2 = (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2
    return np.exp(-d2 / (2 * sigma**2)).astype(np.float32)


def _centroid(image: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    w = np.where(image > 1e-3, image, 0.0)
    return np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()


@pytest.mark.parametrize("angle,flip", [(0.0, False), (23.0, False), (-40.0, True)])
def test_warp_image_moves_pixels_where_the_matrix_moves_points(angle: float, flip: bool) -> None:
    # A blob drawn analytically at a sub-pixel point must land, after warping, where
    # transform_points sends that point (same pixel-centre convention for both).
    point = np.array([71.3, 58.8])
    frame = _blob(140, 150, point, sigma=4.0)
    affine = crop_affine((75.2, 60.7), 64.0 / 1.25 * 1.1, (64, 64), angle, flip=flip)
    crop = warp_image(frame, affine, (64, 64))
    expected = transform_points(point[None], affine)[0]
    np.testing.assert_allclose(_centroid(crop), expected, atol=0.05)


def test_flipped_crop_is_the_mirror_of_the_plain_crop() -> None:
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur(rng.integers(0, 255, (120, 130, 3), dtype=np.uint8), (5, 5), 0)
    plain = crop_affine((60.3, 55.1), 70.0, (48, 48), 10.0)
    mirrored = crop_affine((60.3, 55.1), 70.0, (48, 48), 10.0, flip=True)
    a = warp_image(frame, plain, (48, 48)).astype(int)
    b = warp_image(frame, mirrored, (48, 48)).astype(int)
    assert np.abs(b - a[:, ::-1]).max() <= 2  # OpenCV's fixed-point interpolation

    spec = get_spec("300w")
    landmarks = rng.uniform(30, 90, size=(68, 2))
    via_matrix = landmarks_to_crop(landmarks, mirrored, True, spec.flip_permutation)
    via_flip = flip_landmarks(transform_points(landmarks, plain), 48, spec.flip_permutation)
    np.testing.assert_allclose(via_matrix, via_flip, atol=1e-9)


@given(st.sampled_from(sorted(DATASETS)), st.integers(0, 2**31 - 1), st.integers(2, 1000))
@settings(max_examples=25, deadline=None)
def test_flip_twice_is_identity(name: str, seed: int, width: int) -> None:
    spec = get_spec(name)
    landmarks = np.random.default_rng(seed).uniform(0, width, size=(3, spec.num_landmarks, 2))
    twice = flip_landmarks(
        flip_landmarks(landmarks, width, spec.flip_permutation), width, spec.flip_permutation
    )
    np.testing.assert_allclose(twice, landmarks, atol=1e-9)
    as_tensor = torch.from_numpy(landmarks)
    np.testing.assert_allclose(
        flip_landmarks(as_tensor, width, spec.flip_permutation).numpy(),
        flip_landmarks(landmarks, width, spec.flip_permutation),
    )


def test_flipped_face_left_eye_index_holds_the_right_eye() -> None:
    spec = get_spec("300w")
    landmarks = np.zeros((68, 2))
    landmarks[36] = (20.0, 30.0)  # outer corner of the eye on the image's left
    landmarks[45] = (70.0, 31.0)  # outer corner of the eye on the image's right
    flipped = flip_landmarks(landmarks, 100, spec.flip_permutation)
    np.testing.assert_allclose(
        flipped[36], (99 - 70.0, 31.0)
    )  # mirrored right eye, now on the left
    np.testing.assert_allclose(flipped[45], (99 - 20.0, 30.0))
    assert flipped[36, 0] < flipped[45, 0]


def test_round_trip_through_heatmap_and_pdc() -> None:
    heatmaps = pytest.importorskip("lightning_fa.heatmaps")
    rng = np.random.default_rng(5)
    landmarks = rng.uniform(80, 160, size=(68, 2))  # frame pixels, a face around (120, 120)
    center, scale = box_to_center_scale((70, 70, 170, 170))
    affine = crop_affine(center, scale, (256, 256), rotation_deg=12.0)
    crop = landmarks_to_crop(landmarks, affine, False, get_spec("300w").flip_permutation)
    hm_coords = heatmaps.crop_to_heatmap(torch.from_numpy(crop), 4)
    maps = heatmaps.render_gaussian(hm_coords[None], 64, 64, sigma=1.5)
    decoded = heatmaps.pdc(maps, threshold=0.0)[0]
    back = transform_points(heatmaps.heatmap_to_crop(decoded, 4).numpy(), invert_affine(affine))
    np.testing.assert_allclose(back, landmarks, atol=0.05)


# ----------------------------------------------------------------------------- augmentation


def test_sample_augmentation_is_seeded_and_in_range() -> None:
    config = AugmentConfig(scale_jitter=0.1, rotation_deg=5.0, translate=0.02, flip_prob=0.5)
    draws = [sample_augmentation(np.random.default_rng(s), config) for s in range(50)]
    assert draws[3] == sample_augmentation(np.random.default_rng(3), config)
    assert len({d.rotation_deg for d in draws}) == 50
    assert all(0.9 <= d.scale_factor <= 1.1 and abs(d.rotation_deg) <= 5 for d in draws)
    assert 0 < sum(d.flip for d in draws) < 50
    assert AugmentParams().is_identity


def test_apply_colour_literal_formula() -> None:
    image = np.zeros((2, 2, 3), np.uint8)
    image[0] = (100, 50, 20)
    image[1] = (10, 200, 30)
    params = AugmentParams(brightness=1.1, contrast=0.8, saturation=1.3)
    out = apply_colour(image, params).astype(int)
    weights = np.array([0.299, 0.587, 0.114])
    img = image.astype(float) * 1.1
    mean = (img @ weights).mean()
    img = (img - mean) * 0.8 + mean
    for y in range(2):
        for x in range(2):
            pixel = img[y, x]
            grey = pixel @ weights
            expected = np.clip(np.rint(grey + (pixel - grey) * 1.3), 0, 255)
            np.testing.assert_allclose(out[y, x], expected, atol=1)
    assert apply_colour(image, AugmentParams()) is image


# ----------------------------------------------------------------------------- degradations


def test_degrade_off_is_identity_and_seeded() -> None:
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    assert degrade(image, np.random.default_rng(1)) is image
    config = Degradation(noise_sigma=5.0, blur_kernel=3, motion_blur_length=5, jpeg_quality=60)
    a = config.apply(image, np.random.default_rng(7))
    b = config.apply(image, np.random.default_rng(7))
    c = config.apply(image, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and a.shape == image.shape and (a != c).any()


def test_degrade_levels() -> None:
    flat = np.full((64, 64, 3), 128, np.uint8)
    noisy = degrade(flat, np.random.default_rng(0), noise_sigma=10.0).astype(float)
    assert noisy.std() == pytest.approx(10.0, rel=0.05)
    # Blur keeps a constant image constant (kernels are normalised).
    blurred = degrade(flat, np.random.default_rng(0), blur_kernel=5, motion_blur_length=9)
    np.testing.assert_array_equal(blurred, flat)
    edge = np.zeros((21, 21, 3), np.uint8)
    edge[:, 11:] = 255
    smeared = degrade(edge, np.random.default_rng(0), blur_kernel=7)
    assert 0 < smeared[10, 10, 0] < 255
    with pytest.raises(ValueError, match="blur_kernel must be odd"):
        degrade(flat, np.random.default_rng(0), blur_kernel=4)
    with pytest.raises(ValueError, match="jpeg_quality"):
        degrade(flat, np.random.default_rng(0), jpeg_quality=0)


def test_motion_blur_direction_comes_from_rng() -> None:
    dot = np.zeros((31, 31, 3), np.uint8)
    dot[15, 15] = 255
    outs = [degrade(dot, np.random.default_rng(s), motion_blur_length=11) for s in range(4)]
    for out in outs:
        support = np.argwhere(out[..., 0] > 0)
        extent = np.ptp(support, axis=0)
        assert max(extent) >= 8  # a line ~11 px long, not a blob
        assert math.isclose(out[..., 0].astype(float).sum(), 255, rel_tol=0.15)
    assert any((outs[0] != o).any() for o in outs[1:])


# ----------------------------------------------------------------------------- albumentations


def _photo(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (5, 5), 0)


def test_apply_colour_clips_after_each_step() -> None:
    # torchvision / albumentations semantics: each step is rounded and clipped to uint8, so a
    # brightened highlight saturates before the contrast step (the earlier code clipped once).
    image = np.zeros((1, 3, 3), np.uint8)
    image[0] = [(250, 250, 250), (20, 20, 20), (120, 60, 30)]
    out = apply_colour(image, AugmentParams(brightness=1.2, contrast=0.5, saturation=1.5))
    weights = np.array([0.299, 0.587, 0.114])
    bright = np.clip(np.rint(image * 1.2), 0, 255)
    mean = np.rint(bright @ weights).mean()
    contrast = np.clip(np.rint(bright * 0.5 + mean * 0.5), 0, 255)
    grey = np.rint(contrast @ weights)[..., None]
    expected = np.clip(np.rint(contrast * 1.5 - grey * 0.5), 0, 255)
    np.testing.assert_allclose(out.astype(int), expected, atol=1)
    assert out[0, 0, 0] < 220  # unclipped arithmetic would keep the highlight at 255


def test_colour_factors_do_what_they_say() -> None:
    grey = np.full((8, 8, 3), 100, np.uint8)
    np.testing.assert_array_equal(apply_colour(grey, AugmentParams(brightness=1.15)), 115)
    colour = _photo()
    flat = apply_colour(colour, AugmentParams(saturation=0.0))
    np.testing.assert_array_equal(flat[..., 0], flat[..., 1])  # no saturation: grey
    np.testing.assert_array_equal(flat[..., 1], flat[..., 2])
    low = apply_colour(colour, AugmentParams(contrast=0.5)).astype(float)
    assert low.std() < 0.6 * colour.astype(float).std()
    assert abs(low.mean() - colour.mean()) < 2


def test_zero_strength_configs_are_the_identity() -> None:
    image = _photo()
    off = AugmentConfig(brightness=0.0, contrast=0.0, saturation=0.0)
    for seed in range(5):
        params = sample_augmentation(np.random.default_rng(seed), off)
        assert (params.brightness, params.contrast, params.saturation) == (1.0, 1.0, 1.0)
        assert apply_colour(image, params) is image
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert Degradation().apply(image, rng) is image
    assert Degradation(blur_kernel=1, motion_blur_length=1).apply(image, rng) is image
    assert rng.bit_generator.state == state  # nothing drawn


def test_colour_factors_drawn_in_range() -> None:
    config = AugmentConfig(brightness=0.1, contrast=0.2, saturation=0.3)
    draws = [sample_augmentation(np.random.default_rng(s), config) for s in range(40)]
    assert all(0.9 <= d.brightness <= 1.1 for d in draws)
    assert all(0.8 <= d.contrast <= 1.2 for d in draws)
    assert all(0.7 <= d.saturation <= 1.3 for d in draws)
    assert len({d.saturation for d in draws}) == 40


def _sequence(frames: list[np.ndarray], seed: int, degradation: Degradation | None):
    # As the datasets do: one generator per sample, one colour draw per sequence, then a crop
    # (warp, colour, this frame's degradation) per frame from the same generator.
    rng = np.random.default_rng(seed)
    params = sample_augmentation(rng, AugmentConfig(brightness=0.4, contrast=0.4, saturation=0.4))
    affine = crop_affine((32.0, 24.0), 40.0, (32, 32))
    return params, [crop_frame(f, affine, (32, 32), params, degradation, rng) for f in frames]


def test_colour_is_the_same_for_every_frame_of_a_sequence() -> None:
    frames = [_photo()] * 4
    params, crops = _sequence(frames, seed=3, degradation=None)
    assert not params.is_identity
    for crop in crops[1:]:
        torch.testing.assert_close(crop, crops[0])
    plain = warp_image(frames[0], crop_affine((32.0, 24.0), 40.0, (32, 32)), (32, 32))
    assert (crops[0].numpy().transpose(1, 2, 0) != plain).any()  # the jitter did something


def test_degradations_differ_per_frame_and_repeat_per_seed() -> None:
    frames = [_photo()] * 3
    degradation = Degradation(noise_sigma=6.0, motion_blur_length=7, jpeg_quality=80)
    _, first = _sequence(frames, seed=5, degradation=degradation)
    _, again = _sequence(frames, seed=5, degradation=degradation)
    _, other = _sequence(frames, seed=6, degradation=degradation)
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b)  # same seed: identical, frame by frame
    assert (first[0] != first[1]).any() and (first[1] != first[2]).any()  # drawn per frame
    assert all((a != b).any() for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize(
    "levels",
    [
        {"noise_sigma": 4.0},
        {"blur_kernel": 5},
        {"motion_blur_length": 9},
        {"jpeg_quality": 30},
        {"noise_sigma": 4.0, "blur_kernel": 3, "motion_blur_length": 5, "jpeg_quality": 70},
    ],
)
def test_degradations_keep_uint8_shape(levels: dict) -> None:
    image = _photo(37, 50)
    out = degrade(image, np.random.default_rng(0), **levels)
    assert out.dtype == np.uint8 and out.shape == image.shape and out.flags.c_contiguous
    assert (out != image).any()
    coloured = apply_colour(image, AugmentParams(brightness=0.9, contrast=1.2, saturation=0.8))
    assert coloured.dtype == np.uint8 and coloured.shape == image.shape


@pytest.mark.parametrize("quality", [5, 50, 95])
def test_jpeg_path_of_the_synthetic_benchmark_is_unchanged(quality: int) -> None:
    # synthetic.py calls degrade(image, rng, jpeg_quality=q): it must stay the plain OpenCV
    # round trip of the BGR view and draw nothing from rng, so `make finetune` repeats exactly.
    image = _photo(40, 56, seed=quality)
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    out = degrade(image, rng, jpeg_quality=quality)
    _, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    reference = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(out, reference)
    assert rng.bit_generator.state == state
    assert degrade(image, rng, jpeg_quality=None) is image


@pytest.mark.parametrize(
    "levels,words",
    [
        ({"motion_blur_length": 6}, "motion_blur_length must be odd"),
        ({"blur_kernel": -3}, "blur_kernel must be an integer >= 0"),
        ({"noise_sigma": -1.0}, "noise_sigma must be a finite number >= 0"),
        ({"noise_sigma": math.nan}, "noise_sigma must be a finite number >= 0"),
        ({"jpeg_quality": 101}, "jpeg_quality must be in 1..100"),
        ({"jpeg_quality": True}, "jpeg_quality must be in 1..100"),
    ],
)
def test_degradation_config_refuses_bad_levels(levels: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Degradation(**levels)


def test_one_vocabulary_refuses_levels_a_source_cannot_apply() -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    for levels in ({"flicker": 0.1}, {"blur_exposure": 0.5}):
        with pytest.raises(ValueError, match=f"unknown motion cannot apply {next(iter(levels))}"):
            Degradation(**levels).apply(image, np.random.default_rng(0))


def test_motion_blur_of_images_is_the_line_kernel() -> None:
    # A horizontal streak of length 9 (pixel centre to pixel centre): 9 px of 255/9, centred.
    dot = np.zeros((21, 21), np.float32)
    dot[10, 10] = 255.0
    row = motion_blur(dot, np.array([8.0, 0.0]))[10]
    np.testing.assert_allclose(row.sum(), 255.0, rtol=1e-5)
    assert (row[6:15] > 0).all() and row[:5].max() == row[16:].max() == 0
