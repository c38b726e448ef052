"""`track` and `evaluate-video` refuse bad input in one line (exit 2) and never lose an earlier
result: every case checks the exit code, that the message names the file or value, and that an
output written before the call is byte-identical afterwards. Plus: a run stopped in the middle
keeps its frames in a named partial file, a second writer of the same output is refused."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lightning_fa.backbones import HRNet
from lightning_fa.commands import evaluate_video
from lightning_fa.commands import track as track_command
from lightning_fa.commands.cli import main
from lightning_fa.outputs import OutputLock
from lightning_fa.systems.finetune import StableAlignmentModule
from lightning_fa.temporal import ConvLSTM
from lightning_fa.tracking import formats, loading, video_io
from lightning_fa.tracking.boxes import BoxCalibration
from lightning_fa.tracking.tracker import StreamingTracker
from tests.conftest import TINY_HRNET

EARLIER = b"frame,time\n0,0.0000\n"  # an earlier complete result, which no failure may touch
FRAMES = 10


def _write_video(path: Path, frames: int = FRAMES, size: int = 64) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (size, size))
    for k in range(frames):
        writer.write(np.full((size, size, 3), 20 + 10 * k, np.uint8))
    writer.release()
    return path


@pytest.fixture(scope="module")
def five_point(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fine-tuned checkpoint (written by Lightning, as `fit` writes them) of a tiny 5-point
    model, and its ONNX export: both are asked for 68 points below."""
    folder = tmp_path_factory.mktemp("five_point")
    torch.manual_seed(0)
    module = StableAlignmentModule(
        HRNet(5, TINY_HRNET, input_size=(32, 32)),
        ConvLSTM(5, hidden_channels=4, input_proj=4),
        store_backbone_weights=True,
    )
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(folder / "five.ckpt")
    paths = {"ckpt": folder / "five.ckpt"}
    if _has_onnxruntime():
        from lightning_fa.inference.onnx import export_onnx

        paths["onnx"] = export_onnx(module.eval(), folder / "five.onnx")
    return paths


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


# Each case: (argv after the command, given the tmp folder and the earlier output; the text the
# message must contain). `{v}` is a decodable tiny video, `{out}` the earlier output.
TRACK_CASES: dict[str, tuple[list[str], str]] = {
    "min-confidence-nan": (["{v}", "--min-confidence", "nan"], "--min-confidence must be a number in [0, 1], got nan"),
    "min-confidence-above-1": (["{v}", "--min-confidence", "1.5"], "--min-confidence must be a number in [0, 1], got 1.5"),
    "min-confidence-negative": (["{v}", "--min-confidence", "-0.1"], "got -0.1"),
    "max-frames-negative": (["{v}", "--max-frames", "-5"], "--max-frames must be >= 1, got -5"),
    "max-frames-zero": (["{v}", "--max-frames", "0"], "--max-frames must be >= 1, got 0"),
    "max-faces-zero": (["{v}", "--max-faces", "0"], "--max-faces must be >= 1, got 0"),
    "redetect-every-zero": (["{v}", "--redetect-every", "0"], "--redetect-every must be >= 1, got 0"),
    "device-not-a-device": (["{v}", "--device", "gpu7"], "--device 'gpu7' is not a device"),
    "video-missing": (["{tmp}/missing.mp4"], "missing.mp4"),
    "video-empty": (["{tmp}/empty.avi"], "empty.avi is empty"),
    "video-is-text": (["{tmp}/notes.mp4"], "notes.mp4 is not a video"),
    "video-is-a-folder": (["{tmp}"], "is a directory"),
    "camera-that-cannot-open": (["97"], "cannot open camera 97"),
    "checkpoint-missing": (["{v}", "--checkpoint", "{tmp}/none.ckpt"], "none.ckpt"),
    "output-is-the-input": (["{v}", "--out-json", "{v}"], "--out-json"),
    "output-given-twice": (["{v}", "--out-json", "{out}"], "--out-json {out} is also --out-csv"),
    "output-folder-is-a-file": (["{v}", "--out-json", "{out}/sub/x.json"], "--out-json"),
}  # fmt: skip
if not torch.cuda.is_available():
    TRACK_CASES["device-cuda-without-cuda"] = (
        ["{v}", "--device", "cuda"],
        "--device cuda: CUDA is not available",
    )

