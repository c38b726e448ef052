"""The shipped dlib stabiliser, `track`'s refusal of untrained models, and `lightning_fa.Tracker`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import lightning.pytorch as pl
import numpy as np
import pytest
import torch

import lightning_fa
from lightning_fa.backbones import HRNet
from lightning_fa.backbones.base import require_plain_data
from lightning_fa.commands.cli import main as cli_main
from lightning_fa.systems.finetune import StableAlignmentModule
from lightning_fa.temporal import (
    TEMPORAL_STAGES,
    ConvLSTM,
    FaceMotionStage,
    LandmarkWiseConvLSTM,
    build_temporal_stage,
)
from lightning_fa.tracking.loading import is_identity_stage
from lightning_fa.tracking.shipped import FORMAT_VERSION, SHIPPED_DLIB_STAGE, read_stage_file
from tests.conftest import TINY_HRNET

CLIP = "videos/liveportrait_d0.mp4"


def _needs_dlib() -> None:
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")


def _grey_video(path: Path, frames: int = 3) -> Path:
    """Frames without a face: the detector finds nothing, so no model ever runs on them."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 64))
    for _ in range(frames):
        writer.write(np.full((64, 64, 3), 127, np.uint8))
    writer.release()
    return path


# ----------------------------------------------------------------------------- the shipped file


def test_shipped_stage_is_small_plain_data_and_builds_the_registered_stage() -> None:
    assert SHIPPED_DLIB_STAGE.stat().st_size < 20_000
    contents = torch.load(SHIPPED_DLIB_STAGE, map_location="cpu", weights_only=True)
    assert contents["format_version"] == FORMAT_VERSION
    assert contents["temporal_stage"] in TEMPORAL_STAGES
    state = contents.pop("state_dict")
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    require_plain_data(contents, "stage file")  # everything else: plain data, no class
    stage = build_temporal_stage(contents["temporal_stage"], contents["temporal_config"], "x")
    stage.load_state_dict(state, strict=True)
    assert not is_identity_stage(stage, contents["temporal_config"]["num_landmarks"])
    assert len(contents["training"]["config_sha256"]) == 64
    assert sorted(contents["training"]["videos"]) == [
        "WDA_KatieHill_000.mp4", "liveportrait_d0.mp4", "liveportrait_d3.mp4"
    ]  # fmt: skip


def test_shipped_stage_names_the_installed_dlib_model() -> None:
    face_recognition_models = pytest.importorskip("face_recognition_models")
    from lightning_fa.outputs import file_sha256

    model = Path(face_recognition_models.pose_predictor_model_location())
    recorded = read_stage_file(SHIPPED_DLIB_STAGE)["dlib_model"]
    assert recorded == {"file": model.name, "bytes": model.stat().st_size,
                        "sha256": file_sha256(model)}  # fmt: skip


def test_a_stage_file_of_another_format_or_with_code_is_refused(tmp_path: Path) -> None:
    contents = torch.load(SHIPPED_DLIB_STAGE, weights_only=True)
    newer = tmp_path / "newer.pt"
    torch.save({**contents, "format_version": FORMAT_VERSION + 1}, newer)
    with pytest.raises(
        ValueError, match=rf"{newer} is a stage file of format {FORMAT_VERSION + 1}"
    ):
        read_stage_file(newer)
    code = tmp_path / "code.pt"
    torch.save({**contents, "training": {"hook": print}}, code)  # a pickled callable
    with pytest.raises(ValueError, match="weights_only"):
        read_stage_file(code)


def test_importing_the_package_stays_cheap() -> None:
    probe = "import sys, lightning_fa; print('torch' in sys.modules, 'cv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    from lightning_fa.api import Tracker

    assert lightning_fa.Tracker is Tracker


# ----------------------------------------------------------------------------- refusals


def test_track_refuses_a_backbone_with_random_weights_unless_allowed(
    tmp_path: Path, capsys
) -> None:
    video = _grey_video(tmp_path / "grey.avi")
    out = tmp_path / "lm.csv"
    argv = ["track", str(video), "--backbone", "hrnet_lite", "--detector", "haar",
            "--out-csv", str(out), "--no-progress"]  # fmt: skip
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "--backbone hrnet_lite without --checkpoint has random weights" in err
    assert "--allow-untrained" in err
    assert not out.exists()
    assert cli_main([*argv, "--allow-untrained"]) == 0
    assert len(out.read_text().splitlines()) == 1 + 3  # header + one no-face row per frame


