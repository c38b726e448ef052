"""Crop geometry in numpy / OpenCV, shared by the data modules and the tracker.

Coordinates are (x, y), 0-based, pixel centres at integers. A crop is described by a (2, 3)
matrix ``A`` mapping frame -> crop coordinates (``crop = A[:, :2] @ frame + A[:, 2]``). Images are
warped with ``cv2.warpAffine`` using the same matrix, which follows the same pixel-centre
convention, so points and pixels stay consistent to OpenCV's 1/32-pixel interpolation grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

DEFAULT_ENLARGE = 1.25  # HRNet convention: the crop side is 1.25 x the face box side


def box_to_center_scale(box: Sequence[float] | np.ndarray) -> tuple[np.ndarray, float]:
    """Centre (2,) and scale (box side in pixels, the larger of width and height) of a box.

    ``box`` is (x1, y1, x2, y2) in frame pixels.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box must satisfy x1 < x2 and y1 < y2, got {tuple(box)}")
    center = np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0], dtype=np.float64)
    return center, max(x2 - x1, y2 - y1)


def landmarks_box(landmarks: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
    """Tight (x1, y1, x2, y2) box of the (visible) landmarks (L, 2)."""
    points = landmarks if visible is None or not visible.any() else landmarks[visible]
    return np.concatenate([points.min(axis=0), points.max(axis=0)]).astype(np.float64)


def crop_affine(
    center: Sequence[float] | np.ndarray,
    scale: float,
    output_size: tuple[int, int],
    rotation_deg: float = 0.0,
    enlarge: float = DEFAULT_ENLARGE,
    flip: bool = False,
    shift: Sequence[float] | np.ndarray = (0.0, 0.0),
) -> np.ndarray:
    """Frame -> crop matrix (2, 3) of a square region of side ``scale * enlarge`` around ``center``.

    The region's continuous extent [c - S/2, c + S/2] maps onto the output's [-0.5, W - 0.5]
    (pixel edges), isotropically using the shorter output side. ``rotation_deg`` rotates the
    content counter-clockwise as displayed (OpenCV's ``getRotationMatrix2D`` sense) about the
    crop centre; ``flip`` mirrors the crop horizontally (x -> W - 1 - x); ``shift`` (dx, dy) then
    translates the content by that many crop pixels.
    """
    if scale <= 0 or enlarge <= 0:
        raise ValueError(
            f"scale and enlarge must be positive, got scale={scale}, enlarge={enlarge}"
        )
    height, width = output_size
    k = min(height, width) / (scale * enlarge)
    theta = math.radians(rotation_deg)
    a, b = k * math.cos(theta), k * math.sin(theta)
    linear = np.array([[a, b], [-b, a]], dtype=np.float64)
    out_center = np.array([width / 2.0 - 0.5, height / 2.0 - 0.5])
    if flip:
        linear[0] *= -1.0
    translation = out_center - linear @ np.asarray(center, dtype=np.float64)
    translation += np.asarray(shift, dtype=np.float64)
    return np.concatenate([linear, translation[:, None]], axis=1)


def transform_points(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine to points (..., 2); float64 arithmetic, input dtype kept."""
    p = np.asarray(points, dtype=np.float64)
    out = p @ affine[:, :2].T + affine[:, 2]
    return out.astype(points.dtype if np.issubdtype(points.dtype, np.floating) else np.float64)


def landmarks_to_crop(
    landmarks: np.ndarray, affine: np.ndarray, flip: bool, permutation: Sequence[int]
) -> np.ndarray:
    """Landmarks (..., L, 2) in frame pixels -> crop pixels; left/right swapped when ``flip``.

    ``flip`` must say whether ``affine`` mirrors (as built by ``crop_affine(flip=True)``).
    """
    crop = transform_points(landmarks, affine)
    return crop[..., list(permutation), :] if flip else crop


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine (crop -> frame for a frame -> crop matrix)."""
    return cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64))


def warp_image(image: np.ndarray, affine: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """Warp an (H, W[, C]) image with the frame -> crop ``affine`` into ``output_size`` (H, W).

    Bilinear, constant-0 border, same pixel-centre convention as ``transform_points``.
    """
    height, width = output_size
    return cv2.warpAffine(
        image,
        np.asarray(affine, dtype=np.float64),
        (int(width), int(height)),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
