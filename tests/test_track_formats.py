"""`track`'s outputs for other tools: COCO-keypoints JSON (MMPoseInferencer's layout) and
OpenFace CSV parsed back and equal to our CSV; per-landmark scores through the torch and ONNX
steps; timestamps from a variable-frame-rate file reach the filters (of `track` and of
`evaluate-video`); the overlay is labelled H.264 (MJPG .avi without PyAV). Tests that need PyAV
skip without it."""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
import torch

from lightning_fa.backbones import HRNet
from lightning_fa.commands import evaluate_video
from lightning_fa.commands import track as track_command
from lightning_fa.commands.cli import main as cli_main
from lightning_fa.inference.onnx import StreamingStep
from lightning_fa.systems.finetune import StableAlignmentModule
from lightning_fa.temporal import ConvLSTM
from lightning_fa.temporal.filters import OneEuroFilter
from lightning_fa.tracking import formats, video_io
from lightning_fa.tracking.boxes import BoxCalibration
from lightning_fa.tracking.tracker import StreamingTracker
from tests.conftest import TINY_HRNET

# Presentation times of a phone-like variable-frame-rate clip: 30 fps, a stall, bursts.
VFR_MS = [0, 33, 67, 150, 170, 300, 310, 333, 500, 517]
SCORES = torch.linspace(0.05, 0.95, 68)  # the fake model's per-landmark scores
NO_FACE_FRAMES = 2  # the fake detector finds the face from this frame on


def _frames(count: int = len(VFR_MS), size: int = 64) -> list[np.ndarray]:
    return [np.full((size, size, 3), 20 + 10 * k, np.uint8) for k in range(count)]


