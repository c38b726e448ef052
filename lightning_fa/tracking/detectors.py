"""Face detectors for the tracker: OpenCV's Haar cascade, dlib's HOG detector and (optional
extra) MediaPipe's BlazeFace, each returning boxes (N, 5) x1 y1 x2 y2 score with a
`BoxCalibration` that maps its box onto the landmarks' box."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lightning_fa.tracking.boxes import BoxCalibration
from lightning_fa.tracking.options import DETECTORS


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
        from lightning_fa.tracking.blazeface import BlazeFaceDetector

        return BlazeFaceDetector()
    raise ValueError(f"unknown detector {name!r}; expected one of {DETECTORS}")
