"""Rendering a procedural face over a cluttered background (OpenCV, anti-aliased, sub-pixel)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from data_modules.synthetic.face import (
    _BROW_L,
    _BROW_R,
    _EYE_L,
    _EYE_R,
    _FOREHEAD,
    _HAIR_OUTER,
    _HAIRLINE,
    _JAW,
    _MOUTH_INNER,
    _MOUTH_OUTER,
    _NECK,
    _NOSTRILS,
    Appearance,
)
from data_modules.transforms import DRAW_ONE, DRAW_SHIFT, fixed_point

# --------------------------------------------------------------------------- rendering


def make_background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Cluttered RGB uint8 background: gradient + colour waves + random shapes + fine grain."""
    n, m = image_size, 32  # smooth parts are computed on an m x m grid and upsampled (cheap)
    ramp = np.linspace(0.0, 1.0, m, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    g = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
    g = (g - g.min()) / max(float(np.ptp(g)), 1e-6)
    c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    small = c0 + g[..., None] * (c1 - c0)
    for _ in range(3):
        fx, fy = rng.uniform(-4, 4, 2) * (2 * np.pi)
        wave = np.cos(fx * ramp[None, :] + fy * ramp[:, None] + rng.uniform(0, 2 * np.pi))
        small += wave[..., None] * rng.uniform(-15, 15, 3).astype(np.float32)
    img = cv2.resize(np.clip(small, 0, 255), (n, n), interpolation=cv2.INTER_LINEAR)
    img = img.astype(np.uint8)
    for _ in range(int(rng.integers(4, 16))):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        kind = rng.integers(4)
        pts = (rng.uniform(-0.1, 1.1, (3, 2)) * n * DRAW_ONE).astype(np.int32)
        if kind == 0:
            r = int(rng.uniform(0.03, 0.25) * n * DRAW_ONE)
            cv2.circle(img, pts[0], r, colour, -1, cv2.LINE_AA, DRAW_SHIFT)
        elif kind == 1:
            cv2.rectangle(img, pts[0], pts[1], colour, -1, cv2.LINE_AA, DRAW_SHIFT)
        elif kind == 2:
            cv2.fillConvexPoly(img, pts, colour, cv2.LINE_AA, DRAW_SHIFT)
        else:
            cv2.line(img, pts[0], pts[1], colour, int(rng.integers(1, 5)), cv2.LINE_AA, DRAW_SHIFT)
    # Fine grain from a small tiled noise patch (a full-frame draw costs more than the rest).
    patch = rng.standard_normal((32, 32, 3), dtype=np.float32) * np.float32(rng.uniform(0, 8))
    grain = np.tile(patch, (-(-n // 32), -(-n // 32), 1))[:n, :n]
    return np.clip(img + grain, 0, 255).astype(np.uint8)


def _tapered_band(points: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Polygon around a polyline with per-point width (sub-pixel brows)."""
    tangent = np.gradient(points, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
    offset = normal * width[:, None] / 2
    return np.concatenate([points + offset, (points - offset)[::-1]])


def _blend_masked(image: np.ndarray, layer: np.ndarray, mask: np.ndarray, box) -> None:
    """image[box] = layer * mask + image * (1 - mask), mask uint8 0..255, in place."""
    y0, y1, x0, x1 = box
    if y1 <= y0 or x1 <= x0:
        return
    m = mask[y0:y1, x0:x1, None].astype(np.float32) * (1.0 / 255.0)
    roi = image[y0:y1, x0:x1].astype(np.float32)
    image[y0:y1, x0:x1] = (roi + (layer[y0:y1, x0:x1] - roi) * m + 0.5).astype(np.uint8)


def _box(points: np.ndarray, size: int, pad: float) -> tuple[int, int, int, int]:
    lo = np.floor(points.min(axis=0) - pad).astype(int).clip(0, size)
    hi = np.ceil(points.max(axis=0) + pad + 1).astype(int).clip(0, size)
    return int(lo[1]), int(hi[1]), int(lo[0]), int(hi[0])


def render_face(
    background: np.ndarray, points: np.ndarray, appearance: Appearance, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a face over ``background`` (H, W, 3) uint8 RGB.

    points: (113, 2) frame pixel coordinates of all render points (``project``); scale: pixels per
    canonical unit (sets line widths). Returns (image, foreground coverage (H, W) uint8 0..255).
    """
    a = appearance
    img = background.copy()
    size = img.shape[0]
    fx = fixed_point(points)
    coverage = np.zeros(img.shape[:2], np.uint8)
    aa = cv2.LINE_AA

    def fill(poly: np.ndarray, colour, into_coverage: bool = False) -> None:
        cv2.fillPoly(img, [poly], colour, aa, DRAW_SHIFT)
        if into_coverage:
            cv2.fillPoly(coverage, [poly], 255, aa, DRAW_SHIFT)

    fill(fx[_NECK], tuple(0.78 * c for c in a.skin), True)
    if a.hair is not None:
        fill(fx[_HAIR_OUTER], a.hair, True)

    # Skin: the face polygon filled with a shaded colour field (light gradient, darker rim).
    face_poly = np.concatenate([fx[_JAW], fx[_FOREHEAD]])
    face_mask = np.zeros_like(coverage)
    cv2.fillPoly(face_mask, [face_poly], 255, aa, DRAW_SHIFT)
    np.maximum(coverage, face_mask, out=coverage)
    outline = points[np.r_[_JAW, np.arange(_FOREHEAD.start, _FOREHEAD.stop)]]
    y0, y1, x0, x1 = box = _box(outline, size, 1.0)
    centre = outline.mean(axis=0)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = (xx - centre[0]) / scale, (yy - centre[1]) / scale
    shade = 1.0 + a.shading * (dx * a.light_dir[0] + dy * a.light_dir[1]) - 0.12 * (dx**2 + dy**2)
    skin_layer = np.zeros(img.shape, np.float32)
    skin_layer[y0:y1, x0:x1] = np.clip(shade[..., None] * np.float32(a.skin), 0, 255)
    _blend_masked(img, skin_layer, face_mask, box)

    if a.hair is not None:  # fringe: the hair outline down to the hairline, over the forehead
        fill(np.concatenate([fx[_HAIR_OUTER], fx[_HAIRLINE][::-1]]), a.hair)

    for brow in (_BROW_L, _BROW_R):
        inner_last = brow[0] == 17  # left brow runs outer -> inner, right brow inner -> outer
        width = scale * np.linspace(0.05, 0.1, 5)
        band = _tapered_band(points[brow], width if inner_last else width[::-1])
        fill(fixed_point(band), a.brows)

    # Eyes: sclera, iris and pupil drawn on a layer, clipped by the (anti-aliased) eye polygons.
    eyes = points[np.r_[_EYE_L, _EYE_R]]
    eye_box = _box(eyes, size, 2.0)
    eye_layer = img.astype(np.float32)
    eye_mask = np.zeros_like(coverage)
    for eye in (_EYE_L, _EYE_R):
        cv2.fillPoly(eye_mask, [fx[eye]], 255, aa, DRAW_SHIFT)
        cv2.fillPoly(eye_layer, [fx[eye]], a.sclera, aa, DRAW_SHIFT)
        width = float(np.linalg.norm(points[eye[3]] - points[eye[0]]))
        centre = fixed_point(points[eye].mean(axis=0))
        cv2.circle(eye_layer, centre, int(0.22 * width * DRAW_ONE), a.iris, -1, aa, DRAW_SHIFT)
        cv2.circle(
            eye_layer, centre, int(0.1 * width * DRAW_ONE), (12.0, 10.0, 10.0), -1, aa, DRAW_SHIFT
        )
    _blend_masked(img, eye_layer, eye_mask, eye_box)
    lash = max(1, round(0.035 * scale))
    for eye in (_EYE_L, _EYE_R):
        cv2.polylines(img, [fx[eye[:4]]], False, a.lashes, lash, aa, DRAW_SHIFT)

    # Nose: shadow under the tip, nostrils, a highlight centred on the tip (landmark 30).
    fill(fx[[30, 35, 34, 33, 32, 31]], tuple(0.82 * c for c in a.skin))
    axes = (int(0.055 * scale * DRAW_ONE), int(0.028 * scale * DRAW_ONE))
    tilt = math.degrees(math.atan2(*(points[35] - points[31])[::-1]))
    for nostril, turn in zip(fx[_NOSTRILS], (25.0, -25.0)):
        cv2.ellipse(img, nostril, axes, tilt + turn, 0, 360, (0.35 * np.array(a.skin)).tolist(), -1, aa, DRAW_SHIFT)  # fmt: skip
    cv2.circle(img, fx[30], int(0.06 * scale * DRAW_ONE), a.nose_highlight, -1, aa, DRAW_SHIFT)

    fill(fx[_MOUTH_OUTER], a.lips)
    fill(fx[_MOUTH_INNER], a.mouth)
    return img, coverage
