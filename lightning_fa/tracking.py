"""Streaming face-landmark tracking on video files and cameras: `lightning-fa track INPUT`.

    lightning-fa track clip.mp4 --backbone dlib --out-csv lm.csv --out-json lm.json \
        --out-video overlay.mp4 --filter one-euro
    lightning-fa track clip.mp4 --out-coco lm.coco.json --out-openface lm.openface.csv
    lightning-fa track 0 --checkpoint finetuned.ckpt          (camera 0)
    lightning-fa track clip.mp4 --checkpoint model.onnx --engine onnx

Per frame: a face detector (OpenCV's Haar cascade or dlib's HOG detector) finds new faces and
checks the tracked ones every `--redetect-every` frames; between checks each face is cropped
around its previous landmarks (box of the landmarks, enlarged, the crop itself smoothed so that
crop jitter does not become landmark jitter). Every track carries its own ConvLSTM state, reset
when a track starts; an optional classical filter runs on top. The core is `StreamingTracker`
(`step(frame) -> list[TrackResult]`), usable from Python.

Outputs are never lost: every output path is checked and locked before any work (a second run
writing the same file refuses); while the run goes, the CSVs, JSON frames and overlay video grow
in `<name>.partial.csv`, `<name>.partial.jsonl` and `<name>.partial.<ext>` beside their targets
(flushed about every second) and replace the targets only once the run completes.

Frames are timed by the container's presentation times (variable frame rates kept). The COCO
JSON follows MMPoseInferencer's video predictions (per landmark scores: each raw heatmap's peak),
the OpenFace CSV OpenFace's columns (frames from 1); the overlay (labelled raw | stabilised) is
H.264 through PyAV, or MJPG in an .avi. Formats: docs/tracking.md. A run that is
interrupted or crashes leaves the earlier outputs untouched and keeps the partial files, named on
stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from data_modules.transforms import (
    DEFAULT_ENLARGE,
    crop_affine,
    invert_affine,
    landmarks_box,
    warp_image,
)
from lightning_fa.outputs import atomic_write, claim_outputs
from lightning_fa.shipped import default_stage
from lightning_fa.temporal.filters import FILTER_NAMES, LandmarkFilter, make_filter

DETECTORS = ("haar", "dlib", "blazeface")  # blazeface: the optional extra mediapipe
ENGINES = ("torch", "onnx")
EYE_CORNERS_68 = (36, 45)
FLUSH_SECONDS = 1.0  # how often the partial outputs of a running `track` reach the disk


# --------------------------------------------------------------------------- option checks


def check_at_least_one(value: int | None, what: str) -> None:
    """A count option (frames, faces, interval) must be a positive integer; None is "no limit"."""
    if value is not None and value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")


def check_fraction(value: float, what: str) -> None:
    """A number in [0, 1] (NaN refused)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be a number in [0, 1], got {value}")


def check_device(device: str, what: str = "--device") -> None:
    """Refuse a device this torch cannot use before any model is built on it."""
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"{what} {device!r} is not a device (expected cpu or cuda[:N])") from error
    if parsed.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ValueError(f"{what} {device}: CUDA is not available to this torch; use --device cpu")
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"{what} {device}: no such GPU ({torch.cuda.device_count()} visible)")


# --------------------------------------------------------------------------- face detectors


