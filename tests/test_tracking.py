"""Streaming tracker: end to end on a real clip, blank frames, faces leaving, bad input, state
per track."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lightning_fa.commands import track as track_command
from lightning_fa.commands.cli import main as cli_main
from lightning_fa.tracking import video_io
from lightning_fa.tracking.boxes import BoxCalibration, box_iou
from lightning_fa.tracking.formats import csv_header
from lightning_fa.tracking.tracker import StreamingTracker
from lightning_fa.tracking.video_io import FrameReader


def main(argv: list[str]) -> int:
    """`lightning-fa track ...` as a user runs it: user errors become one line and exit 2."""
    return cli_main(["track", *argv])


def evaluate_main(argv: list[str]) -> int:
    return cli_main(["evaluate-video", *argv])


CLIP = "videos/WDA_KatieHill_000.mp4"


def _needs_dlib() -> None:
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")


def _read_frames(path: Path, count: int, size: int | None = None) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    for _ in range(count):
        ok, frame = capture.read()
        assert ok
        frames.append(cv2.resize(frame, (size, size)) if size else frame)
    capture.release()
    return frames


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- real clip


@pytest.mark.slow
def test_track_real_clip_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    _needs_dlib()
    import dlib
    import face_recognition_models

    frames = 8
    out = {k: tmp_path / f"out.{k}" for k in ("csv", "json", "mp4")}
    code = main(
        [str(shared_data / CLIP), "--backbone", "dlib", "--max-frames", str(frames),
         "--filter", "one-euro", "--out-csv", str(out["csv"]), "--out-json", str(out["json"]),
         "--out-video", str(out["mp4"]), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    rows = _csv_rows(out["csv"])
    assert list(rows[0]) == csv_header(68)
    assert [int(r["frame"]) for r in rows] == list(range(frames))
    assert all(float(r["confidence"]) > 0.5 and r["track_id"] == "0" for r in rows)

    document = json.loads(out["json"].read_text())
    assert document["frames_with_face"] == frames and document["skipped_frames"] == 0
    raw = np.array([f["faces"][0]["raw"] for f in document["frames"]])
    final = np.array([f["faces"][0]["landmarks"] for f in document["frames"]])
    np.testing.assert_allclose(
        final.reshape(frames, -1), [[float(r[c]) for c in csv_header(68)[4:]] for r in rows],
        atol=1e-3,
    )  # fmt: skip

    # Independent reference: dlib's detector + 68-point predictor on the full frames.
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    reference = []
    for frame in _read_frames(shared_data / CLIP, frames):
        rgb = np.ascontiguousarray(frame[..., ::-1])
        shape = predictor(rgb, detector(rgb, 0)[0])
        reference.append([(p.x, p.y) for p in shape.parts()])
    reference = np.asarray(reference, dtype=np.float64)
    iod = np.linalg.norm(reference[:, 36] - reference[:, 45], axis=-1).mean()
    assert np.linalg.norm(raw - reference, axis=-1).mean() < 0.03 * iod

    video = cv2.VideoCapture(str(out["mp4"]))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == frames
    assert int(video.get(cv2.CAP_PROP_FRAME_WIDTH)) == 2 * 512  # raw | stabilised


@pytest.mark.slow
def test_blank_frames_and_face_leaving_give_confidence_zero(
    shared_data: Path, tmp_path: Path
) -> None:
    _needs_dlib()
    real = _read_frames(shared_data / CLIP, 4, size=256)
    leaving = [
        cv2.warpAffine(real[-1], np.float32([[1, 0, dx], [0, 1, 0]]), (256, 256))
        for dx in (80, 160, 250)
    ]
    blank = [np.zeros_like(real[0])] * 3
    frames = [*real, *leaving, *blank, *real[:2]]
    path = _write_video(tmp_path / "gaps.avi", frames)
    out_csv = tmp_path / "gaps.csv"
    code = main(
        [str(path), "--backbone", "dlib", "--redetect-every", "1", "--out-csv", str(out_csv),
         "--no-progress"]
    )  # fmt: skip
    assert code == 0
    rows = _csv_rows(out_csv)
    assert len(rows) == len(frames)
    confidence = np.array([float(r["confidence"]) for r in rows])
    coords = np.array([[float(r[c]) for c in csv_header(68)[4:]] for r in rows])
    blank_rows = slice(7, 10)
    assert (confidence[blank_rows] == 0).all()
    assert np.isnan(coords[blank_rows]).all()
    assert [r["track_id"] for r in rows[blank_rows]] == ["-1"] * 3
    assert (confidence[:4] > 0.5).all() and (confidence[-2:] > 0.5).all()
    assert rows[-1]["track_id"] != rows[0]["track_id"]  # a new track after the gap
    assert confidence[6] == 0  # the face has left the frame


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_fail_with_clear_errors(tmp_path: Path, capsys) -> None:
    out = ["--out-csv", str(tmp_path / "x.csv")]
    assert main([str(tmp_path / "missing.mp4"), *out]) == 2
    assert "not found" in capsys.readouterr().err
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    assert main([str(text), *out]) == 2
    assert "not a video" in capsys.readouterr().err
    assert main(["97", *out]) == 2
    assert "cannot open camera 97" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="input video not found"):
        video_io.open_capture(str(tmp_path / "missing.mp4"))


def test_unwritable_output_fails_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    video = _write_video(tmp_path / "v.avi", [np.zeros((64, 64, 3), np.uint8)] * 3)
    blocker = tmp_path / "a_file"
    blocker.write_text("")

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded when an output is unwritable")

    monkeypatch.setattr(track_command, "load_step", no_model)
    code = main([str(video), "--out-json", str(blocker / "sub" / "out.json")])
    assert code == 2
    assert "--out-json" in capsys.readouterr().err


class _StubCapture:
    """read() results from a script; get() answers the frame count."""

    def __init__(self, script: list[bool], frame_count: int) -> None:
        self.script = list(script)
        self.frame_count = frame_count

    def read(self):
        if not self.script:
            return False, None
        ok = self.script.pop(0)
        return (True, np.zeros((4, 4, 3), np.uint8)) if ok else (False, None)

    def get(self, prop):
        return self.frame_count if prop == cv2.CAP_PROP_FRAME_COUNT else 0


def test_frame_reader_skips_and_counts_corrupt_frames() -> None:
    reader = FrameReader(_StubCapture([True, False, False, True, True], frame_count=5))
    assert [index for index, _, _ in reader.timed()] == [0, 3, 4]
    assert reader.skipped == 2
    # A failure at the end of the file is the end, not a corrupt frame.
    reader = FrameReader(_StubCapture([True, True], frame_count=2))
    assert len(list(reader.timed())) == 2 and reader.skipped == 0
    reader = FrameReader(_StubCapture([True] * 5, frame_count=5), max_frames=3)
    assert len(list(reader.timed())) == 3


# ----------------------------------------------------------------------------- tracker logic


class _CountingStep:
    """A fake model: landmarks fill the crop's middle; the state counts the frames seen."""

    input_size = (32, 32)
    num_landmarks = 68

    def init_state(self, batch: int, device=None) -> list[torch.Tensor]:
        return [torch.zeros(batch, 1)]

    def __call__(self, images: torch.Tensor, count: torch.Tensor):
        batch = images.shape[0]
        grid = torch.linspace(3.2, 27.8, 68)  # the landmark box spans 24.6 / 32 of the crop
        coords = torch.stack([grid, grid.flip(0)], -1).expand(batch, 68, 2)
        return coords, coords, torch.ones(batch), count + 1