EVALUATE_CASES: dict[str, tuple[list[str], str]] = {
    "video-missing": (["{tmp}/missing.mp4"], "missing.mp4"),
    "video-is-text": (["{tmp}/notes.mp4"], "notes.mp4 is not a video"),
    "same-video-twice": (["{v}", "{v}"], "clip.avi is given twice"),
    "max-frames-zero": (["{v}", "--max-frames", "0"], "--max-frames must be >= 1, got 0"),
    "cutoff-nan": (["{v}", "--cutoff-hz", "nan"], "--cutoff-hz must be a positive number, got nan"),
    "device-not-a-device": (["{v}", "--device", "gpu7"], "--device 'gpu7' is not a device"),
    "checkpoint-missing": (["{v}", "--checkpoint", "{tmp}/none.ckpt"], "none.ckpt"),
    "cutoff-above-nyquist": (["{v}", "--cutoff-hz", "12.5"], "half the frame rate of"),
}  # fmt: skip


def _inputs(tmp_path: Path) -> dict[str, str]:
    """The tiny video and the bad files the cases name."""
    (tmp_path / "empty.avi").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("this is not a video")
    return {"v": str(_write_video(tmp_path / "clip.avi")), "tmp": str(tmp_path)}


def _fill(argv: list[str], values: dict[str, str]) -> list[str]:
    return [a.format(**values) for a in argv]


def _expect_refusal(argv: list[str], expected: str, earlier: list[Path], capsys) -> str:
    """Run `lightning-fa ARGV`: exit 2, one line naming `expected`, earlier outputs intact."""
    before = {path: path.read_bytes() for path in earlier}
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err
    assert len(err.splitlines()) == 1, err
    for path, content in before.items():
        assert path.read_bytes() == content, f"{path} changed"
    return err


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every refusal below happens before a model is loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded although the input is bad")

    monkeypatch.setattr(loading, "_load_module", refuse)


@pytest.mark.parametrize("case", TRACK_CASES)
def test_track_refuses(case: str, tmp_path: Path, no_model, capsys) -> None:
    argv, expected = TRACK_CASES[case]
    out = tmp_path / "landmarks.csv"
    out.write_bytes(EARLIER)
    values = {**_inputs(tmp_path), "out": str(out)}
    earlier = [out, Path(values["v"])]
    argv = ["track", *_fill(argv, values), "--out-csv", str(out)]
    _expect_refusal(argv, expected.format(**values), earlier, capsys)


@pytest.mark.parametrize("case", EVALUATE_CASES)
def test_evaluate_video_refuses(case: str, tmp_path: Path, no_model, capsys) -> None:
    argv, expected = EVALUATE_CASES[case]
    out = tmp_path / "eval"
    out.mkdir()
    earlier = [out / "metrics.json", out / "report.md"]
    for path in earlier:
        path.write_bytes(EARLIER)
    argv = ["evaluate-video", *_fill(argv, _inputs(tmp_path)), "--out", str(out)]
    _expect_refusal(argv, expected, earlier, capsys)


def test_evaluate_video_out_that_is_a_file(tmp_path: Path, no_model, capsys) -> None:
    out = tmp_path / "eval"
    out.write_bytes(EARLIER)
    video = _inputs(tmp_path)["v"]
    _expect_refusal(["evaluate-video", video, "--out", str(out)], "--out", [out], capsys)


@pytest.mark.parametrize("engine", ["torch", "onnx"])
@pytest.mark.parametrize("command", ["track", "evaluate-video"])
def test_landmark_count_mismatch_names_both_counts(
    command: str, engine: str, five_point: dict[str, Path], tmp_path: Path, capsys
) -> None:
    if engine not in five_point and engine == "onnx":
        pytest.skip("onnxruntime not installed")
    model = five_point["ckpt" if engine == "torch" else "onnx"]
    video = _inputs(tmp_path)["v"]
    out = tmp_path / ("landmarks.csv" if command == "track" else "metrics.json")
    out.write_bytes(EARLIER)
    outputs = ["--out-csv", str(out)] if command == "track" else ["--out", str(tmp_path)]
    argv = [command, video, "--checkpoint", str(model), "--engine", engine,
            "--num-landmarks", "68", *outputs]  # fmt: skip
    err = _expect_refusal(argv, f"{model} predicts 5 landmarks", [out], capsys)
    assert "--num-landmarks is 68" in err


def test_evaluate_video_without_a_face_names_the_video(tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_bytes(EARLIER)
    video = _write_video(tmp_path / "blank.avi", frames=4)  # grey frames: no face anywhere
    argv = ["evaluate-video", str(video), "--backbone", "hrnet_lite", "--detector", "haar",
            "--out", str(out), "--no-progress"]  # fmt: skip
    _expect_refusal(
        argv, f"{video}: no face was found in any frame", [out / "metrics.json"], capsys
    )
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]  # no empty report.md