@dataclass(frozen=True)
class BoxCalibration:
    """How a detector's box relates to the landmarks' box: the landmark box centre lies
    `dy * side` below the detector box centre and its side is `scale * side`. Measured on the
    real clips in ../shared/data/videos (dlib 68-point landmarks); a new track is refined by one
    extra pass anyway, so these only need to be roughly right."""

    dy: float
    scale: float


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (ships with opencv-python). Returns boxes (N, 5):
    x1, y1, x2, y2, score (the cascade's level weight)."""

    calibration = BoxCalibration(dy=0.15, scale=0.82)

    def __init__(self, min_size: int = 40) -> None:
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise FileNotFoundError(f"OpenCV Haar cascade not found or unreadable: {path}")
        self.min_size = min_size

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        boxes, _, weights = self._cascade.detectMultiScale3(
            gray, 1.1, 5, minSize=(self.min_size, self.min_size), outputRejectLevels=True
        )
        if len(boxes) == 0:
            return np.zeros((0, 5))
        boxes = np.asarray(boxes, dtype=np.float64)
        boxes[:, 2:] += boxes[:, :2]
        return np.concatenate([boxes, np.asarray(weights, dtype=np.float64).reshape(-1, 1)], 1)


class DlibDetector:
    """dlib's HOG frontal face detector (the dlib backbone's own). `upsample` 0 finds faces
    from about 80 px; 1 from about 40 px at four times the cost."""

    calibration = BoxCalibration(dy=0.10, scale=0.93)

    def __init__(self, upsample: int = 0) -> None:
        from lightning_fa.backbones import dlib_face_detector

        self._detector = dlib_face_detector()
        self.upsample = upsample

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        rects, scores, _ = self._detector.run(np.ascontiguousarray(rgb), self.upsample, 0.0)
        return np.array(
            [[r.left(), r.top(), r.right() + 1, r.bottom() + 1, s] for r, s in zip(rects, scores)],
            dtype=np.float64,
        ).reshape(-1, 5)


def make_detector(name: str) -> Any:
    if name == "haar":
        return HaarDetector()
    if name == "dlib":
        return DlibDetector()
    if name == "blazeface":
        from lightning_fa.detectors_mediapipe import BlazeFaceDetector

        return BlazeFaceDetector()
    raise ValueError(f"unknown detector {name!r}; expected one of {DETECTORS}")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (N, M) of boxes (N, 4) and (M, 4), x1 y1 x2 y2."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


# --------------------------------------------------------------------------- model engines


def _cat(parts: list[Any]) -> Any:
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def load_step(
    checkpoint: str | Path | None = None,
    backbone: str = "dlib",
    engine: str = "torch",
    num_landmarks: int | None = None,
    device: str = "cpu",
    allow_untrained: bool = True,
) -> Any:
    """The per-frame step: `StreamingStep` (PyTorch) or `OnnxStep` (onnxruntime).

    `checkpoint`: a fine-tuned StableAlignmentModule (.ckpt) or, with engine "onnx", an exported
    .onnx file (a .ckpt is exported to a temporary file first). Without a checkpoint the dlib
    backbone runs under the shipped trained stage (`lightning_fa.shipped`), any other backbone
    under an untrained (zero-initialised, hence identity) ConvLSTM and its own random weights.
    `num_landmarks`: the count the caller expects (None: the checkpoint's own, 68 for a bare
    backbone); a model with another count is refused, naming both.
    `allow_untrained=False` refuses a backbone with random weights and a stage that is still the
    identity (an exported .onnx graph is not inspected).
    """
    from lightning_fa.export import OnnxStep, StreamingStep, export_onnx

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    check_at_least_one(num_landmarks, "--num-landmarks")
    check_device(device)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    module = None
    if engine == "onnx" and checkpoint is not None and Path(checkpoint).suffix == ".onnx":
        step = OnnxStep(checkpoint)
    else:
        module = _load_module(checkpoint, backbone, num_landmarks or 68)
        if engine == "onnx":
            # Their points come from numpy / C++ code: a trace would freeze one frame's points.
            if type(module.backbone).__name__ in ("DlibBackbone", "MediaPipeFaceMesh"):
                raise ValueError(
                    "--engine onnx needs a PyTorch backbone; dlib and the MediaPipe mesh "
                    "cannot be exported"
                )
            path = Path(tempfile.mkdtemp(prefix="lightning_fa_")) / "step.onnx"
            step = OnnxStep(export_onnx(module, path))
        else:
            step = StreamingStep(module).eval().to(device)
    if num_landmarks is not None and step.num_landmarks != num_landmarks:
        source = checkpoint if checkpoint is not None else f"backbone {backbone!r}"
        raise ValueError(
            f"{source} predicts {step.num_landmarks} landmarks, but --num-landmarks is "
            f"{num_landmarks}; drop the option or use a {num_landmarks}-point model"
        )
    reason = untrained_reason(module, checkpoint, backbone) if module is not None else None
    if reason is not None and not allow_untrained:
        raise ValueError(
            f"{reason}, so its landmarks mean nothing; pass a fine-tuned --checkpoint, or "
            "--allow-untrained to run it anyway"
        )
    return step


def _load_module(checkpoint: str | Path | None, backbone: str, num_landmarks: int) -> Any:
    from lightning_fa.backbones import create_backbone
    from lightning_fa.shipped import load_stage_file
    from lightning_fa.systems.finetune import StableAlignmentModule

    if checkpoint is not None:
        return StableAlignmentModule.from_checkpoint(checkpoint)
    stage_file = default_stage(checkpoint, backbone)
    if stage_file is not None:
        return load_stage_file(stage_file)
    return StableAlignmentModule(backbone=create_backbone(backbone, num_landmarks)).eval()


def untrained_reason(module: Any, checkpoint: str | Path | None, backbone: str) -> str | None:
    """Why `module`'s landmarks are meaningless, or None: a backbone built without a checkpoint
    that has weights (so they are random), or a temporal stage that is still the identity."""
    if checkpoint is None and next(iter(module.backbone.state_dict()), None) is not None:
        return f"--backbone {backbone} without --checkpoint has random weights"
    if is_identity_stage(module.temporal, module.backbone.num_landmarks):
        source = checkpoint if checkpoint is not None else f"--backbone {backbone}"
        return f"{source}: the stabiliser is untrained (the identity: it returns the raw maps)"
    return None


@torch.no_grad()
def is_identity_stage(stage: torch.nn.Module, num_landmarks: int, frames: int = 3) -> bool:
    """True when `stage` returns its input maps exactly over a few frames of random maps with
    the state carried: what every stage of the contract does before training."""
    generator = torch.Generator().manual_seed(0)
    device = next(stage.parameters(), torch.empty(0)).device
    state = None
    for _ in range(frames):
        maps = torch.rand(1, num_landmarks, 16, 16, generator=generator).to(device)
        out, state = stage(maps, state)
        if not torch.equal(out, maps):
            return False
    return True


# --------------------------------------------------------------------------- the tracker


@dataclass
class TrackResult:
    """One face in one frame; coordinates in original frame pixels, (L, 2)."""

    track_id: int
    confidence: float
    landmarks: np.ndarray  # final: stabilised, then the optional filter
    stabilised: np.ndarray  # the model's output (ConvLSTM), before the filter
    raw: np.ndarray  # the backbone alone
    box: np.ndarray  # crop box (x1, y1, x2, y2) the model saw, before enlargement
    # (L,) each landmark's raw heatmap peak in [0, 1]; None from a step without that output (an
    # ONNX file exported before it existed).
    landmark_scores: np.ndarray | None = None


@dataclass
class _Track:
    track_id: int
    center: np.ndarray
    side: float
    state: list[Any]
    landmark_filter: LandmarkFilter
    crop_filter: LandmarkFilter
    age: int = 0
    last: np.ndarray | None = field(default=None, repr=False)

    def box(self) -> np.ndarray:
        half = self.side / 2
        return np.concatenate([self.center - half, self.center + half])


def face_scale(landmarks: np.ndarray) -> float:
    """Inter-ocular distance for 68 points, else the side of the landmarks' box."""
    if landmarks.shape[0] == 68:
        return float(np.linalg.norm(landmarks[EYE_CORNERS_68[0]] - landmarks[EYE_CORNERS_68[1]]))
    x1, y1, x2, y2 = landmarks_box(landmarks)
    return float(max(x2 - x1, y2 - y1))


class StreamingTracker:
    """Multi-face landmark tracker over a stream of RGB uint8 frames (H, W, 3).

    Args:
        step: `StreamingStep` / `OnnxStep` (or anything with `init_state(batch)`, `input_size`
            and `step(images uint8 (B, 3, H, W), *state) -> (coords, raw, confidence, *state)`,
            optionally followed by per-landmark scores (B, L)).
        detector: callable RGB frame -> boxes (N, 5) with a `calibration` attribute.
        max_faces: most faces tracked at once (the largest detections win).
        filter: classical filter per track on top of the model (`FILTER_NAMES`).
        fps: frame rate, for the filters' time base when no timestamps are given.
        redetect_every: run the detector every this many frames to find new faces and drop
            tracks it no longer confirms (every frame while no face is tracked).
        min_confidence: a track whose heatmap confidence falls below this ends.
        enlarge: crop side / landmark-box side.
        device: where the step's inputs go (PyTorch engine).
    """

    def __init__(
        self,
        step: Any,
        detector: Callable[[np.ndarray], np.ndarray],
        max_faces: int = 1,
        filter: str = "none",
        fps: float = 25.0,
        redetect_every: int = 5,
        min_confidence: float = 0.3,
        enlarge: float = DEFAULT_ENLARGE,
        min_iou: float = 0.3,
        device: str = "cpu",
    ) -> None:
        check_at_least_one(max_faces, "max_faces")
        check_at_least_one(redetect_every, "redetect_every")
        check_fraction(min_confidence, "min_confidence")
        if filter not in FILTER_NAMES:
            raise ValueError(f"filter must be one of {FILTER_NAMES}, got {filter!r}")
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.step_fn = step
        self.detector = detector
        self.calibration = getattr(detector, "calibration", BoxCalibration(0.0, 1.0))
        self.max_faces = max_faces
        self.filter_name = filter
        self.fps = float(fps)
        self.redetect_every = redetect_every
        self.min_confidence = min_confidence
        self.enlarge = enlarge
        self.min_iou = min_iou
        self.device = device
        self.input_size = tuple(step.input_size)
        self.reset()

    def reset(self) -> None:
        self.tracks: list[_Track] = []
        self.frame_index = -1
        self._next_id = 0

    # ------------------------------------------------------------------ model calls
    def _crop(self, frame: np.ndarray, center: np.ndarray, side: float) -> tuple[Any, np.ndarray]:
        affine = crop_affine(center, side, self.input_size, enlarge=self.enlarge)
        return warp_image(frame, affine, self.input_size).transpose(2, 0, 1), affine

    def _run(
        self, frame: np.ndarray, boxes: list[tuple[np.ndarray, float]], states: list[list[Any]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[Any]], np.ndarray | None]:
        """The step on the crops of `boxes` with per-face `states` (batched) -> frame-pixel
        coords (B, L, 2), raw coords, confidence (B,), new per-face states, per-landmark scores
        (B, L) or None."""
        crops, affines = zip(*(self._crop(frame, c, s) for c, s in boxes))
        images = torch.from_numpy(np.stack(crops)).to(self.device)
        flat = [_cat([state[k] for state in states]) for k in range(len(states[0]))]
        coords, raw, confidence, *rest = self.step_fn(images, *flat)
        # The new state has as many tensors as the old; per-landmark scores, if any, follow it.
        new_flat, extra = rest[: len(flat)], rest[len(flat) :]
        scores = _numpy(extra[0]).astype(np.float64) if extra else None
        inverse = np.stack([invert_affine(a) for a in affines])  # crop -> frame, (B, 2, 3)

        def to_frame(points: Any) -> np.ndarray:
            points = _numpy(points).astype(np.float64)
            return np.einsum("blj,bij->bli", points, inverse[:, :, :2]) + inverse[:, None, :, 2]

        new_states = [[tensor[i : i + 1] for tensor in new_flat] for i in range(len(boxes))]
        confidence = _numpy(confidence).astype(np.float64)
        return to_frame(coords), to_frame(raw), confidence, new_states, scores

    def _zero_state(self) -> list[Any]:
        return list(self.step_fn.init_state(1, self.device))

    # ------------------------------------------------------------------ track management
    def _new_filter(self, name: str) -> LandmarkFilter:
        landmark_filter = make_filter(name)
        landmark_filter.freq = self.fps  # the time base when frames come without timestamps
        return landmark_filter

    def _detector_crops(self, detections: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """Detector boxes (N, 5) -> (centre, side) of the expected landmark boxes."""
        crops = []
        for x1, y1, x2, y2, _ in detections:
            side = max(x2 - x1, y2 - y1)
            centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2 + self.calibration.dy * side])
            crops.append((centre, side * self.calibration.scale))
        return crops

    def _start_tracks(self, frame: np.ndarray, detections: np.ndarray) -> None:
        """New tracks from detector boxes: one state-free pass on the calibrated detector box
        gives landmarks; the track's crop is then built from those, like every later crop."""
        free = self.max_faces - len(self.tracks)
        if free <= 0 or len(detections) == 0:
            return
        areas = (detections[:, 2] - detections[:, 0]) * (detections[:, 3] - detections[:, 1])
        boxes = self._detector_crops(detections[np.argsort(-areas)[:free]])
        _, raw, *_ = self._run(frame, boxes, [self._zero_state() for _ in boxes])
        for points in raw:
            centre, side = self._landmark_crop(points)
            crop_filter = self._new_filter("one-euro")
            crop_filter.step(np.array([centre, [side, side]]), scale=side)
            self.tracks.append(
                _Track(
                    track_id=self._next_id,
                    center=centre,
                    side=side,
                    state=self._zero_state(),
                    landmark_filter=self._new_filter(self.filter_name),
                    crop_filter=crop_filter,
                )
            )
            self._next_id += 1

    @staticmethod
    def _landmark_crop(points: np.ndarray) -> tuple[np.ndarray, float]:
        x1, y1, x2, y2 = landmarks_box(points)
        return np.array([(x1 + x2) / 2, (y1 + y2) / 2]), float(max(x2 - x1, y2 - y1, 1.0))

    def _confirm_tracks(self, detections: np.ndarray) -> np.ndarray:
        """Keep the tracks that a detection overlaps (greedy, highest IoU first) and drop the
        rest (face lost); returns the detections no track claimed."""
        if not self.tracks or len(detections) == 0:
            self.tracks = []
            return detections
        expected = np.stack(
            [np.concatenate([c - s / 2, c + s / 2]) for c, s in self._detector_crops(detections)]
        )
        iou = box_iou(np.stack([t.box() for t in self.tracks]), expected)
        kept: set[int] = set()
        claimed: set[int] = set()
        for i, j in zip(*np.unravel_index(np.argsort(-iou, axis=None), iou.shape)):
            if iou[i, j] < self.min_iou:
                break
            if i not in kept and j not in claimed:
                kept.add(int(i))
                claimed.add(int(j))
        self.tracks = [t for i, t in enumerate(self.tracks) if i in kept]
        return detections[[j for j in range(len(detections)) if j not in claimed]]

    def _inside_fraction(self, box: np.ndarray, frame_shape: tuple[int, ...]) -> float:
        height, width = frame_shape[:2]
        inside = np.clip(box, [0, 0, 0, 0], [width, height, width, height])
        area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)
        return float(max(inside[2] - inside[0], 0) * max(inside[3] - inside[1], 0) / area)

    # ------------------------------------------------------------------ the step
    def step(self, frame: np.ndarray, timestamp: float | None = None) -> list[TrackResult]:
        """Process one RGB uint8 frame (H, W, 3); returns one result per tracked face."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frame must be RGB uint8 (H, W, 3), got {frame.shape} {frame.dtype}")
        self.frame_index += 1
        detect = not self.tracks or self.frame_index % self.redetect_every == 0
        if detect:
            unmatched = self._confirm_tracks(self.detector(frame))
            self._start_tracks(frame, unmatched)
        if not self.tracks:
            return []
        boxes = [(t.center, t.side) for t in self.tracks]
        coords, raw, confidence, states, scores = self._run(
            frame, boxes, [t.state for t in self.tracks]
        )
        results, survivors = [], []
        for k, (track, stabilised, raw_points, conf, state) in enumerate(
            zip(self.tracks, coords, raw, confidence, states)
        ):
            scale = max(face_scale(stabilised), 1e-3)
            final = track.landmark_filter.step(stabilised, t=timestamp, scale=scale)
            results.append(
                TrackResult(
                    track.track_id,
                    float(conf),
                    final,
                    stabilised,
                    raw_points,
                    track.box(),
                    None if scores is None else scores[k],
                )
            )
            track.state, track.age, track.last = state, track.age + 1, final
            centre, side = self._landmark_crop(final)
            smooth = track.crop_filter.step(
                np.array([centre, [side, side]]), t=timestamp, scale=side
            )
            track.center, track.side = smooth[0], float(smooth[1].mean())
            # A face that fades (low confidence) or leaves the frame ends its track.
            if (
                conf >= self.min_confidence
                and self._inside_fraction(landmarks_box(final), frame.shape) >= 0.5
            ):
                survivors.append(track)
        self.tracks = survivors
        return results


# --------------------------------------------------------------------------- video input


def open_capture(source: str) -> tuple[cv2.VideoCapture, bool]:
    """Open a video file or a camera index ("0", "1", ...); returns (capture, is_camera).

    A file is checked to hold at least one decodable frame, then reopened at its start (seeking
    is not exact for every codec)."""
    if source.isdigit():
        capture = cv2.VideoCapture(int(source))
        if not capture.isOpened():
            raise ValueError(f"cannot open camera {source}: no such device or it is busy")
        return capture, True
    path = Path(source)
    if path.is_dir():
        raise ValueError(f"input video {path} is a directory, not a video file")
    if not path.is_file():
        raise FileNotFoundError(f"input video not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"input video {path} is empty (0 bytes)")
    capture = cv2.VideoCapture(str(path))
    readable = capture.isOpened() and capture.read()[0]
    capture.release()
    if not readable:
        raise ValueError(f"{path} is not a video OpenCV can decode (expected e.g. .mp4, .avi)")
    return cv2.VideoCapture(str(path)), False


class FrameReader:
    """Sequential RGB frames from a capture with their timestamps. A frame that fails to decode
    before the file's end is skipped and counted (`skipped`); `max_failures` failures in a row
    end the stream.

    Timestamps are the container's: after each read, the capture's presentation time of that
    frame (`CAP_PROP_POS_MSEC`), so variable-frame-rate video (phones) keeps its real timing. A
    frame without a usable stamp (missing, or not after the previous one) is placed its distance
    in frames after the previous frame at `fps` (the capture's rate, else 25), and counted in
    `estimated_times`.
    """

    def __init__(
        self,
        capture: Any,
        max_frames: int | None = None,
        max_failures: int = 25,
        fps: float | None = None,
    ) -> None:
        check_at_least_one(max_frames, "max_frames")
        self.capture = capture
        self.max_frames = max_frames
        self.max_failures = max_failures
        self.skipped = 0
        self.estimated_times = 0
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 else None
        if fps is None:
            fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        self.fps = float(fps) if fps > 0 else 25.0

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yields (frame number in the file, RGB frame)."""
        for position, _, frame in self.timed():
            yield position, frame

    def timed(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """Yields (frame number in the file, timestamp in seconds, RGB frame); the timestamps
        strictly increase, as the filters need."""
        position, failures, delivered = 0, 0, 0
        previous: tuple[int, float] | None = None
        while self.max_frames is None or delivered < self.max_frames:
            ok, frame = self.capture.read()
            if ok and frame is not None and frame.ndim == 3:
                failures = 0
                delivered += 1
                t = self.capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                if not (math.isfinite(t) and (previous is None or t > previous[1])):
                    last_position, last_t = previous or (0, 0.0)
                    t = last_t + (position - last_position) / self.fps
                    self.estimated_times += 1
                previous = (position, t)
                yield position, t, np.ascontiguousarray(frame[..., ::-1])
            else:
                before_end = self.frame_count is not None and position < self.frame_count
                failures += 1
                if not before_end or failures >= self.max_failures:
                    return
                self.skipped += 1
            position += 1


# --------------------------------------------------------------------------- outputs


def csv_header(num_landmarks: int) -> list[str]:
    coords = [f"{axis}{k}" for k in range(num_landmarks) for axis in ("x", "y")]
    return ["frame", "time", "track_id", "confidence", *coords]


def openface_header(num_landmarks: int) -> list[str]:
    """OpenFace's FeatureExtraction column names for the 2-D landmarks (all x, then all y)."""
    xs = [f"x_{k}" for k in range(num_landmarks)]
    ys = [f"y_{k}" for k in range(num_landmarks)]
    return ["frame", "face_id", "timestamp", "confidence", "success", *xs, *ys]


def _json_number(value: float, digits: int) -> float | None:
    return round(float(value), digits) if math.isfinite(value) else None


def _json_points(points: np.ndarray) -> list[list[float | None]]:
    return [[_json_number(v, 3) for v in p] for p in points]


def _coordinates(values: np.ndarray) -> list[str]:
    return [f"{v:.3f}" for v in values]


def draw_points(image: np.ndarray, points: np.ndarray, colour: tuple[int, int, int]) -> None:
    for x, y in points:
        if math.isfinite(x) and math.isfinite(y):
            cv2.circle(image, (round(x), round(y)), 2, colour, -1, cv2.LINE_AA)


def label_pane(image: np.ndarray, text: str) -> None:
    """`text` in the top-left corner of an overlay pane, white with a black outline (legible on
    any background), sized to the pane's height."""
    scale = max(image.shape[0] / 720, 0.3)
    thickness = max(round(2 * scale), 1)
    (_, height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    margin = max(round(10 * scale), 2)
    origin = (margin, margin + height)
    for colour, width in (((0, 0, 0), thickness + 2), ((255, 255, 255), thickness)):
        cv2.putText(
            image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, width, cv2.LINE_AA
        )


def partial_path(path: Path, suffix: str | None = None) -> Path:
    """Where an output grows while its run goes: `lm.csv` -> `lm.partial.csv` (or `suffix`)."""
    return path.with_name(f"{path.stem}.partial{path.suffix if suffix is None else suffix}")


def _json_frame(index: int, t: float, results: list[TrackResult]) -> dict[str, Any]:
    return {
        "frame": index,
        "time": round(t, 4),
        "faces": [
            {
                "track_id": r.track_id,
                "confidence": round(r.confidence, 4),
                "landmarks": _json_points(r.landmarks),
                "raw": _json_points(r.raw),
            }
            for r in results
        ],
    }


def _coco_frame(index: int, t: float, results: list[TrackResult]) -> dict[str, Any]:
    """One frame as MMPoseInferencer saves a video's predictions (`frame_id`, `instances` with
    `keypoints` [[x, y], ...], `keypoint_scores`, `bbox` as a list holding one [x1, y1, x2, y2],
    `bbox_score`), plus our `timestamp` and `track_id`."""
    return {
        "frame_id": index,
        "timestamp": round(t, 4),
        "instances": [
            {
                "track_id": r.track_id,
                "keypoints": _json_points(r.landmarks),
                "keypoint_scores": [None] * len(r.landmarks)
                if r.landmark_scores is None
                else [_json_number(v, 4) for v in r.landmark_scores],
                "bbox": [[_json_number(v, 2) for v in r.box]],
                "bbox_score": round(r.confidence, 4),
            }
            for r in results
        ],
    }


VIDEO_CODECS = {".avi": "MJPG", ".mp4": "H.264", ".m4v": "H.264", ".mov": "H.264", ".mkv": "H.264"}


def have_h264() -> bool:
    """Whether PyAV is installed with an H.264 encoder (its wheels bundle libx264)."""
    try:
        import av
    except ImportError:
        return False
    return "libx264" in av.codecs_available


def overlay_path(path: Path) -> Path:
    """The overlay video that will be written for `--out-video path`: H.264 needs PyAV; without
    it an MJPG .avi beside the requested name (with a one-line notice). Extensions whose
    container holds neither codec are refused."""
    if path.suffix.lower() not in VIDEO_CODECS:
        raise ValueError(
            f"--out-video {path}: unsupported extension {path.suffix!r}; use .mp4 (H.264, plays "
            "in browsers) or .avi (MJPG)"
        )
    if VIDEO_CODECS[path.suffix.lower()] == "H.264" and not have_h264():
        fallback = path.with_suffix(".avi")
        print(
            f"lightning-fa track: no H.264 encoder (pip install av); writing the overlay as "
            f"MJPG to {fallback}",
            file=sys.stderr,
        )
        return fallback
    return path


class H264Writer:
    """Browser-playable H.264 (libx264, yuv420p) through PyAV. Each frame keeps its own
    timestamp, so a variable-frame-rate input gives an overlay with the same timing."""

    TIME_BASE = Fraction(1, 90000)  # the MPEG clock: sub-millisecond stamps

    def __init__(self, path: Path, fps: float, frame_size: tuple[int, int]) -> None:
        import av

        width, height = frame_size
        # yuv420p needs even sides; an odd one gets one black row or column.
        self._size = (width + width % 2, height + height % 2)
        options = {"movflags": "+faststart"} if path.suffix.lower() != ".mkv" else {}
        self._container = av.open(str(path), "w", options=options)
        try:
            stream = self._container.add_stream(
                "libx264", rate=Fraction(fps).limit_denominator(1001)
            )
            stream.width, stream.height = self._size
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = self.TIME_BASE
            stream.options = {"preset": "veryfast", "crf": "23"}
        except BaseException:
            self._container.close()
            raise
        self._stream = stream
        self._first: float | None = None
        self._last_pts = -1

    def write(self, bgr: np.ndarray, t: float) -> None:
        import av

        height, width = bgr.shape[:2]
        if (width, height) != self._size:
            padded = np.zeros((self._size[1], self._size[0], 3), np.uint8)
            padded[:height, :width] = bgr
            bgr = padded
        frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
        self._first = t if self._first is None else self._first
        self._last_pts = max(round((t - self._first) / self.TIME_BASE), self._last_pts + 1)
        frame.pts, frame.time_base = self._last_pts, self.TIME_BASE
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def release(self) -> None:
        try:
            for packet in self._stream.encode():  # the frames still in the encoder
                self._container.mux(packet)
        finally:
            self._container.close()


class MjpegWriter:
    """Motion-JPEG .avi through OpenCV (no extra package; a constant frame rate)."""

    def __init__(self, path: Path, fps: float, frame_size: tuple[int, int]) -> None:
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, frame_size)
        if not self._writer.isOpened():
            raise ValueError(f"cannot open overlay video for writing: {path}")

    def write(self, bgr: np.ndarray, t: float) -> None:
        self._writer.write(bgr)

    def release(self) -> None:
        self._writer.release()


def open_overlay(path: Path, target: Path, fps: float, frame_size: tuple[int, int]) -> Any:
    """A writer of `target`'s codec (`VIDEO_CODECS`) writing to `path`."""
    codec = VIDEO_CODECS.get(target.suffix.lower())
    if codec == "MJPG":
        return MjpegWriter(path, fps, frame_size)
    if codec == "H.264":
        if not have_h264():
            raise ValueError(f"{target}: H.264 needs PyAV (pip install av), or write an .avi")
        try:
            return H264Writer(path, fps, frame_size)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot open overlay video for writing: {target}: {error}") from error
    raise ValueError(f"{target}: unsupported overlay extension; use .mp4 (H.264) or .avi (MJPG)")


class TrackOutputs:
    """The CSV rows, the JSON document, the COCO-keypoints JSON, the OpenFace CSV and the
    raw | stabilised overlay video of one run (each optional: None).

    Everything is written as it comes to partial files beside the targets (`partial_path`; the
    JSON frames one per line, so memory stays flat however long the video): `close` moves them
    into place once the run is complete, `abort` closes them and leaves the targets untouched.
    """

    def __init__(
        self,
        num_landmarks: int,
        csv_path: Path | None,
        json_path: Path | None,
        video_path: Path | None,
        fps: float,
        frame_size: tuple[int, int],
        coco_path: Path | None = None,
        openface_path: Path | None = None,
    ) -> None:
        self.num_landmarks = num_landmarks
        self.csv_path, self.json_path, self.video_path = csv_path, json_path, video_path
        self.coco_path, self.openface_path = coco_path, openface_path
        self.frames_written = 0
        self._csv_file = self._json_lines = self._coco_lines = self._openface_file = None
        self._video = None
        self._last_flush = time.monotonic()
        try:
            if video_path is not None:
                width, height = frame_size
                self._video = open_overlay(
                    partial_path(video_path), video_path, fps, (2 * width, height)
                )
            if csv_path is not None:
                self._csv_file = open(partial_path(csv_path), "w", newline="")
                self._csv = csv.writer(self._csv_file)
                self._csv.writerow(csv_header(num_landmarks))
            if openface_path is not None:
                self._openface_file = open(partial_path(openface_path), "w", newline="")
                self._openface = csv.writer(self._openface_file)
                self._openface.writerow(openface_header(num_landmarks))
            if json_path is not None:
                self._json_lines = open(partial_path(json_path, ".jsonl"), "w", encoding="utf-8")
            if coco_path is not None:
                self._coco_lines = open(partial_path(coco_path, ".jsonl"), "w", encoding="utf-8")
        except BaseException:
            self.abort()
            raise

    def _text_files(self) -> list[Any]:
        return [self._csv_file, self._openface_file, self._json_lines, self._coco_lines]

    def partial_files(self) -> list[Path]:
        """The partial files of this run's outputs that exist now."""
        candidates = [
            partial_path(self.csv_path) if self.csv_path else None,
            partial_path(self.openface_path) if self.openface_path else None,
            partial_path(self.json_path, ".jsonl") if self.json_path else None,
            partial_path(self.coco_path, ".jsonl") if self.coco_path else None,
            partial_path(self.video_path) if self.video_path else None,
        ]
        return [path for path in candidates if path is not None and path.exists()]

    def add(self, index: int, t: float, frame: np.ndarray, results: list[TrackResult]) -> None:
        if self._csv_file is not None:
            for r in results:
                self._csv.writerow(
                    [
                        index,
                        f"{t:.4f}",
                        r.track_id,
                        f"{r.confidence:.4f}",
                        *_coordinates(r.landmarks.reshape(-1)),
                    ]
                )
            if not results:
                nan_row = [math.nan] * (2 * self.num_landmarks)
                self._csv.writerow([index, f"{t:.4f}", -1, "0.0000", *nan_row])
        if self._openface_file is not None:
            # OpenFace numbers frames from 1 and writes a failed frame as face 0, success 0,
            # zeros everywhere.
            for r in results:
                self._openface.writerow(
                    [index + 1, r.track_id, f"{t:.3f}", f"{r.confidence:.4f}", 1,
                     *_coordinates(r.landmarks[:, 0]), *_coordinates(r.landmarks[:, 1])]
                )  # fmt: skip
            if not results:
                zeros = ["0.000"] * (2 * self.num_landmarks)
                self._openface.writerow([index + 1, 0, f"{t:.3f}", "0.0000", 0, *zeros])
        if self._json_lines is not None:
            self._json_lines.write(json.dumps(_json_frame(index, t, results)) + "\n")
        if self._coco_lines is not None:
            self._coco_lines.write(json.dumps(_coco_frame(index, t, results)) + "\n")
        if self._video is not None:
            left = np.ascontiguousarray(frame[..., ::-1])
            right = left.copy()
            for r in results:
                draw_points(left, r.raw, (0, 0, 255))
                draw_points(right, r.landmarks, (0, 255, 0))
            label_pane(left, "raw")
            label_pane(right, "stabilised")
            self._video.write(np.concatenate([left, right], axis=1), t)
        self.frames_written += 1
        # A hard kill loses at most the last second; Python's buffers would otherwise hold more.
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            for handle in self._text_files():
                if handle is not None:
                    handle.flush()
            self._last_flush = time.monotonic()

    def _close_files(self) -> None:
        for handle in self._text_files():
            if handle is not None:
                handle.close()
        if self._video is not None:
            self._video.release()
        self._csv_file = self._json_lines = self._coco_lines = self._openface_file = None
        self._video = None

    def abort(self) -> list[Path]:
        """Close everything after a failed run; returns the partial files kept (none when no
        frame was written: then they hold nothing worth keeping and are removed)."""
        self._close_files()
        kept = self.partial_files()
        if self.frames_written == 0:
            for path in kept:
                path.unlink()
            return []
        return kept

    def close(self, summary: dict[str, Any]) -> None:
        """Complete the run: each partial file replaces its target (flushed to disk first)."""
        self._close_files()
        for path in (self.csv_path, self.openface_path, self.video_path):
            if path is not None:
                with open(partial_path(path), "rb") as handle:
                    os.fsync(handle.fileno())
                os.replace(partial_path(path), path)
        if self.json_path is not None:
            # The frame list takes the place of a placeholder: "frames" may be a summary key
            # (the count), whose position in the document the list then keeps.
            placeholder = "\0frames\0"
            document = {**summary, "num_landmarks": self.num_landmarks, "frames": placeholder}
            before, after = json.dumps(document).split(json.dumps(placeholder))
            _join_json_lines(partial_path(self.json_path, ".jsonl"), self.json_path, before, after)
        if self.coco_path is not None:
            _join_json_lines(partial_path(self.coco_path, ".jsonl"), self.coco_path, "", "")


def _join_json_lines(lines_path: Path, target: Path, before: str, after: str) -> None:
    """Write `before`, the JSON values of `lines_path` (one a line) as a list, then `after` to
    `target` atomically, one line at a time (byte for byte what `json.dumps` gives for the
    whole); the lines file is removed."""
    with atomic_write(target, encoding="utf-8") as out, open(lines_path) as lines:
        out.write(before + "[")
        for k, line in enumerate(lines):
            out.write((", " if k else "") + line.rstrip("\n"))
        out.write("]" + after)
    lines_path.unlink()


# --------------------------------------------------------------------------- command line


def track_video(
    tracker: StreamingTracker,
    reader: FrameReader,
    outputs: TrackOutputs | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the tracker over every frame of `reader` at the reader's timestamps; returns a
    summary (frames, faces, skipped)."""
    from tqdm import tqdm

    total = reader.frame_count if reader.max_frames is None else reader.max_frames
    if reader.frame_count is not None and reader.max_frames is not None:
        total = min(reader.frame_count, reader.max_frames)
    frames = faces = 0
    start = time.perf_counter()
    for index, t, frame in tqdm(reader.timed(), total=total, unit="frame", disable=not progress):
        results = tracker.step(frame, t)
        if outputs is not None:
            outputs.add(index, t, frame, results)
        frames += 1
        faces += bool(results)
    elapsed = time.perf_counter() - start
    return {
        "frames": frames,
        "frames_with_face": faces,
        "skipped_frames": reader.skipped,
        "seconds": round(elapsed, 3),
        "fps_processed": round(frames / elapsed, 2) if elapsed > 0 else None,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-fa track",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", help="video file or camera index (0, 1, ...)")
    parser.add_argument(
        "--checkpoint", type=Path,
        help="fine-tuned .ckpt (or .onnx with --engine onnx); default with the dlib backbone: "
        "the stage shipped with the package",
    )  # fmt: skip
    parser.add_argument("--backbone", default="dlib", help="backbone name when no checkpoint")
    parser.add_argument(
        "--allow-untrained", action="store_true",
        help="run a backbone with random weights or an untrained (identity) stage anyway",
    )  # fmt: skip
    parser.add_argument(
        "--num-landmarks", type=int, default=None,
        help="landmarks expected (default: the checkpoint's own; 68 for a bare backbone)",
    )  # fmt: skip
    parser.add_argument("--engine", choices=ENGINES, default="torch")
    parser.add_argument("--detector", choices=DETECTORS, default="dlib")
    parser.add_argument("--filter", choices=FILTER_NAMES, default="none")
    parser.add_argument("--max-faces", type=int, default=1)
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--redetect-every", type=int, default=5)
    parser.add_argument("--min-confidence", type=float, default=0.3)
    parser.add_argument("--out-csv", type=Path, default=None)
    parser.add_argument("--out-json", type=Path, default=None)
    parser.add_argument(
        "--out-coco", type=Path, default=None,
        help="COCO-keypoints JSON as MMPoseInferencer saves a video (per-landmark scores)",
    )  # fmt: skip
    parser.add_argument(
        "--out-openface", type=Path, default=None,
        help="OpenFace-style CSV (frame from 1, timestamp, confidence, x_0.., y_0..)",
    )  # fmt: skip
    parser.add_argument(
        "--out-video", type=Path, default=None,
        help="labelled raw | stabilised overlay: .mp4 H.264 (needs PyAV) or .avi MJPG",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _output_paths(args: argparse.Namespace) -> list[tuple[Path | None, str]]:
    """The run's outputs with their options; `landmarks.csv` when none is given. An output
    that is the input video, or another output, is refused; the overlay becomes an .avi when
    H.264 cannot be written (`overlay_path`)."""
    if args.out_video is not None:
        args.out_video = overlay_path(args.out_video)
    outputs = [(args.out_csv, "--out-csv"), (args.out_json, "--out-json"),
               (args.out_coco, "--out-coco"), (args.out_openface, "--out-openface"),
               (args.out_video, "--out-video")]  # fmt: skip
    if all(path is None for path, _ in outputs):
        args.out_csv = Path("landmarks.csv")
        outputs[0] = (args.out_csv, "--out-csv")
    source = Path(args.input)
    seen: dict[Path, str] = {}
    for path, what in outputs:
        if path is None:
            continue
        if source.exists() and path.resolve() == source.resolve():
            raise ValueError(f"{what} {path} is the input video; choose another output path")
        if path.resolve() in seen:
            raise ValueError(
                f"{what} {path} is also {seen[path.resolve()]}; give each its own path"
            )
        seen[path.resolve()] = what
    return outputs


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    check_at_least_one(args.max_frames, "--max-frames")
    check_at_least_one(args.max_faces, "--max-faces")
    check_at_least_one(args.redetect_every, "--redetect-every")
    check_fraction(args.min_confidence, "--min-confidence")
    check_device(args.device)
    with claim_outputs(_output_paths(args)):
        capture, _ = open_capture(args.input)
        try:
            summary = _track(args, capture)
        finally:
            capture.release()
    print(
        f"tracked {summary['frames']} frames ({summary['frames_with_face']} with a face, "
        f"{summary['skipped_frames']} corrupt frames skipped) at {summary['fps_processed']} frames/s"
    )
    return 0


def _track(args: argparse.Namespace, capture: cv2.VideoCapture) -> dict[str, Any]:
    """Load the model, track every frame into the outputs; on any failure the partial files
    (if frames were done) are kept and named, the earlier outputs are untouched."""
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    fps = fps if fps > 0 else 25.0
    step = load_step(
        args.checkpoint, args.backbone, args.engine, args.num_landmarks, args.device,
        allow_untrained=args.allow_untrained,
    )  # fmt: skip
    stage_file = default_stage(args.checkpoint, args.backbone)
    if stage_file is not None:
        print(f"stabiliser: shipped dlib stage ({stage_file})")
    tracker = StreamingTracker(
        step,
        make_detector(args.detector),
        max_faces=args.max_faces,
        filter=args.filter,
        fps=fps,
        redetect_every=args.redetect_every,
        min_confidence=args.min_confidence,
        device=args.device,
    )
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    outputs = TrackOutputs(
        step.num_landmarks, args.out_csv, args.out_json, args.out_video, fps, size,
        coco_path=args.out_coco, openface_path=args.out_openface,
    )  # fmt: skip
    try:
        summary = track_video(
            tracker, FrameReader(capture, args.max_frames, fps=fps), outputs,
            progress=not args.no_progress,
        )  # fmt: skip
        outputs.close({"source": args.input, "fps": fps, **summary})
    except BaseException:
        kept = outputs.abort()
        if kept:
            print(
                f"lightning-fa track: stopped after {outputs.frames_written} frames; what was done "
                f"is kept in {', '.join(map(str, kept))} (earlier outputs untouched)",
                file=sys.stderr,
            )
        raise
    return summary