def write_vfr_mp4(path: Path, times_ms: list[int], size: int = 64) -> Path:
    """An H.264 .mp4 whose frames carry exactly `times_ms` as presentation times."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for t, image in zip(times_ms, _frames(len(times_ms), size)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_mjpg_avi(path: Path, count: int = len(VFR_MS)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 64))
    for image in _frames(count):
        writer.write(image)
    writer.release()
    return path


class _ScoringStep:
    """A model stand-in: landmarks fill the middle of the crop, confidence 0.8, per-landmark
    scores `SCORES` after the state (as `StreamingStep` gives them); `scores=False` is a step
    exported before that output existed."""

    input_size = (32, 32)
    num_landmarks = 68

    def __init__(self, scores: bool = True) -> None:
        self.scores = scores

    def init_state(self, batch: int, device=None) -> list[torch.Tensor]:
        return [torch.zeros(batch, 1)]

    def __call__(self, images: torch.Tensor, state: torch.Tensor):
        batch = images.shape[0]
        grid = torch.linspace(3.2, 27.8, 68)
        coords = torch.stack([grid, grid.flip(0)], -1).expand(batch, 68, 2)
        extra = [SCORES.expand(batch, 68)] if self.scores else []
        return coords, coords, torch.full((batch,), 0.8), state + 1, *extra


class _LateDetector:
    """No face in the first `NO_FACE_FRAMES` calls, then one fixed box."""

    calibration = BoxCalibration(dy=0.0, scale=1.0)

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls <= NO_FACE_FRAMES:
            return np.zeros((0, 5))
        return np.array([[16.0, 16.0, 48.0, 48.0, 1.0]])


def _fake_model(
    monkeypatch: pytest.MonkeyPatch, scores: bool = True, command: ModuleType = track_command
) -> None:
    monkeypatch.setattr(command, "load_step", lambda *args, **kwargs: _ScoringStep(scores))
    monkeypatch.setattr(command, "make_detector", lambda name: _LateDetector())


def track(*argv: str | Path) -> int:
    return cli_main(["track", *map(str, argv), "--no-progress"])


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- COCO / OpenFace


def test_coco_and_openface_outputs_parse_back_to_the_csv_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_model(monkeypatch)
    video = write_mjpg_avi(tmp_path / "clip.avi")
    out = {k: tmp_path / f"lm.{k}" for k in ("csv", "coco.json", "openface.csv")}
    assert track(video, "--out-csv", out["csv"], "--out-coco", out["coco.json"],
                 "--out-openface", out["openface.csv"]) == 0  # fmt: skip
    rows = _csv_rows(out["csv"])
    coco = json.loads(out["coco.json"].read_text())
    openface = _csv_rows(out["openface.csv"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clip.avi", "lm.coco.json", "lm.csv", "lm.openface.csv"
    ]  # fmt: skip
    assert len(rows) == len(coco) == len(openface) == len(VFR_MS)
    assert list(openface[0]) == ["frame", "face_id", "timestamp", "confidence", "success",
                                 *(f"x_{k}" for k in range(68)), *(f"y_{k}" for k in range(68))]  # fmt: skip
    for k, (row, frame, face) in enumerate(zip(rows, coco, openface)):
        points = np.array([float(row[c]) for c in formats.csv_header(68)[4:]]).reshape(68, 2)
        assert frame["frame_id"] == int(row["frame"]) == k
        assert int(face["frame"]) == k + 1  # OpenFace counts frames from 1
        assert frame["timestamp"] == pytest.approx(float(row["time"]), abs=1e-4)
        assert float(face["timestamp"]) == pytest.approx(float(row["time"]), abs=1e-3)
        if k < NO_FACE_FRAMES:
            assert frame["instances"] == []
            assert row["track_id"] == "-1"
            assert (face["success"], face["face_id"], face["confidence"]) == ("0", "0", "0.0000")
            continue
        (instance,) = frame["instances"]
        assert list(instance) == ["track_id", "keypoints", "keypoint_scores", "bbox",
                                  "bbox_score"]  # fmt: skip
        np.testing.assert_allclose(instance["keypoints"], points, atol=1e-3)
        np.testing.assert_allclose(instance["keypoint_scores"], SCORES.numpy(), atol=1e-4)
        assert instance["bbox_score"] == float(row["confidence"]) == 0.8
        (box,) = instance["bbox"]  # one [x1, y1, x2, y2], as MMPoseInferencer writes it
        assert box[0] < box[2] and box[1] < box[3]
        assert box[0] <= points[:, 0].min() and points[:, 0].max() <= box[2]
        assert (face["success"], face["face_id"]) == ("1", row["track_id"])
        assert float(face["confidence"]) == float(row["confidence"])
        xs = [float(face[f"x_{j}"]) for j in range(68)]
        ys = [float(face[f"y_{j}"]) for j in range(68)]
        np.testing.assert_allclose(np.stack([xs, ys], -1), points, atol=1e-3)


def test_a_step_without_landmark_scores_writes_null_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_model(monkeypatch, scores=False)  # e.g. an .onnx exported before the output existed
    coco = tmp_path / "lm.json"
    assert track(write_mjpg_avi(tmp_path / "clip.avi"), "--out-coco", coco) == 0
    instance = json.loads(coco.read_text())[-1]["instances"][0]
    assert instance["keypoint_scores"] == [None] * 68
    assert instance["bbox_score"] == 0.8


def test_a_stopped_run_keeps_the_new_outputs_in_partial_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_model(monkeypatch)
    coco, openface = tmp_path / "lm.json", tmp_path / "of.csv"
    coco.write_text("earlier")
    step = StreamingTracker.step

    def stopping(self, image, timestamp=None):
        if self.frame_index + 1 == 5:
            raise KeyboardInterrupt
        return step(self, image, timestamp)

    monkeypatch.setattr(StreamingTracker, "step", stopping)
    argv = [write_mjpg_avi(tmp_path / "clip.avi"), "--out-coco", coco, "--out-openface", openface]
    assert track(*argv) == 130  # Ctrl-C
    assert coco.read_text() == "earlier" and not openface.exists()
    lines = (tmp_path / "lm.partial.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame_id"] for line in lines] == [0, 1, 2, 3, 4]
    assert len(_csv_rows(tmp_path / "of.partial.csv")) == 5


# ----------------------------------------------------------------------------- scores per landmark


def _tiny_module() -> StableAlignmentModule:
    torch.manual_seed(0)
    backbone = HRNet(68, TINY_HRNET, input_size=(32, 32))
    with torch.no_grad():  # maps whose peaks straddle 1, so the clipping shows
        heads = [m for m in backbone.modules() if getattr(m, "out_channels", None) == 68]
        heads[-1].bias.copy_(torch.linspace(-0.5, 1.5, 68))
    return StableAlignmentModule(backbone, ConvLSTM(68, hidden_channels=4, input_proj=4)).eval()


def test_landmark_scores_are_each_raw_map_peak_and_reach_the_tracks() -> None:
    """(ONNX parity of the scores: tests/test_export.py.)"""
    module = _tiny_module()
    step = StreamingStep(module).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    outputs = step(images, *step.init_state(2))
    scores = outputs[-1]
    with torch.no_grad():
        heatmaps = module.backbone(module.backbone.preprocess(images))
    peaks = heatmaps.flatten(2).max(-1).values
    assert scores.shape == (2, 68)
    torch.testing.assert_close(scores, peaks.clamp(0, 1))
    assert (peaks > 1).any() and (peaks < 1).any() and 0 <= scores.min() <= scores.max() <= 1
    assert len(outputs) == 3 + len(step.state_names) + 1  # the state keeps its positions

    detector = _LateDetector()
    detector.calls = NO_FACE_FRAMES
    (result,) = StreamingTracker(step, detector, min_confidence=0.0).step(
        np.full((64, 64, 3), 128, np.uint8)
    )
    assert result.landmark_scores.shape == (68,)
    assert 0 <= result.landmark_scores.min() <= result.landmark_scores.max() <= 1


# ----------------------------------------------------------------------------- timestamps


class _StampCapture:
    """A capture whose frames carry scripted POS_MSEC values (None: a failed read)."""

    def __init__(self, stamps: list[float | None], fps: float = 10.0) -> None:
        self.stamps, self.fps, self.position = stamps, fps, None

    def read(self):
        if not self.stamps:
            return False, None
        self.position = self.stamps.pop(0)
        ok = self.position is not None
        return ok, np.zeros((4, 4, 3), np.uint8) if ok else None

    def get(self, prop):
        return {cv2.CAP_PROP_FRAME_COUNT: 6, cv2.CAP_PROP_FPS: self.fps,
                cv2.CAP_PROP_POS_MSEC: self.position}.get(prop, 0)  # fmt: skip


def test_frames_without_a_usable_stamp_are_placed_by_the_frame_rate() -> None:
    # 0 ms, then a backend's 0 (no stamp), a corrupt frame, a NaN, a real later stamp.
    reader = video_io.FrameReader(_StampCapture([0.0, 0.0, None, float("nan"), 900.0, 950.0]))
    timed = [(position, t) for position, t, _ in reader.timed()]
    assert timed == [(0, 0.0), (1, 0.1), (3, pytest.approx(0.3)), (4, 0.9), (5, 0.95)]
    assert reader.estimated_times == 2 and reader.skipped == 1


def test_variable_frame_rate_timestamps_are_read_and_reach_the_one_euro_filter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    video = write_vfr_mp4(tmp_path / "phone.mp4", VFR_MS)
    seconds = [t / 1000 for t in VFR_MS]
    capture = cv2.VideoCapture(str(video))
    reader = video_io.FrameReader(capture)
    assert [t for _, t, _ in reader.timed()] == pytest.approx(seconds, abs=1e-6)
    assert reader.estimated_times == 0
    capture.release()

    seen: dict[int, list[float]] = {}
    one_euro_step = OneEuroFilter.step

    def recording(self, points, t=None, scale=None):
        seen.setdefault(id(self), []).append(t)
        return one_euro_step(self, points, t, scale)

    monkeypatch.setattr(OneEuroFilter, "step", recording)
    _fake_model(monkeypatch)
    out = tmp_path / "lm.csv"
    assert track(video, "--filter", "one-euro", "--out-csv", out) == 0
    assert [float(r["time"]) for r in _csv_rows(out)] == pytest.approx(seconds, abs=1e-4)
    # The one track's landmark filter got the file's times from its first frame on; its crop
    # filter too, after the untimed detector box that starts it.
    tracked = seconds[NO_FACE_FRAMES:]
    landmark_times, crop_times = sorted(seen.values(), key=lambda times: times[0] is None)
    assert landmark_times == pytest.approx(tracked, abs=1e-6)
    assert crop_times[0] is None and crop_times[1:] == pytest.approx(tracked, abs=1e-6)


def test_evaluate_video_feeds_the_container_timestamps_of_a_variable_frame_rate_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    video = write_vfr_mp4(tmp_path / "phone.mp4", VFR_MS)
    seconds = [t / 1000 for t in VFR_MS]
    capture = cv2.VideoCapture(str(video))
    nominal_fps = video_io.capture_fps(capture)
    capture.release()

    steps: list[tuple[float, float | None]] = []  # (the tracker's fps, the frame's timestamp)
    tracker_step = StreamingTracker.step

    def recording_step(self, frame, timestamp=None):
        steps.append((self.fps, timestamp))
        return tracker_step(self, frame, timestamp)

    filtered: list[tuple[str, list[float]]] = []  # (filter class, its timestamps)
    apply_filter = evaluate_video.apply_filter

    def recording_filter(filter, track, scale=None, timestamps=None):
        filtered.append((type(filter).__name__, list(timestamps)))
        return apply_filter(filter, track, scale, timestamps)

    monkeypatch.setattr(evaluate_video, "apply_filter", recording_filter)
    monkeypatch.setattr(StreamingTracker, "step", recording_step)
    _fake_model(monkeypatch, command=evaluate_video)
    out = tmp_path / "eval"
    assert cli_main(["evaluate-video", str(video), "--out", str(out), "--no-progress"]) == 0

    # The tracker ran at the file's nominal rate on every frame's container timestamp.
    assert [fps for fps, _ in steps] == [nominal_fps] * len(VFR_MS)
    assert [t for _, t in steps] == pytest.approx(seconds, abs=1e-6)
    # The classical filters (both One Euro presets, Kalman) ran on the timestamps of the frames
    # with a face, not on index / fps.
    tracked = seconds[NO_FACE_FRAMES:]
    assert [name for name, _ in filtered] == ["OneEuroFilter"] * 2 + ["ConstantVelocityKalman"]
    for _, times in filtered:
        assert times == pytest.approx(tracked, abs=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())["videos"]["phone.mp4"]
    assert metrics["frames"] == len(tracked) and metrics["first_frame"] == NO_FACE_FRAMES


# ----------------------------------------------------------------------------- overlay video


def test_label_pane_writes_in_the_top_left_corner_only() -> None:
    pane = np.full((360, 480, 3), 90, np.uint8)
    labelled = pane.copy()
    formats.label_pane(labelled, "stabilised")
    rows, columns = np.nonzero((labelled != pane).any(-1))
    assert len(rows) > 100
    assert rows.max() < 60 and columns.min() < 20 and columns.max() < 240
    text = labelled[rows, columns]
    assert text.min() < 10 and text.max() > 240  # white on a black outline (antialiased)


def test_overlay_is_labelled_h264_with_the_input_timing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    av = pytest.importorskip("av")
    video = write_vfr_mp4(tmp_path / "phone.mp4", VFR_MS)
    labels: list[str] = []
    label = formats.label_pane
    monkeypatch.setattr(formats, "label_pane", lambda image, text: (labels.append(text),
                                                                     label(image, text)))  # fmt: skip
    _fake_model(monkeypatch)
    overlay = tmp_path / "overlay.mp4"
    assert track(video, "--out-video", overlay) == 0
    assert labels == ["raw", "stabilised"] * len(VFR_MS)
    with av.open(str(overlay)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (128, 64)  # raw | stabilised
        frames = list(container.decode(stream))
    assert [float(f.pts * f.time_base) for f in frames] == pytest.approx(
        [t / 1000 for t in VFR_MS], abs=1e-3
    )
    # The label shows: the frame's top-left corner differs from the flat input.
    corner = frames[-1].to_ndarray(format="rgb24")[:20, :40].astype(int)
    assert np.abs(corner - (20 + 10 * (len(VFR_MS) - 1))).max() > 100


def test_without_h264_the_overlay_is_mjpg_avi_with_one_notice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(video_io, "have_h264", lambda: False)
    _fake_model(monkeypatch)
    assert track(write_mjpg_avi(tmp_path / "clip.avi"), "--out-video", tmp_path / "o.mp4") == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "overlay" in line] == [
        f"lightning-fa track: no H.264 encoder (pip install av); writing the overlay as MJPG "
        f"to {tmp_path / 'o.avi'}"
    ]
    assert not (tmp_path / "o.mp4").exists()
    capture = cv2.VideoCapture(str(tmp_path / "o.avi"))
    fourcc = int(capture.get(cv2.CAP_PROP_FOURCC))
    assert fourcc.to_bytes(4, "little") == b"MJPG"
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == len(VFR_MS)
    capture.release()


def test_an_overlay_extension_without_a_codec_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = write_mjpg_avi(tmp_path / "clip.avi")
    assert track(video, "--out-video", tmp_path / "o.webm") == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"lightning-fa track: --out-video {tmp_path / 'o.webm'}: unsupported extension "
        "'.webm'; use .mp4 (H.264, plays in browsers) or .avi (MJPG)"
    )


def test_h264_overlay_of_an_odd_sized_frame_gets_one_black_row(tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    path = tmp_path / "odd.mp4"
    writer = video_io.open_overlay(path, path, 25.0, (62, 47))  # yuv420p needs even sides
    for k in range(3):
        writer.write(np.full((47, 62, 3), 200, np.uint8), k / 25)
    writer.release()
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 3 and frames[0].shape == (48, 62, 3)
    assert frames[0][:40].mean() > 190 and frames[0][-1].mean() < 20
