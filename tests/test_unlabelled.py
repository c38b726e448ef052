"""Unlabelled-video route: zero-lag smoother pseudo labels, sequence batches, the .npz cache."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data_modules.unlabelled import UnlabelledVideoDataModule, UnlabelledWindows, list_videos
from lightning_fa import labelling
from lightning_fa.heatmaps import crop_to_heatmap, decode, render_gaussian
from lightning_fa.labelling import PseudoLabeller, pseudo_labels, smooth_boxes

CLIP = "videos/liveportrait_d0.mp4"


def _velocity_xcorr_peak(track: np.ndarray, reference: np.ndarray, max_lag: int = 5) -> int:
    """Lag with the largest plain cross-correlation of the two velocities (a literal loop)."""
    v = np.diff(track, axis=0).reshape(len(track) - 1, -1)
    w = np.diff(reference, axis=0).reshape(len(reference) - 1, -1)
    scores = {}
    for lag in range(-max_lag, max_lag + 1):
        total = 0.0
        for t in range(len(v)):
            if 0 <= t - lag < len(w):
                total += float(v[t] @ w[t - lag])
        scores[lag] = total
    return max(scores, key=scores.get)


def _accel(track: np.ndarray) -> float:
    return float(np.linalg.norm(track[2:] - 2 * track[1:-1] + track[:-2], axis=-1).mean())


def test_pseudo_labels_are_smoother_closer_and_without_lag() -> None:
    rng = np.random.default_rng(0)
    fps, steps = 25.0, 200
    t = np.arange(steps)[:, None] / fps
    phase = rng.uniform(0, 2 * np.pi, (1, 5))
    clean = np.stack(
        [
            100 + 20 * np.sin(2 * np.pi * 0.6 * t + phase),
            80 + 10 * np.sin(2 * np.pi * 1.1 * t + 0 * phase),
        ],
        axis=-1,
    ) + np.zeros((steps, 5, 2))
    raw = clean + rng.normal(0, 1.0, clean.shape)
    labels = pseudo_labels(raw, fps, cutoff_hz=3.0)
    assert _velocity_xcorr_peak(labels, raw) == 0
    assert _velocity_xcorr_peak(labels, clean) == 0
    assert _accel(labels) < 0.2 * _accel(raw)
    inner = slice(10, -10)  # away from the filtfilt edges
    error = np.linalg.norm(labels[inner] - clean[inner], axis=-1).mean()
    assert error < 0.5 * np.linalg.norm(raw[inner] - clean[inner], axis=-1).mean()


def test_smooth_boxes_fills_gaps() -> None:
    boxes = np.tile([10.0, 20.0, 110.0, 140.0], (30, 1))
    boxes[10:14] = np.nan
    centres, sides = smooth_boxes(boxes, 25.0, 1.0)
    np.testing.assert_allclose(centres, np.tile([60.0, 80.0], (30, 1)), atol=1e-6)
    np.testing.assert_allclose(sides, 120.0, atol=1e-6)


def test_list_videos_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="video not found"):
        list_videos([str(tmp_path / "missing.mp4")])
    with pytest.raises(ValueError, match="no video files"):
        list_videos(str(tmp_path))
    (tmp_path / "b.mp4").write_bytes(b"")
    (tmp_path / "a.avi").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    assert [p.name for p in list_videos(str(tmp_path))] == ["a.avi", "b.mp4"]


def _moving_video(frames: int = 24, size: int = 64, stride: int = 4) -> dict[str, np.ndarray]:
    """A processed video whose backbone points equal its labels, moving every frame."""
    rng = np.random.default_rng(0)
    start = rng.uniform(0.3 * size * stride, 0.7 * size * stride, (1, 68, 2))
    drift = rng.uniform(-3, 3, (1, 68, 2)) * np.arange(frames)[:, None, None] ** 1.2
    labels = (start + drift).astype(np.float32)
    return {
        "labels": labels,
        "detector_points": labels.copy(),
        "crops": np.zeros((frames, size * stride, size * stride, 3), np.uint8),
        "affines": np.tile(np.eye(2, 3, dtype=np.float32), (frames, 1, 1)),
        "detected": np.ones(frames, bool),
    }


def test_augmented_windows_keep_maps_landmarks_and_frames_together(tmp_path: Path) -> None:
    video = _moving_video()
    (tmp_path / "clip.mp4").write_bytes(b"")
    datamodule = UnlabelledVideoDataModule(
        videos=str(tmp_path),
        labeller=PseudoLabeller(),
        seq_len=4,
        window_step=2,
        train_patch=12,
        augment=True,
    )
    windows = datamodule._train_windows([video])
    expected = [list(range(first, first + length)) for _, first, length in windows]

    def render(points, height, width, confidence):
        return render_gaussian(crop_to_heatmap(points, 4), height, width, 1.5)

    dataset = UnlabelledWindows([video], windows, None, render=render, patch=12, augment=True)
    torch.manual_seed(0)
    reversed_count = 0
    for item in range(len(dataset)):
        sample = dataset[item]
        frames = sample["frame_index"].tolist()
        reversed_count += frames == expected[item][::-1]
        assert frames in (expected[item], expected[item][::-1])  # forwards or backwards
        # The maps' peaks are where the (moved) landmarks say, frame by frame, so the maps, the
        # landmarks and the frame order were transformed together.
        peaks = decode(sample["backbone_heatmaps"], "pdc")
        inside = ((peaks > 3) & (peaks < 8)).all(dim=-1)  # Gaussians (nearly) whole in the patch
        error = (peaks - crop_to_heatmap(sample["landmarks"], 4)).norm(dim=-1)[inside]
        assert inside.sum() >= 20 and error.max() < 0.2  # PDC on a cut Gaussian
        # Symmetries keep distances: each landmark's step lengths are those of its labels.
        steps = sample["landmarks"].diff(dim=0).norm(dim=-1)
        truth = torch.from_numpy(video["labels"][frames]).diff(dim=0).norm(dim=-1)
        torch.testing.assert_close(steps, truth, atol=1e-3, rtol=0)
    assert 0.2 < reversed_count / len(dataset) < 0.8
    with pytest.raises(ValueError, match="augment needs train_patch"):
        UnlabelledVideoDataModule(videos=str(tmp_path), labeller=PseudoLabeller(), augment=True)


@pytest.mark.slow
def test_real_clip_batches_labels_and_cache(shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    clip = shared_data / CLIP
    settings = dict(
        videos=str(clip), val_videos=[str(clip)], seq_len=8, window_step=4, val_window=10,
        batch_size=2,
    )  # fmt: skip
    labeller = dict(cache_dir=str(tmp_path / "cache"), max_frames=24)
    datamodule = UnlabelledVideoDataModule(**settings, labeller=PseudoLabeller(**labeller))
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert (
        batch["frames"].shape == (2, 8, 3, 256, 256) and str(batch["frames"].dtype) == "torch.uint8"
    )
    assert batch["landmarks"].shape == (2, 8, 68, 2)
    assert batch["affine"].shape == (2, 8, 2, 3)
    assert batch["valid"].dtype.is_floating_point is False and batch["valid"].shape == (2, 8)
    assert batch["video_id"].shape == (2,) and batch["frame_index"].shape == (2, 8)
    assert (batch["frame_index"].diff(dim=1) == 1).all()
    # Validation streams the held-out video in consecutive windows covering every frame.
    windows = [datamodule.val_set[i] for i in range(len(datamodule.val_set))]
    assert np.concatenate([w["frame_index"].numpy() for w in windows]).tolist() == list(range(24))

    # The crop is the frame warped by the sample's affine (checked with OpenCV directly).
    video = datamodule.train_set.videos[0]
    capture = cv2.VideoCapture(str(clip))
    frame = capture.read()[1][..., ::-1]
    capture.release()
    direct = cv2.warpAffine(np.ascontiguousarray(frame), video["affines"][0], (256, 256))
    assert np.abs(direct.astype(int) - video["crops"][0].astype(int)).mean() < 1.0

    # Pseudo labels: smoother than the raw track, no lag against it.
    labels_frame = np.stack(
        [cv2.transform(p[None], cv2.invertAffineTransform(a))[0]
         for p, a in zip(video["labels"], video["affines"])]
    )  # fmt: skip
    assert _accel(labels_frame) < 0.5 * _accel(video["raw"])
    assert _velocity_xcorr_peak(labels_frame, video["raw"]) == 0

    # A second module with the same settings reads the cache and never runs the detector.
    def no_processing(*args, **kwargs):
        raise AssertionError("the cached video was processed again")

    monkeypatch.setattr(labelling, "process_video", no_processing)
    again = UnlabelledVideoDataModule(**settings, labeller=PseudoLabeller(**labeller))
    again.setup("fit")
    np.testing.assert_array_equal(again.train_set.videos[0]["raw"], video["raw"])
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1


@pytest.mark.slow
def test_precomputed_heatmaps_equal_the_backbone_on_the_delivered_frames(
    shared_data: Path, tmp_path: Path
) -> None:
    """Training and validation windows carry `backbone_heatmaps` drawn from the cached points;
    they must be what the frozen backbone computes on exactly the delivered crops."""
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")

    from lightning_fa.backbones import DlibBackbone

    clip = shared_data / CLIP
    datamodule = UnlabelledVideoDataModule(
        videos=str(clip), val_videos=[str(clip)], seq_len=3, window_step=3, val_window=4,
        batch_size=1, labeller=PseudoLabeller(cache_dir=str(tmp_path), max_frames=6),
    )  # fmt: skip
    datamodule.setup("fit")
    backbone = DlibBackbone().eval()  # a fresh instance, independent of the data module's
    samples = [datamodule.train_set[0], datamodule.val_set[1]]  # frames 0-2 (train), 4-5 (val)
    for sample in samples:
        with torch.no_grad():
            expected = backbone(backbone.preprocess(sample["frames"]))
        assert sample["backbone_heatmaps"].shape == (len(sample["frames"]), 68, 64, 64)
        torch.testing.assert_close(sample["backbone_heatmaps"], expected, rtol=0, atol=1e-6)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["backbone_heatmaps"].shape == (1, 3, 68, 64, 64)


@pytest.mark.slow
def test_train_patches_are_windows_of_the_full_maps(shared_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    settings = dict(
        videos=str(shared_data / CLIP), val_videos=[str(shared_data / CLIP)],
        labeller=PseudoLabeller(cache_dir=str(tmp_path), max_frames=8), seq_len=4, window_step=4,
        val_window=8,
    )  # fmt: skip
    full = UnlabelledVideoDataModule(**settings)
    patched = UnlabelledVideoDataModule(**settings, train_patch=12)
    full.setup("fit")
    patched.setup("fit")  # reads the cache the first module wrote
    for item in range(len(full.train_set)):
        whole, cut = full.train_set[item], patched.train_set[item]
        assert cut["backbone_heatmaps"].shape == (4, 68, 12, 12) and cut["frames"].numel() == 0
        # Landmarks move by a whole number of heatmap pixels: the patch origin.
        origin = (whole["landmarks"] - cut["landmarks"]) / patched.train_set.stride
        assert torch.equal(origin, origin.round()) and (origin == origin[:1]).all()
        for k in (0, 30, 67):
            x0, y0 = (int(v) for v in origin[0, k])
            window = whole["backbone_heatmaps"][:, k, y0 : y0 + 12, x0 : x0 + 12]
            assert torch.equal(cut["backbone_heatmaps"][:, k], window)
    # Validation keeps whole maps; patches need the precomputed heatmaps.
    assert patched.val_set[0]["backbone_heatmaps"].shape[-2:] == (64, 64)
    with pytest.raises(ValueError, match="train_patch needs precomputed_heatmaps"):
        UnlabelledVideoDataModule(**settings, train_patch=12, precomputed_heatmaps=False)


def test_experiment_goals() -> None:
    from lightning_fa.commands.unlabelled_experiment import goals

    def methods(ours_accel: float, ours_deviation: float, ours_lag: int) -> dict:
        row = {"accel": 2.0, "deviation": 0.7, "lag": 0}
        return {
            "raw": row,
            "one-euro": {**row, "deviation": 0.8},
            "one-euro-mediapipe": {**row, "deviation": 0.6},
            "ours": {"accel": ours_accel, "deviation": ours_deviation, "lag": ours_lag},
        }

    assert all(goals(methods(1.0, 0.59, -1)).values())
    assert goals(methods(1.01, 0.59, 1)) == {
        "accel_cut_50": False, "deviation_below_raw_and_one_euro": True, "lag_le_1": True,
    }  # fmt: skip
    assert not goals(methods(0.5, 0.6, 0))["deviation_below_raw_and_one_euro"]
    assert not goals(methods(0.5, 0.5, 2))["lag_le_1"]


def test_the_cli_gives_the_labeller_the_models_backbone(shared_data: Path) -> None:
    """experiments/unlabelled.yaml names the backbone once, under model; the data's labeller
    gets the same one (and its checkpoint)."""
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    from lightning_fa.commands.lightning_cli import build_cli
    from tests.conftest import REPO_ROOT

    configs = [REPO_ROOT / "experiments" / name for name in ("base.yaml", "unlabelled.yaml")]
    args = [arg for config in configs for arg in ("--config", str(config))]
    clip = f"--data.init_args.videos=[{shared_data / CLIP}]"
    only = [clip, "--data.init_args.val_videos=null", "--trainer.logger=false"]
    cli = build_cli([*args, *only, "--trainer.callbacks=null"], run=False)
    labeller = cli.datamodule.labeller
    assert isinstance(labeller, PseudoLabeller)
    assert labeller.settings["backbone"] == cli.model.backbone.spec
    assert labeller.backbone_checkpoint is None


def test_face_motion_overlay_builds_its_stage_on_whole_maps(shared_data: Path) -> None:
    """experiments/unlabelled-face-motion.yaml over unlabelled.yaml: a FaceMotionStage whose
    threshold follows the decoder's, the coordinate terms of the loss only, whole maps."""
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    from lightning_fa.commands.lightning_cli import build_cli
    from lightning_fa.temporal import FaceMotionStage
    from tests.conftest import REPO_ROOT

    names = ("base.yaml", "unlabelled.yaml", "unlabelled-face-motion.yaml")
    args = [arg for name in names for arg in ("--config", str(REPO_ROOT / "experiments" / name))]
    clip = f"--data.init_args.videos=[{shared_data / CLIP}]"
    only = [clip, "--data.init_args.val_videos=null", "--trainer.logger=false"]
    threshold = "--model.init_args.pdc_threshold=0.3"
    cli = build_cli([*args, *only, threshold, "--trainer.callbacks=null"], run=False)
    stage, loss = cli.model.temporal, cli.model.loss
    assert isinstance(stage, FaceMotionStage) and not stage.landmark_wise
    assert stage.threshold == 0.3 == loss.threshold  # both follow the decoder's
    assert (stage.max_smoothing, stage.activity_smoothing) == (0.99, 0.2)
    assert loss.pixel_weight == 0.0 and loss.position_weight == 0.5
    assert loss.coord_weight == 1.0 and loss.xi == 0.05  # the rest is unlabelled.yaml's
    assert cli.datamodule.hparams.train_patch is None  # whole maps: every landmark at once


def test_patches_are_refused_for_a_stage_that_needs_every_landmark(tmp_path: Path) -> None:
    from lightning_fa.temporal import FaceMotionStage, LandmarkWiseConvLSTM

    (tmp_path / "clip.mp4").write_bytes(b"")
    patches = UnlabelledVideoDataModule(
        videos=str(tmp_path), labeller=PseudoLabeller(), train_patch=12
    )
    with pytest.raises(ValueError, match=r"train_patch=12 with FaceMotionStage"):
        patches.check_stage(FaceMotionStage(68))
    patches.check_stage(LandmarkWiseConvLSTM(68, 4))  # one map at a time: patches are fine
    patches.check_stage(None)  # no model attached (the data module used alone)
    whole = UnlabelledVideoDataModule(videos=str(tmp_path), labeller=PseudoLabeller())
    whole.check_stage(FaceMotionStage(68))