class _ScriptedDetector:
    calibration = BoxCalibration(dy=0.0, scale=1.0)

    def __init__(self, script: list[list[tuple[float, float, float, float]]]) -> None:
        self.script = script
        self.calls = 0

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        boxes = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return np.array([[*b, 1.0] for b in boxes], dtype=np.float64).reshape(-1, 5)


def test_each_track_carries_its_own_state_and_new_tracks_start_fresh() -> None:
    left, right = (10, 10, 60, 60), (100, 10, 150, 60)
    script = [[left], [left, right], [left, right], [right], [right], [left, right]]
    tracker = StreamingTracker(
        _CountingStep(), _ScriptedDetector(script), max_faces=2, redetect_every=1
    )
    frame = np.zeros((80, 200, 3), np.uint8)
    seen = []
    for _ in script:
        tracker.step(frame)
        seen.append({t.track_id: int(t.state[0]) for t in tracker.tracks})
    # Track 0 (left) runs frames 0-2, track 1 (right) from frame 1 on, the left face comes back
    # at frame 5 as track 2 with a fresh state.
    assert seen == [{0: 1}, {0: 2, 1: 1}, {0: 3, 1: 2}, {1: 3}, {1: 4}, {1: 5, 2: 1}]


def test_max_faces_keeps_the_largest_detections() -> None:
    small, large = (10, 10, 40, 40), (100, 10, 180, 90)
    tracker = StreamingTracker(_CountingStep(), _ScriptedDetector([[small, large]]), max_faces=1)
    results = tracker.step(np.zeros((120, 200, 3), np.uint8))
    assert len(results) == 1
    assert results[0].landmarks[:, 0].mean() > 100  # the large face on the right