def test_a_second_writer_of_the_same_csv_is_refused(tmp_path: Path, no_model, capsys) -> None:
    out = tmp_path / "landmarks.csv"
    out.write_bytes(EARLIER)
    video = _inputs(tmp_path)["v"]
    with OutputLock(out):  # another run is writing it
        _expect_refusal(
            ["track", video, "--out-csv", str(out)], f"{out} is being written by another run",
            [out], capsys,
        )  # fmt: skip


def test_a_second_evaluate_video_into_the_same_folder_is_refused(
    tmp_path: Path, no_model, capsys
) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_bytes(EARLIER)
    video = _inputs(tmp_path)["v"]
    with OutputLock(out / "metrics.json"):
        _expect_refusal(
            ["evaluate-video", video, "--out", str(out)], "is being written by another run",
            [out / "metrics.json"], capsys,
        )  # fmt: skip


# ----------------------------------------------------------------------------- the API


@pytest.mark.parametrize(
    "call, expected",
    [
        (lambda s: StreamingTracker(s, lambda f: np.zeros((0, 5)), min_confidence=float("nan")),
         "min_confidence must be a number in [0, 1], got nan"),
        (lambda s: StreamingTracker(s, lambda f: np.zeros((0, 5)), max_faces=0),
         "max_faces must be >= 1, got 0"),
        (lambda s: video_io.FrameReader(cv2.VideoCapture(), max_frames=-5),
         "max_frames must be >= 1, got -5"),
        (lambda s: loading.load_step(None, "hrnet_lite", device="gpu7"), "'gpu7' is not a device"),
        (lambda s: loading.load_step(None, "hrnet_lite", num_landmarks=0),
         "--num-landmarks must be >= 1, got 0"),
    ],
    ids=["tracker-min-confidence", "tracker-max-faces", "reader-max-frames", "step-device",
         "step-num-landmarks"],
)  # fmt: skip
def test_api_refuses(call: Callable, expected: str) -> None:
    with pytest.raises(ValueError) as error:
        call(_FakeStep())
    assert expected in str(error.value)


def test_api_load_step_refuses_a_mismatched_checkpoint(five_point: dict[str, Path]) -> None:
    with pytest.raises(
        ValueError, match=r"five\.ckpt predicts 5 landmarks, but --num-landmarks is 68"
    ):
        loading.load_step(five_point["ckpt"], num_landmarks=68)
    assert loading.load_step(five_point["ckpt"]).num_landmarks == 5  # its own count by default


# ----------------------------------------------------------------------------- interrupted runs


class _FakeStep:
    """A model stand-in: landmarks fill the middle of the crop (so the crop stays put),
    confidence 1."""

    input_size = (32, 32)
    num_landmarks = 68

    def init_state(self, batch: int, device=None) -> list[torch.Tensor]:
        return [torch.zeros(batch, 1)]

    def __call__(self, images: torch.Tensor, state: torch.Tensor):
        grid = torch.linspace(3.2, 27.8, 68)  # spans 24.6 / 32 of the crop: a steady box
        coords = torch.stack([grid, grid.flip(0)], -1).expand(images.shape[0], 68, 2)
        return coords, coords, torch.ones(images.shape[0]), state + 1


class _FixedDetector:
    calibration = BoxCalibration(dy=0.0, scale=1.0)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return np.array([[16.0, 16.0, 48.0, 48.0, 1.0]])


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(track_command, "load_step", lambda *args, **kwargs: _FakeStep())
    monkeypatch.setattr(track_command, "make_detector", lambda name: _FixedDetector())


