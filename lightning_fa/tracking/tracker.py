"""`StreamingTracker`: multi-face landmark tracking over a stream of RGB frames.

Per frame a face detector finds new faces and checks the tracked ones every `redetect_every`
frames; between checks each face is cropped around its previous landmarks (box of the landmarks,
enlarged, the crop itself smoothed so that crop jitter does not become landmark jitter). Every
track carries its own temporal-stage state, reset when a track starts; an optional classical
filter runs on top.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lightning_fa.checks import check_ints
from lightning_fa.geometry import (
    DEFAULT_ENLARGE,
    crop_affine,
    invert_affine,
    landmarks_box,
    warp_image,
)
from lightning_fa.inference.state import gather_rows, scatter_rows
from lightning_fa.temporal.filters import FILTER_NAMES, LandmarkFilter, make_filter
from lightning_fa.tracking.boxes import BoxCalibration, box_iou
from lightning_fa.tracking.options import check_fraction

EYE_CORNERS_68 = (36, 45)


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


@dataclass
class TrackResult:
    """One face in one frame; coordinates in original frame pixels, (L, 2)."""

    track_id: int
    confidence: float
    landmarks: np.ndarray  # final: stabilised, then the optional filter
    stabilised: np.ndarray  # the model's output (the temporal stage), before the filter
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
        check_ints(
            need=">= 1", none_allowed=True, max_faces=max_faces, redetect_every=redetect_every
        )
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
        flat = gather_rows(states)
        coords, raw, confidence, *rest = self.step_fn(images, *flat)
        # The new state has as many tensors as the old; per-landmark scores, if any, follow it.
        new_flat, extra = rest[: len(flat)], rest[len(flat) :]
        scores = _numpy(extra[0]).astype(np.float64) if extra else None
        inverse = np.stack([invert_affine(a) for a in affines])  # crop -> frame, (B, 2, 3)

        def to_frame(points: Any) -> np.ndarray:
            points = _numpy(points).astype(np.float64)
            return np.einsum("blj,bij->bli", points, inverse[:, :, :2]) + inverse[:, None, :, 2]

        new_states = scatter_rows(new_flat, len(boxes))
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