def test_box_iou_closed_form() -> None:
    a = np.array([[0.0, 0.0, 2.0, 2.0]])
    b = np.array([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 2.0, 2.0]])
    np.testing.assert_allclose(box_iou(a, b), [[1 / 7, 0.0, 1.0]])


# ----------------------------------------------------------------------------- evaluate-video


def test_velocity_lag_recovers_a_known_delay() -> None:
    from lightning_fa.commands.evaluate_video import MAX_LAG
    from lightning_fa.metrics.tracks import lag

    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.normal(size=(80, 3, 2)), axis=0)
    for delay in (-3, 0, 2, 5):
        delayed = np.roll(walk, delay, axis=0)[10:-10]  # delayed_t = walk_{t - delay}
        assert lag(delayed, walk[10:-10], MAX_LAG, match="velocity") == delay


def test_evaluate_tracks_orders_methods_sensibly() -> None:
    from lightning_fa.commands.evaluate_video import evaluate_tracks

    rng = np.random.default_rng(1)
    t = np.arange(150)[:, None] / 25.0
    clean = np.stack([200 + 30 * np.sin(2 * np.pi * 0.5 * t), 220 + 0 * t], -1)
    clean = clean + np.linspace(0, 60, 68)[None, :, None]  # 68 distinct points
    raw = clean + rng.normal(0, 1.5, clean.shape)
    raw[:5] = np.nan  # no face yet: evaluated from the first tracked frame on
    result = evaluate_tracks(raw, raw.copy(), fps=25.0)
    methods = result["methods"]
    assert result["frames"] == 145 and result["first_frame"] == 5
    assert methods["offline"]["deviation"] == 0 and methods["offline"]["lag"] == 0
    assert methods["ours"] == methods["raw"]  # an untrained stage is the identity
    assert methods["raw"]["lag"] == 0
    for name in ("one-euro", "one-euro-mediapipe", "kalman", "offline"):
        assert methods[name]["accel"] < methods["raw"]["accel"]
    # Accel checked against the literal formula.
    finite = raw[5:]
    accel = np.linalg.norm(finite[2:] - 2 * finite[1:-1] + finite[:-2], axis=-1).mean()
    assert methods["raw"]["accel"] == pytest.approx(accel)


def test_evaluate_tracks_places_ours_against_every_filter_setting() -> None:
    from lightning_fa.commands.evaluate_video import evaluate_tracks

    rng = np.random.default_rng(2)
    t = np.arange(120)[:, None] / 25.0
    clean = np.stack([200 + 30 * np.sin(2 * np.pi * 0.5 * t), 220 + 0 * t], -1)
    clean = clean + np.linspace(0, 60, 68)[None, :, None]
    raw = clean + rng.normal(0, 1.5, clean.shape)
    identity = evaluate_tracks(raw, raw.copy(), fps=25.0)
    position = identity["frontier"]
    assert position["settings"] == 70
    # An untrained stage is raw: some setting is closer to the offline track with less Accel.
    assert position["dominated"] and position["verdict"].startswith("dominated by ")
    assert set(identity["tracks"]) == {"raw", "one-euro", "one-euro-mediapipe", "kalman", "ours", "offline"}  # fmt: skip
    np.testing.assert_array_equal(identity["tracks"]["ours"], raw)
    # Ours = the offline track itself: no causal setting can match a deviation of 0.
    offline = identity["tracks"]["offline"]
    perfect = evaluate_tracks(raw, offline, fps=25.0)["frontier"]
    assert not perfect["dominated"] and perfect["verdict"].startswith("not dominated")


@pytest.mark.slow
def test_evaluate_video_writes_metrics(shared_data: Path, tmp_path: Path) -> None:
    _needs_dlib()
    out = tmp_path / "eval"
    code = evaluate_main(
        [str(shared_data / "videos/liveportrait_d0.mp4"), "--max-frames", "12", "--out", str(out)]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["mean"]) == {"raw", "one-euro", "one-euro-mediapipe", "kalman", "ours",
                                    "offline"}  # fmt: skip
    assert metrics["videos"]["liveportrait_d0.mp4"]["frames"] == 12
    assert "| raw |" in (out / "report.md").read_text()
    with np.load(out / "tracks.npz") as tracks:
        assert tracks["liveportrait_d0.mp4/ours"].shape == (12, 68, 2)
    assert "swept filters" in (out / "report.md").read_text()


def test_evaluate_video_bad_input(tmp_path: Path, capsys) -> None:
    assert evaluate_main([str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