def test_track_refuses_a_checkpoint_whose_stage_is_untrained(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    module = StableAlignmentModule(
        HRNet(5, TINY_HRNET, input_size=(32, 32)),
        ConvLSTM(5, hidden_channels=4, input_proj=4),  # zero read-out: the identity
        store_backbone_weights=True,
    )
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    ckpt = tmp_path / "untrained.ckpt"
    trainer.save_checkpoint(ckpt)
    video = _grey_video(tmp_path / "grey.avi")
    argv = ["track", str(video), "--checkpoint", str(ckpt), "--detector", "haar",
            "--out-csv", str(tmp_path / "lm.csv"), "--no-progress"]  # fmt: skip
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"{ckpt}: the stabiliser is untrained" in err and len(err.splitlines()) == 1
    assert cli_main([*argv, "--allow-untrained"]) == 0


def test_python_api_refuses_random_weights_unless_allowed() -> None:
    with pytest.raises(ValueError, match="random weights"):
        lightning_fa.Tracker(backbone="hrnet_lite", detector="haar")
    tracker = lightning_fa.Tracker(backbone="hrnet_lite", detector="haar", allow_untrained=True)
    assert tracker(np.full((64, 64, 3), 127, np.uint8)) == []  # no face
    tracker.reset()
    calls = []
    tracker = lightning_fa.Tracker(
        backbone="hrnet_lite", detector=lambda rgb: calls.append(rgb.shape) or np.zeros((0, 5)),
        allow_untrained=True,
    )  # fmt: skip
    assert tracker(np.zeros((48, 40, 3), np.uint8)) == [] and calls == [(48, 40, 3)]


def test_a_trained_stage_is_not_the_identity() -> None:
    stage = LandmarkWiseConvLSTM(3, hidden_channels=2)
    assert is_identity_stage(stage, 3)
    with torch.no_grad():
        stage.proj.bias.fill_(1e-3)
    assert not is_identity_stage(stage, 3)


@pytest.mark.parametrize("hold_threshold", [None, 3.0])
def test_an_untrained_stage_that_renders_its_maps_is_the_identity(hold_threshold) -> None:
    # FaceMotionStage returns new maps even untrained, decoding to the backbone's points; its
    # still hold changes them untrained too, and is not what makes a stage trained.
    stage = FaceMotionStage(3, hold_threshold=hold_threshold)
    assert is_identity_stage(stage, 3)
    with torch.no_grad():
        stage.strength.fill_(0.5)
    assert not is_identity_stage(stage, 3)
    assert (stage.hold is None) == (hold_threshold is None)  # the stage keeps its hold


# ----------------------------------------------------------------------------- real footage


@pytest.mark.slow
def test_tracker_on_a_real_frame_gives_dlib_points(shared_data: Path) -> None:
    _needs_dlib()
    import dlib
    import face_recognition_models

    capture = cv2.VideoCapture(str(shared_data / CLIP))
    ok, bgr = capture.read()
    capture.release()
    assert ok
    frame = np.ascontiguousarray(bgr[..., ::-1])
    faces = lightning_fa.Tracker()(frame)
    assert len(faces) == 1
    face = faces[0]
    assert face.landmarks.shape == (68, 2) and face.track_id == 0 and face.confidence > 0.5
    # Independent reference: dlib's detector + 68-point predictor on the full frame.
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    rect = dlib.get_frontal_face_detector()(frame, 0)[0]
    reference = np.array([(p.x, p.y) for p in predictor(frame, rect).parts()], dtype=np.float64)
    iod = np.linalg.norm(reference[36] - reference[45])
    assert np.linalg.norm(face.landmarks - reference, axis=-1).mean() < 0.05 * iod


@pytest.mark.slow
def test_track_without_checkpoint_runs_the_shipped_stage(
    shared_data: Path, tmp_path: Path, capsys
) -> None:
    _needs_dlib()
    out = tmp_path / "lm.json"
    argv = ["track", str(shared_data / CLIP), "--max-frames", "6", "--out-json", str(out),
            "--no-progress"]  # fmt: skip
    assert cli_main(argv) == 0
    assert f"stabiliser: shipped dlib stage ({SHIPPED_DLIB_STAGE})" in capsys.readouterr().out
    faces = [frame["faces"][0] for frame in json.loads(out.read_text())["frames"]]
    assert len(faces) == 6
    shift = [np.abs(np.subtract(f["landmarks"], f["raw"])).max() for f in faces]
    assert max(shift) > 0.05  # not the identity: the stage moves the raw points
    assert max(shift) < 10.0  # but stays on the face


@pytest.mark.slow
def test_tracker_track_yields_every_frame(shared_data: Path) -> None:
    _needs_dlib()
    results = list(lightning_fa.Tracker().track(shared_data / CLIP, max_frames=3))
    assert [index for index, _ in results] == [0, 1, 2]
    assert all(len(faces) == 1 and faces[0].track_id == 0 for _, faces in results)
