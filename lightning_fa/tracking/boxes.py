"""Face boxes: how a detector's box maps onto the landmarks' box (`BoxCalibration`, one per
detector) and their overlap (`box_iou`), which the tracker matches detections to tracks by."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BoxCalibration:
    """How a detector's box relates to the landmarks' box: the landmark box centre lies
    `dy * side` below the detector box centre and its side is `scale * side`. Measured on the
    real clips in ../shared/data/videos (dlib 68-point landmarks); a new track is refined by one
    extra pass anyway, so these only need to be roughly right."""

    dy: float
    scale: float


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (N, M) of boxes (N, 4) and (M, 4), x1 y1 x2 y2."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)