def _stop_at(
    monkeypatch: pytest.MonkeyPatch, frame: int, failure: BaseException, partial: Path, seen: list
) -> None:
    """Make the tracker raise `failure` when it is handed frame number `frame`; `seen` gets the
    rows of the `partial` CSV as they are on disk at that moment."""
    step = StreamingTracker.step

    def stopping(self, image, timestamp=None):
        if self.frame_index + 1 == frame:
            seen.extend(_rows(partial))
            raise failure
        return step(self, image, timestamp)

    monkeypatch.setattr(StreamingTracker, "step", stopping)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(
    "failure", [KeyboardInterrupt(), RuntimeError("crash")], ids=["ctrl-c", "crash"]
)
def test_a_stopped_run_keeps_earlier_outputs_and_its_frames_in_partial_files(
    failure: BaseException, tmp_path: Path, fake_model, monkeypatch, capsys
) -> None:
    out_csv, out_json = tmp_path / "landmarks.csv", tmp_path / "landmarks.json"
    out_csv.write_bytes(EARLIER)
    out_json.write_bytes(b'{"earlier": true}')
    video = _inputs(tmp_path)["v"]
    k = 6
    on_disk: list = []
    monkeypatch.setattr(formats, "FLUSH_SECONDS", 0.0)  # every frame reaches the disk at once
    partial_csv = tmp_path / "landmarks.partial.csv"
    partial_json = tmp_path / "landmarks.partial.jsonl"
    _stop_at(monkeypatch, k, failure, partial_csv, on_disk)
    argv = ["track", video, "--out-csv", str(out_csv), "--out-json", str(out_json), "--no-progress"]
    if isinstance(failure, KeyboardInterrupt):
        assert main(argv) == 130
    else:
        with pytest.raises(RuntimeError, match="crash"):
            main(argv)
    assert out_csv.read_bytes() == EARLIER
    assert out_json.read_bytes() == b'{"earlier": true}'
    assert [int(r["frame"]) for r in on_disk] == list(range(k))  # flushed before the stop
    rows = _rows(partial_csv)
    assert [int(r["frame"]) for r in rows] == list(range(k))
    assert list(rows[0]) == formats.csv_header(68)
    assert all(r["track_id"] == "0" and float(r["confidence"]) == 1.0 for r in rows)
    lines = partial_json.read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == list(range(k))
    err = capsys.readouterr().err
    assert (
        f"stopped after {k} frames" in err and str(partial_csv) in err and str(partial_json) in err
    )
    # Nothing else is left behind: no temporary files, no locks.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["clip.avi", "empty.avi", "notes.mp4", "landmarks.csv", "landmarks.json",
         "landmarks.partial.csv", "landmarks.partial.jsonl"]
    )  # fmt: skip


def test_a_complete_run_replaces_outputs_and_removes_partial_files(
    tmp_path: Path, fake_model, capsys
) -> None:
    out_csv, out_json = tmp_path / "landmarks.csv", tmp_path / "landmarks.json"
    out_video = tmp_path / "overlay.avi"
    for path in (out_csv, out_json, out_video):
        path.write_bytes(EARLIER)
    (tmp_path / "landmarks.partial.csv").write_text("left by a run that was stopped\n")
    video = _write_video(tmp_path / "clip.avi")
    argv = ["track", str(video), "--out-csv", str(out_csv), "--out-json", str(out_json),
            "--out-video", str(out_video), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clip.avi", "landmarks.csv", "landmarks.json", "overlay.avi"
    ]  # fmt: skip
    rows = _rows(out_csv)
    assert [int(r["frame"]) for r in rows] == list(range(FRAMES))
    document = json.loads(out_json.read_text())
    # The schema of the document written in one piece before frames were streamed.
    assert list(document) == ["source", "fps", "frames", "frames_with_face", "skipped_frames",
                              "seconds", "fps_processed", "num_landmarks"]  # fmt: skip
    assert document["source"] == str(video) and document["num_landmarks"] == 68
    assert [f["frame"] for f in document["frames"]] == list(range(FRAMES))
    assert [f["time"] for f in document["frames"]] == [round(k / 25.0, 4) for k in range(FRAMES)]
    first = document["frames"][0]["faces"][0]
    assert list(first) == ["track_id", "confidence", "landmarks", "raw"]
    for k, row in enumerate(rows):  # the JSON's final landmarks are the CSV's
        face = document["frames"][k]["faces"][0]
        csv_points = [float(row[c]) for c in formats.csv_header(68)[4:]]
        np.testing.assert_allclose(np.ravel(face["landmarks"]), csv_points, atol=1e-3)
    overlay = cv2.VideoCapture(str(out_video))
    assert int(overlay.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    assert int(overlay.get(cv2.CAP_PROP_FRAME_WIDTH)) == 2 * 64
    overlay.release()


def test_evaluate_video_keys_same_named_videos_by_their_folders(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mp4"
    other = tmp_path / "b" / "other.mp4"
    assert evaluate_video.video_keys([str(a), str(b), str(other)]) == [
        "a/clip.mp4", "b/clip.mp4", "other.mp4"
    ]  # fmt: skip
    deep = [tmp_path / "x" / "s" / "clip.mp4", tmp_path / "y" / "s" / "clip.mp4"]
    assert evaluate_video.video_keys([str(p) for p in deep]) == ["x/s/clip.mp4", "y/s/clip.mp4"]
