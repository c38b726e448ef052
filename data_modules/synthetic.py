"""Synthetic talking-face videos with exact 68-point ground truth (the embedded default data).

Two generators share one motion model:

* ``procedural``: cartoon-like faces drawn with OpenCV (anti-aliased, sub-pixel ``shift``) from a
  hand-made 68-point iBUG template, with random identity (smooth shape modes + colours), pose
  (roll, scale, translation, yaw / pitch through a pseudo-depth per point) and expression (mouth
  open, smile, brows, blinks) over a cluttered background.
* ``warp``: real annotated stills (image + ``.pts``) moved along the same trajectories by a
  piecewise-affine warp of the landmark mesh, i.e. pseudo-videos with real texture.

Trajectories are keyframe segments (still / slow drift / fast move) joined by cubic smoothsteps
whose lengths are stretched until a per-channel acceleration limit holds, so the ground truth is
smooth by construction. Camera degradations (motion blur along the true motion, illumination
flicker, sensor noise, JPEG) are drawn per frame. Everything is deterministic by
``(seed, video index, frame index)``: any frame can be rendered on its own, by any worker.

Coordinates: (x, y), 0-based, pixel centres at integers; the frame is the crop (identity affine).
Canonical face units: the face is about 2 wide, y points down, the origin lies between the eyes
and the nose tip; outer eye corners are about 1.24 apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from scipy.spatial import Delaunay
from torch.utils.data import DataLoader, Dataset

from data_modules.base import EpochSampler, FaceDataModule
from data_modules.formats import log_skipped, read_image_rgb, read_pts_folder
from data_modules.landmarks import get_spec
from data_modules.transforms import (
    Degradation,
    flip_landmarks,
    motion_blur,
    to_chw_tensor,
)
from data_modules.transforms import degrade as degrade_jpeg
from lightning_fa.checks import check_ints

SPEC = get_spec("300w")
NUM_LANDMARKS = SPEC.num_landmarks

# cv2 drawing takes integer points; ``shift`` fractional bits give 1/16-pixel accuracy.
_SHIFT = 4
_ONE = 1 << _SHIFT

# Extra (non-landmark) render points appended after the 68 landmarks, by group.
_FOREHEAD = slice(68, 79)  # 11 points, right temple -> left temple (closes the jaw polygon)
_HAIRLINE = slice(79, 92)  # 13 points, right temple -> left temple
_HAIR_OUTER = slice(92, 107)  # 15 points around the skull
_NECK = slice(107, 111)
_NOSTRILS = slice(111, 113)
_NUM_RENDER_POINTS = 113

# Landmark groups of the iBUG 68-point topology.
_JAW = np.arange(0, 17)
_BROW_L, _BROW_R = np.arange(17, 22), np.arange(22, 27)
_EYE_L, _EYE_R = np.arange(36, 42), np.arange(42, 48)
_UPPER_LID_L, _LOWER_LID_L = np.array([37, 38]), np.array([41, 40])  # paired top/bottom
_UPPER_LID_R, _LOWER_LID_R = np.array([43, 44]), np.array([47, 46])
_MOUTH_OUTER, _MOUTH_INNER = np.arange(48, 60), np.arange(60, 68)

# Per-frame parameter channels (columns of a trajectory array).
CHANNELS = (
    "scale",  # pixels per canonical unit
    "tx",  # face origin offset from the frame centre, pixels
    "ty",
    "roll",  # in-plane rotation, radians
    "yaw",  # radians, orthographic rotation about the vertical axis
    "pitch",
    "mouth_open",  # canonical units of lower-lip drop
    "smile",
    "brow_raise",
    "blink_left",  # 0 open .. 1 closed (image-left eye, points 36-41)
    "blink_right",
)
_C = {name: i for i, name in enumerate(CHANNELS)}
_EXPRESSIONS = ("mouth_open", "smile", "brow_raise", "blink_left", "blink_right")


# --------------------------------------------------------------------------- template


def _arc(n: int, x_radius: float, y_centre: float, y_radius: float, a0: float, a1: float):
    """Points of an elliptic arc from angle a0 to a1 (x = r cos a, y = centre - r sin a)."""
    a = np.linspace(a0, a1, n)
    return np.stack([x_radius * np.cos(a), y_centre - y_radius * np.sin(a)], axis=1)


def _template() -> tuple[np.ndarray, np.ndarray]:
    """Mean face: (113, 2) canonical points (68 landmarks + render extras) and their depth."""
    p = np.zeros((_NUM_RENDER_POINTS, 2))
    a = np.linspace(0.0, np.pi, 17)
    # Jaw 0 (image left, the subject's right) -> chin 8 -> 16; slightly square.
    p[_JAW, 0] = -0.98 * np.sign(np.cos(a)) * np.abs(np.cos(a)) ** 0.85
    p[_JAW, 1] = -0.22 + 1.27 * np.sin(a)
    u = np.linspace(0.0, 1.0, 5)
    brow_x = -0.78 + 0.6 * u
    brow_y = -0.5 - 0.13 * np.sin(np.pi * (0.15 + 0.8 * u)) + 0.03 * u
    p[_BROW_L] = np.stack([brow_x, brow_y], 1)
    p[_BROW_R] = np.stack([-brow_x[::-1], brow_y[::-1]], 1)
    p[27:31] = np.stack([np.zeros(4), np.linspace(-0.36, 0.18, 4)], 1)
    p[31:36] = np.stack([np.linspace(-0.19, 0.19, 5), [0.27, 0.3, 0.32, 0.3, 0.27]], 1)
    eye_l = [(-0.62, -0.3), (-0.5, -0.37), (-0.34, -0.375), (-0.22, -0.3), (-0.34, -0.245)]
    eye_l.append((-0.5, -0.24))
    p[_EYE_L] = eye_l
    # Right eye: mirror of the left with the iBUG order (42 inner corner, 45 outer corner).
    p[_EYE_R] = p[list(SPEC.flip_permutation[42:48])] * (-1.0, 1.0)
    p[_MOUTH_OUTER] = [
        (-0.36, 0.62), (-0.24, 0.56), (-0.1, 0.525), (0.0, 0.54), (0.1, 0.525), (0.24, 0.56),
        (0.36, 0.62), (0.24, 0.7), (0.12, 0.74), (0.0, 0.75), (-0.12, 0.74), (-0.24, 0.7),
    ]  # fmt: skip
    p[_MOUTH_INNER] = [
        (-0.3, 0.62), (-0.1, 0.6), (0.0, 0.605), (0.1, 0.6),
        (0.3, 0.62), (0.1, 0.64), (0.0, 0.645), (-0.1, 0.64),
    ]  # fmt: skip
    p[_FOREHEAD] = _arc(13, 0.98, -0.22, 1.05, 0.0, np.pi)[1:-1]
    p[_HAIRLINE] = _arc(13, 0.95, -0.22, 0.68, 0.0, np.pi)
    p[_HAIR_OUTER] = _arc(15, 1.1, -0.22, 1.25, -0.3, np.pi + 0.3)
    p[_NECK] = [(-0.5, 0.6), (-0.6, 3.0), (0.6, 3.0), (0.5, 0.6)]
    p[_NOSTRILS] = [(-0.1, 0.265), (0.1, 0.265)]

    # Pseudo-depth (toward the camera): an ellipsoidal face surface, silhouettes at 0, a nose.
    x, y = p[:, 0], p[:, 1]
    depth = (
        0.55
        * np.sqrt(np.clip(1.0 - x**2, 0.0, None))
        * np.sqrt(np.clip(1.0 - ((y - 0.1) / 1.6) ** 2, 0.0, None))
    )
    depth[_JAW] = 0.45 * np.sin(a) ** 2
    depth[_FOREHEAD] = 0.0
    depth[_HAIR_OUTER] = -0.25
    depth[_NECK] = -0.3
    depth[np.r_[_EYE_L, _EYE_R]] -= 0.08
    depth[27:31] += [0.0, 0.08, 0.16, 0.25]
    depth[31:36] += [0.05, 0.1, 0.13, 0.1, 0.05]
    depth[_NOSTRILS] += 0.1
    return p, depth


MEAN_SHAPE, MEAN_DEPTH = _template()


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class Appearance:
    """Colours (RGB, 0-255) and lighting of one procedural face."""

    skin: tuple[float, float, float]
    lips: tuple[float, float, float]
    mouth: tuple[float, float, float]
    brows: tuple[float, float, float]
    hair: tuple[float, float, float] | None
    iris: tuple[float, float, float]
    sclera: tuple[float, float, float]
    lashes: tuple[float, float, float]
    nose_highlight: tuple[float, float, float]
    light_dir: tuple[float, float]
    shading: float  # strength of the linear light gradient across the face


@dataclass(frozen=True)
class FaceIdentity:
    """Canonical shape (N, 2), depth (N,), expression displacement fields (E, N, 2), colours."""

    shape: np.ndarray
    depth: np.ndarray
    expression: np.ndarray
    appearance: Appearance | None = None

    def radius(self, expression_max: np.ndarray) -> float:
        """Bound on the canonical 3D distance of any landmark from the origin, over all poses and
        expressions within ``expression_max`` (E,) (triangle inequality: exact for rotations)."""
        lm = slice(0, NUM_LANDMARKS)
        neutral = np.sqrt((self.shape[lm] ** 2).sum(1) + self.depth[lm] ** 2)
        motion = np.linalg.norm(self.expression[:, lm], axis=2)  # (E, 68)
        return float((neutral + np.abs(expression_max) @ motion).max())


def _scale_about(points: np.ndarray, index: np.ndarray, factor: tuple[float, float]) -> None:
    centre = points[index].mean(axis=0)
    points[index] = centre + (points[index] - centre) * factor


def sample_shape(rng: np.random.Generator) -> np.ndarray:
    """A random identity: the template under smooth low-dimensional modes + tiny point noise."""

    def mode(std: float) -> float:
        return float(np.clip(rng.normal(0.0, std), -2.5 * std, 2.5 * std))

    p = MEAN_SHAPE.copy()
    p[:, 0] *= 1.0 + mode(0.06)  # face width
    p[:, 1] *= 1.0 + mode(0.05)  # face height
    lower = np.clip((p[:, 1] + 0.2) / 1.3, 0.0, 1.0)
    jaw_like = np.r_[_JAW, np.arange(_NECK.start, _NECK.stop)]
    p[jaw_like, 0] *= 1.0 + mode(0.07) * lower[jaw_like]  # jaw width
    eyes = np.r_[_EYE_L, _EYE_R]
    spacing = mode(0.03)
    p[eyes, 0] += np.sign(p[eyes, 0]) * spacing
    p[17:27, 0] += np.sign(p[17:27, 0]) * 0.5 * spacing
    eye_size = 1.0 + mode(0.08)
    _scale_about(p, _EYE_L, (eye_size, eye_size * (1.0 + mode(0.1))))
    _scale_about(p, _EYE_R, (eye_size, eye_size * (1.0 + mode(0.1))))
    nose_len = mode(0.05)
    p[28:36, 1] += nose_len * np.array([0.33, 0.66, 1, 1, 1, 1, 1, 1])
    p[_NOSTRILS, 1] += nose_len
    nose_w = 1.0 + mode(0.1)
    p[31:36, 0] *= nose_w
    p[_NOSTRILS, 0] *= nose_w
    mouth = np.r_[_MOUTH_OUTER, _MOUTH_INNER]
    _scale_about(p, mouth, (1.0 + mode(0.08), 1.0 + mode(0.12)))
    p[mouth, 1] += mode(0.04)
    p[17:27, 1] += mode(0.03)
    p[_HAIRLINE, 1] = -0.22 + (p[_HAIRLINE, 1] + 0.22) * rng.uniform(0.75, 1.2)
    p[_HAIR_OUTER] *= rng.uniform(1.0, 1.15)
    p[:NUM_LANDMARKS] += rng.normal(0.0, 0.006, (NUM_LANDMARKS, 2))
    return p


def expression_fields(shape: np.ndarray) -> np.ndarray:
    """Displacement (E, N, 2) per unit of each expression channel, for this identity's shape.

    Blinks move the lids of the shape onto the closure line (70 % of the way down from the
    upper lid), so a blink of 1 closes the eye exactly.
    """
    fields = np.zeros((len(_EXPRESSIONS), len(shape), 2))
    mouth_open, smile, brows, blink_l, blink_r = fields
    mouth_open[[55, 56, 57, 58, 59, 65, 66, 67], 1] = 1.0
    mouth_open[[48, 54, 60, 64], 1] = 0.45
    mouth_open[_JAW[4:13], 1] = 0.6 * np.sin(np.linspace(0.0, np.pi, 11)[1:-1]) ** 2
    for corner, side in ((48, -1.0), (60, -1.0), (54, 1.0), (64, 1.0)):
        smile[corner] = (0.5 * side, -0.35)
    smile[[49, 59, 61, 67], :] = (-0.15, -0.15)
    smile[[53, 55, 63, 65], :] = (0.15, -0.15)
    brows[17:27, 1] = -1.0
    for field, upper, lower in ((blink_l, _UPPER_LID_L, _LOWER_LID_L), (blink_r, _UPPER_LID_R, _LOWER_LID_R)):  # fmt: skip
        closure = 0.3 * shape[upper, 1] + 0.7 * shape[lower, 1]
        field[upper, 1] = closure - shape[upper, 1]
        field[lower, 1] = closure - shape[lower, 1]
    return fields


def _colour(rng: np.random.Generator, base, jitter: float) -> tuple[float, float, float]:
    c = np.clip(np.asarray(base, float) * rng.uniform(1 - jitter, 1 + jitter, 3), 0.0, 255.0)
    return (float(c[0]), float(c[1]), float(c[2]))


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Random skin tone, hair, eye colours and light direction."""
    tone = rng.uniform()
    skin = np.array([95.0, 62.0, 45.0]) * (1 - tone) + np.array([240.0, 200.0, 175.0]) * tone
    skin_c = _colour(rng, skin, 0.06)
    hair_base = [(25, 20, 18), (60, 40, 25), (110, 75, 40), (190, 160, 100), (150, 150, 150)]
    hair = _colour(rng, hair_base[rng.integers(len(hair_base))], 0.15)
    iris_base = [(70, 45, 25), (50, 70, 100), (60, 80, 50), (40, 30, 25)]
    angle = rng.uniform(0.0, 2.0 * np.pi)
    return Appearance(
        skin=skin_c,
        lips=_colour(rng, np.array(skin_c) * (0.8, 0.55, 0.55) + (30, 0, 5), 0.08),
        mouth=_colour(rng, (70, 25, 30), 0.2),
        brows=hair if rng.uniform() < 0.7 else _colour(rng, (40, 30, 25), 0.3),
        hair=hair if rng.uniform() < 0.85 else None,
        iris=_colour(rng, iris_base[rng.integers(len(iris_base))], 0.15),
        sclera=_colour(rng, (235, 232, 225), 0.05),
        lashes=_colour(rng, (30, 22, 20), 0.2),
        nose_highlight=tuple(float(min(255.0, c * 1.12 + 8.0)) for c in skin_c),
        light_dir=(float(np.cos(angle)), float(np.sin(angle))),
        shading=float(rng.uniform(0.05, 0.3)),
    )


def sample_identity(rng: np.random.Generator) -> FaceIdentity:
    shape = sample_shape(rng)
    return FaceIdentity(shape, MEAN_DEPTH.copy(), expression_fields(shape), sample_appearance(rng))


# --------------------------------------------------------------------------- pose / projection


def project(identity: FaceIdentity, params: np.ndarray, image_size: int) -> np.ndarray:
    """Frame pixel coordinates (T, N, 2) of all points for per-frame parameters (T, channels).

    Canonical shape + expression -> 3D rotation (yaw, then pitch) with orthographic projection
    -> in-plane roll, scale and translation about the frame centre.
    """
    expr = params[:, [_C[name] for name in _EXPRESSIONS]]
    pts = identity.shape[None] + np.einsum("te,end->tnd", expr, identity.expression)
    x, y, z = pts[..., 0], pts[..., 1], identity.depth[None]
    yaw, pitch, roll = (params[:, _C[k], None] for k in ("yaw", "pitch", "roll"))
    x_rot = x * np.cos(yaw) + z * np.sin(yaw)
    z_rot = -x * np.sin(yaw) + z * np.cos(yaw)
    y_rot = y * np.cos(pitch) - z_rot * np.sin(pitch)
    scale = params[:, _C["scale"], None]
    cos_r, sin_r = np.cos(roll), np.sin(roll)
    centre = (image_size - 1) / 2.0
    u = centre + params[:, _C["tx"], None] + scale * (cos_r * x_rot - sin_r * y_rot)
    v = centre + params[:, _C["ty"], None] + scale * (sin_r * x_rot + cos_r * y_rot)
    return np.stack([u, v], axis=-1)


# --------------------------------------------------------------------------- trajectories


@dataclass(frozen=True)
class MotionStyle:
    """Keyframe segment statistics of one channel group: probabilities of (still, slow, fast)
    segments and their length ranges in frames; slow segments move a fraction of the way."""

    probs: tuple[float, float, float] = (0.35, 0.45, 0.2)
    still_len: tuple[int, int] = (10, 50)
    slow_len: tuple[int, int] = (30, 90)
    fast_len: tuple[int, int] = (8, 20)
    slow_fraction: tuple[float, float] = (0.2, 0.6)


_HEAD = MotionStyle()
_MOUTH = MotionStyle((0.3, 0.2, 0.5), (5, 30), (10, 30), (3, 8), (0.3, 0.8))
_FACE = MotionStyle((0.5, 0.3, 0.2), (10, 60), (15, 40), (5, 12), (0.3, 0.8))


def keyframe_track(
    rng: np.random.Generator,
    num_frames: int,
    sample_target,
    accel_limit: np.ndarray,
    style: MotionStyle,
) -> np.ndarray:
    """(T, k) values: smoothstep segments between random targets, acceleration <= accel_limit.

    ``sample_target(rng) -> (k,)`` draws a new target from a convex admissible set; every frame is
    a convex combination of two targets with one shared weight, so it stays admissible.
    """
    current = sample_target(rng)
    out = np.empty((num_frames, len(current)))
    t = 0
    while t < num_frames:
        kind = int(np.searchsorted(np.cumsum(style.probs), rng.uniform() * sum(style.probs)))
        if kind == 0:
            target, length = current, rng.integers(*style.still_len, endpoint=True)
        else:
            target = sample_target(rng)
            if kind == 1:
                target = current + rng.uniform(*style.slow_fraction) * (target - current)
            lengths = style.slow_len if kind == 1 else style.fast_len
            length = rng.integers(*lengths, endpoint=True)
            # Smoothstep 3u^2 - 2u^3 peaks at |6 delta / L^2| in acceleration: stretch L to obey.
            needed = np.sqrt(6.0 * np.abs(target - current) / accel_limit).max()
            length = max(int(length), math.ceil(needed))
        u = np.arange(1, length + 1) / length
        w = u * u * (3.0 - 2.0 * u)
        seg = current + w[:, None] * (target - current)
        out[t : t + length] = seg[: num_frames - t]
        current = target
        t += length
    return out


def _blink_track(rng: np.random.Generator, num_frames: int, amplitude: float) -> np.ndarray:
    """(T, 2) eyelid closure: raised-cosine blinks (sometimes one eye) at random intervals."""
    out = np.zeros((num_frames, 2))
    t = -int(rng.integers(0, 60))  # blinks may be under way at frame 0
    while t < num_frames:
        length = int(rng.integers(8, 12))
        profile = 0.5 * (1.0 - np.cos(2.0 * np.pi * np.arange(1, length) / length))
        eyes = [0, 1] if rng.uniform() < 0.9 else [int(rng.integers(2))]
        frames = np.arange(t + 1, t + length)
        keep = (frames >= 0) & (frames < num_frames)
        out[np.ix_(frames[keep], eyes)] = amplitude * rng.uniform(0.85, 1.0) * profile[keep, None]
        t += length + int(rng.exponential(60.0)) + 5
    return out


@dataclass(frozen=True)
class PoseRanges:
    """Admissible pose / expression ranges (canonical units and radians)."""

    roll: float = 0.3
    yaw: float = 0.45
    pitch: float = 0.2
    mouth_open: tuple[float, float] = (0.0, 0.25)
    smile: tuple[float, float] = (-0.1, 0.15)
    brow_raise: tuple[float, float] = (-0.03, 0.08)
    blink: float = 1.0
    min_scale_fraction: float = 0.65  # smallest face relative to the largest that fits
    margin_px: float = 2.0  # landmarks keep this far from the frame edge

    def expression_max(self) -> np.ndarray:
        lo_hi = (self.mouth_open, self.smile, self.brow_raise)
        return np.array([max(abs(a), abs(b)) for a, b in lo_hi] + [self.blink, self.blink])


PROCEDURAL_RANGES = PoseRanges()
# Warping a still cannot reveal what the photo does not show (teeth, profile): stay gentle.
WARP_RANGES = PoseRanges(
    roll=0.25, yaw=0.25, pitch=0.12, mouth_open=(0.0, 0.06), smile=(-0.05, 0.08), blink=0.6
)


def sample_trajectory(
    rng: np.random.Generator,
    num_frames: int,
    image_size: int,
    radius: float,
    ranges: PoseRanges = PROCEDURAL_RANGES,
) -> np.ndarray:
    """(T, len(CHANNELS)) smooth random pose / expression parameters that keep every landmark of
    a face of canonical ``radius`` inside the frame, with bounded acceleration."""
    half = (image_size - 1) / 2.0 - ranges.margin_px
    s_max = (half - 0.04 * image_size) / radius
    s_min = ranges.min_scale_fraction * s_max
    accel_px = 0.008 * image_size  # landmark acceleration budget per channel, px / frame^2

    def rigid(r: np.random.Generator) -> np.ndarray:
        # |t| + s * radius <= half is convex in (s, tx, ty): keyframe blends stay inside.
        s = r.uniform(s_min, s_max)
        room = half - s * radius
        return np.array([s, *r.uniform(-room, room, 2)])

    def box(lo: np.ndarray, hi: np.ndarray):
        return lambda r: r.uniform(lo, hi)

    angles = np.array([ranges.roll, ranges.yaw, ranges.pitch])
    rot_accel = accel_px / (s_max * radius)
    params = np.zeros((num_frames, len(CHANNELS)))
    params[:, 0:3] = keyframe_track(
        rng, num_frames, rigid, np.array([accel_px / radius, accel_px, accel_px]), _HEAD
    )
    params[:, 3:6] = keyframe_track(rng, num_frames, box(-angles, angles), rot_accel, _HEAD)
    for name, style, accel in (
        ("mouth_open", _MOUTH, 2.0 * accel_px),
        ("smile", _FACE, accel_px),
        ("brow_raise", _FACE, accel_px),
    ):
        lo, hi = getattr(ranges, name)
        params[:, _C[name]] = keyframe_track(
            rng, num_frames, box(np.array([lo]), np.array([hi])), accel / s_max, style
        )[:, 0]
    params[:, _C["blink_left"] :] = _blink_track(rng, num_frames, ranges.blink)
    return params


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
        pts = (rng.uniform(-0.1, 1.1, (3, 2)) * n * _ONE).astype(np.int32)
        if kind == 0:
            r = int(rng.uniform(0.03, 0.25) * n * _ONE)
            cv2.circle(img, pts[0], r, colour, -1, cv2.LINE_AA, _SHIFT)
        elif kind == 1:
            cv2.rectangle(img, pts[0], pts[1], colour, -1, cv2.LINE_AA, _SHIFT)
        elif kind == 2:
            cv2.fillConvexPoly(img, pts, colour, cv2.LINE_AA, _SHIFT)
        else:
            cv2.line(img, pts[0], pts[1], colour, int(rng.integers(1, 5)), cv2.LINE_AA, _SHIFT)
    # Fine grain from a small tiled noise patch (a full-frame draw costs more than the rest).
    patch = rng.standard_normal((32, 32, 3), dtype=np.float32) * np.float32(rng.uniform(0, 8))
    grain = np.tile(patch, (-(-n // 32), -(-n // 32), 1))[:n, :n]
    return np.clip(img + grain, 0, 255).astype(np.uint8)


def _fixed(points: np.ndarray) -> np.ndarray:
    """Float pixel coordinates -> cv2 fixed-point int32 (for ``shift=_SHIFT``)."""
    return np.round(points * _ONE).astype(np.int32)


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
    fx = _fixed(points)
    coverage = np.zeros(img.shape[:2], np.uint8)
    aa = cv2.LINE_AA

    def fill(poly: np.ndarray, colour, into_coverage: bool = False) -> None:
        cv2.fillPoly(img, [poly], colour, aa, _SHIFT)
        if into_coverage:
            cv2.fillPoly(coverage, [poly], 255, aa, _SHIFT)

    fill(fx[_NECK], tuple(0.78 * c for c in a.skin), True)
    if a.hair is not None:
        fill(fx[_HAIR_OUTER], a.hair, True)

    # Skin: the face polygon filled with a shaded colour field (light gradient, darker rim).
    face_poly = np.concatenate([fx[_JAW], fx[_FOREHEAD]])
    face_mask = np.zeros_like(coverage)
    cv2.fillPoly(face_mask, [face_poly], 255, aa, _SHIFT)
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
        fill(_fixed(band), a.brows)

    # Eyes: sclera, iris and pupil drawn on a layer, clipped by the (anti-aliased) eye polygons.
    eyes = points[np.r_[_EYE_L, _EYE_R]]
    eye_box = _box(eyes, size, 2.0)
    eye_layer = img.astype(np.float32)
    eye_mask = np.zeros_like(coverage)
    for eye in (_EYE_L, _EYE_R):
        cv2.fillPoly(eye_mask, [fx[eye]], 255, aa, _SHIFT)
        cv2.fillPoly(eye_layer, [fx[eye]], a.sclera, aa, _SHIFT)
        width = float(np.linalg.norm(points[eye[3]] - points[eye[0]]))
        centre = _fixed(points[eye].mean(axis=0))
        cv2.circle(eye_layer, centre, int(0.22 * width * _ONE), a.iris, -1, aa, _SHIFT)
        cv2.circle(eye_layer, centre, int(0.1 * width * _ONE), (12.0, 10.0, 10.0), -1, aa, _SHIFT)
    _blend_masked(img, eye_layer, eye_mask, eye_box)
    lash = max(1, round(0.035 * scale))
    for eye in (_EYE_L, _EYE_R):
        cv2.polylines(img, [fx[eye[:4]]], False, a.lashes, lash, aa, _SHIFT)

    # Nose: shadow under the tip, nostrils, a highlight centred on the tip (landmark 30).
    fill(fx[[30, 35, 34, 33, 32, 31]], tuple(0.82 * c for c in a.skin))
    axes = (int(0.055 * scale * _ONE), int(0.028 * scale * _ONE))
    tilt = math.degrees(math.atan2(*(points[35] - points[31])[::-1]))
    for nostril, turn in zip(fx[_NOSTRILS], (25.0, -25.0)):
        cv2.ellipse(img, nostril, axes, tilt + turn, 0, 360, (0.35 * np.array(a.skin)).tolist(), -1, aa, _SHIFT)  # fmt: skip
    cv2.circle(img, fx[30], int(0.06 * scale * _ONE), a.nose_highlight, -1, aa, _SHIFT)

    fill(fx[_MOUTH_OUTER], a.lips)
    fill(fx[_MOUTH_INNER], a.mouth)
    return img, coverage


# --------------------------------------------------------------------------- degradations

# The levels of `Degradation` generated video applies (per frame, `apply_degradation`).
VIDEO_LEVELS = ("noise_sigma", "jpeg_quality", "blur_exposure", "flicker")


def apply_degradation(
    image: np.ndarray,
    degradation: Degradation,
    rng: np.random.Generator,
    motion: np.ndarray,
    background: np.ndarray | None = None,
    coverage: np.ndarray | None = None,
) -> np.ndarray:
    """Motion blur along ``motion`` (px / frame), flicker, noise, JPEG on an RGB uint8 frame.

    With ``background`` and ``coverage`` (the static scene and the moving layer's alpha) only the
    moving layer is smeared: out = B (1 - blur(a)) + blur(I - B (1 - a)); else the whole frame.
    """
    d = degradation
    d.check_levels(*VIDEO_LEVELS, source="generated video (it blurs along its own motion)")
    out = image
    streak = np.asarray(motion, float) * d.blur_exposure
    if np.hypot(*streak) >= 0.5:

        def blur(x: np.ndarray) -> np.ndarray:
            return motion_blur(x, streak)

        frame = image.astype(np.float32)
        if background is None or coverage is None:
            smeared = blur(frame)
        else:
            b = background.astype(np.float32)
            alpha = coverage.astype(np.float32) / 255.0
            moving = frame - b * (1.0 - alpha[..., None])
            smeared = b * (1.0 - blur(alpha)[..., None]) + blur(moving)
        out = np.clip(smeared + 0.5, 0, 255).astype(np.uint8)
    if d.flicker > 0 or d.noise_sigma > 0:
        # Gain and noise in one float32 pass (float32 draws: half the cost of float64 ones).
        gain = 1.0 + d.flicker * float(np.clip(rng.standard_normal(), -3, 3))
        noisy = out.astype(np.float32) * np.float32(gain) + np.float32(0.5)
        if d.noise_sigma > 0:
            noisy += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(d.noise_sigma)
        out = np.clip(noisy, 0, 255).astype(np.uint8)
    return degrade_jpeg(out, rng, jpeg_quality=d.jpeg_quality)


# --------------------------------------------------------------------------- warping real stills


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) least-squares similarity (rotation, uniform scale, translation) mapping src -> dst."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    zs = (src - mu_s) @ (1.0, 1j)
    zd = (dst - mu_d) @ (1.0, 1j)
    c = (np.conj(zs) @ zd) / (np.abs(zs) ** 2).sum()
    m = np.array([[c.real, -c.imag], [c.imag, c.real]])
    return np.concatenate([m, (mu_d - m @ mu_s)[:, None]], axis=1)


def piecewise_affine_warp(
    image: np.ndarray, src_points: np.ndarray, dst_points: np.ndarray, size: int
) -> np.ndarray:
    """Warp ``image`` so that ``src_points`` land on ``dst_points`` in a (size, size) output.

    Backward mapping through the Delaunay triangles of the destination points plus anchors just
    outside the frame; the anchors follow the best similarity, so the scene moves rigidly with the
    head and only the face mesh deforms. Every landmark is a mesh vertex: exact correspondence.
    """
    to_src = similarity_transform(dst_points, src_points)
    ring = np.array([-2.0, (size - 1) / 2.0, size + 1.0])
    anchors = np.array([(x, y) for x in ring for y in ring if (x, y) != (ring[1], ring[1])])
    dst = np.concatenate([dst_points, anchors])
    src = np.concatenate([src_points, anchors @ to_src[:, :2].T + to_src[:, 2]])
    tri = Delaunay(dst).simplices
    corners = np.concatenate([dst[tri], np.ones((len(tri), 3, 1))], axis=2)  # (K, 3, 3)
    singular = np.abs(np.linalg.det(corners)) < 1e-6
    corners[singular] = np.eye(3)
    affines = np.linalg.solve(corners, src[tri])  # (K, 3, 2): [x y 1] @ A = source point
    affines[singular] = to_src.T
    affines = np.concatenate([affines, to_src.T[None]])  # last: fallback for uncovered pixels
    label = np.full((size, size), len(tri), np.int32)
    # One cv2 call per triangle (~150): far cheaper than testing every pixel against every one.
    for k, poly in enumerate(_fixed(dst[tri])):
        cv2.fillConvexPoly(label, poly, k, cv2.LINE_8, _SHIFT)
    coeff = affines[label].astype(np.float32)  # (H, W, 3, 2)
    grid = np.arange(size, dtype=np.float32)
    maps = grid[None, :, None] * coeff[:, :, 0] + grid[:, None, None] * coeff[:, :, 1]
    maps += coeff[:, :, 2]
    return cv2.remap(
        image, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


class StillSources:
    """Annotated stills (image + 68-point ``.pts`` pairs, searched recursively under a folder)."""

    def __init__(self, source_dir: str | Path, cache_size: int = 64) -> None:
        root = Path(source_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"source_dir not found: {root} (expected image + .pts pairs)")
        self.records = []
        for folder in sorted({p.parent for p in root.rglob("*.pts")}):
            records, problems = read_pts_folder(folder, NUM_LANDMARKS, "skip")
            self.records += records
            log_skipped(f"source_dir {folder}", problems)  # a bad .pts is left out, not silently
        if not self.records:
            raise ValueError(f"source_dir {root} holds no image + 68-point .pts pairs")
        self._cache: dict[tuple[int, float], tuple[np.ndarray, np.ndarray]] = {}
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int, target_iod: float) -> tuple[np.ndarray, np.ndarray]:
        """(RGB image, (68, 2) landmarks), downscaled so the inter-ocular distance is at most
        ``target_iod`` (the warp then never minifies much: no aliasing). Cached per process."""
        key = (index, target_iod)
        if key not in self._cache:
            record = self.records[index]
            image = read_image_rgb(record.image_path)
            points = record.landmarks.astype(np.float64)
            iod = float(np.linalg.norm(points[SPEC.norm_indices[0]] - points[SPEC.norm_indices[1]]))
            factor = target_iod / max(iod, 1e-6)
            if factor < 1.0:
                h, w = image.shape[:2]
                new_w, new_h = max(1, round(w * factor)), max(1, round(h * factor))
                image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
                points = (points + 0.5) * (new_w / w, new_h / h) - 0.5
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = (image, points)
        return self._cache[key]


# --------------------------------------------------------------------------- videos


GeneratorMode = Literal["procedural", "warp"]


class SyntheticVideo:
    """One generated video: exact landmarks of every frame up front, frames rendered on demand.

    key: integers that seed everything (video-level draws from ``key + (0,)``, frame ``t``'s
    degradation from ``key + (1, t)``), so a frame is the same whichever clip asks for it.
    """

    def __init__(
        self,
        key: tuple[int, ...],
        num_frames: int,
        image_size: int,
        degradation: Degradation,
        sources: StillSources | None = None,
    ) -> None:
        self.key, self.image_size, self.degradation = key, image_size, degradation
        rng = np.random.default_rng((*key, 0))
        if sources is None:
            ranges = PROCEDURAL_RANGES
            self.identity = sample_identity(rng)
            self.background = make_background(rng, image_size)
        else:
            ranges = WARP_RANGES
            image, points = sources.load(int(rng.integers(len(sources))), 0.5 * image_size)
            if rng.uniform() < 0.5:
                image = image[:, ::-1]
                points = flip_landmarks(points, image.shape[1], SPEC.flip_permutation)
            self.source_image, self.source_points = image, points
            lm = MEAN_SHAPE[:NUM_LANDMARKS]
            to_canonical = similarity_transform(points, lm)
            shape = points @ to_canonical[:, :2].T + to_canonical[:, 2]
            self.identity = FaceIdentity(
                shape, MEAN_DEPTH[:NUM_LANDMARKS].copy(), expression_fields(shape)
            )
        radius = self.identity.radius(ranges.expression_max())
        self.params = sample_trajectory(rng, num_frames, image_size, radius, ranges)
        self.points = project(self.identity, self.params, image_size)
        self.landmarks = self.points[:, :NUM_LANDMARKS]
        centre = self.landmarks.mean(axis=1)
        self.motion = np.gradient(centre, axis=0) if num_frames > 1 else np.zeros_like(centre)

    def __len__(self) -> int:
        return len(self.params)

    def render_clean(self, t: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Frame t before degradation, and the moving layer's coverage (None: whole frame)."""
        if self.identity.appearance is None:
            image = piecewise_affine_warp(
                self.source_image, self.source_points, self.landmarks[t], self.image_size
            )
            return image, None
        scale = float(self.params[t, _C["scale"]])
        return render_face(self.background, self.points[t], self.identity.appearance, scale)

    def frame(self, t: int) -> np.ndarray:
        """Frame t, (H, W, 3) uint8 RGB, degraded."""
        image, coverage = self.render_clean(t)
        background = None if coverage is None else self.background
        rng = np.random.default_rng((*self.key, 1, t))
        return apply_degradation(image, self.degradation, rng, self.motion[t], background, coverage)


_VIDEO_STREAM, _IMAGE_STREAM, _WINDOW_STREAM = 0, 1, 2
# Held-out splits use these seed offsets (val: seed + 1e6, test: seed + 2e6).
SPLIT_SEED_OFFSET = 1_000_000


def _interocular(landmarks: np.ndarray) -> np.ndarray:
    a, b = SPEC.norm_indices
    return np.linalg.norm(landmarks[..., a, :] - landmarks[..., b, :], axis=-1)


class _Generated(Dataset):
    """Shared configuration of the synthetic datasets."""

    def __init__(
        self,
        count: int,
        image_size: int,
        degradation: str | Degradation,
        seed: int,
        mode: GeneratorMode,
        source_dir: str | Path | None,
    ) -> None:
        check_ints(count=count)
        check_ints(32, image_size=image_size)
        check_ints(0, seed=seed)
        if mode not in ("procedural", "warp"):
            raise ValueError(f"mode must be 'procedural' or 'warp', got {mode!r}")
        if (mode == "warp") != (source_dir is not None):
            raise ValueError(
                f"mode='warp' needs a source_dir of image + .pts pairs and 'procedural' takes none; "
                f"got mode={mode!r}, source_dir={source_dir!r}"
            )
        self.count, self.image_size, self.seed, self.mode = count, image_size, seed, mode
        self.degradation = Degradation.resolve(degradation)
        self.sources = StillSources(source_dir) if source_dir is not None else None

    def __len__(self) -> int:
        return self.count

    def _check_index(self, index: int) -> int:
        if not -self.count <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} items")
        return index % self.count


class SyntheticFaceVideos(_Generated):
    """``num_videos`` synthetic videos of ``num_frames`` frames as sequence-mode samples.

    Item i is video i whole: frames uint8 (T, 3, H, W) RGB, landmarks float32 (T, 68, 2),
    affine identity (T, 2, 3) (the frame is the crop), valid all True, norm_size inter-ocular
    distance per frame, video_id, frame_index. Use ``clip`` for a window of a video.
    """

    def __init__(
        self,
        num_videos: int,
        num_frames: int,
        image_size: int = 128,
        degradation: str | Degradation = "mild",
        seed: int = 0,
        mode: GeneratorMode = "procedural",
        source_dir: str | Path | None = None,
    ) -> None:
        super().__init__(num_videos, image_size, degradation, seed, mode, source_dir)
        check_ints(num_frames=num_frames)
        self.num_frames = num_frames

    def video(self, index: int) -> SyntheticVideo:
        index = self._check_index(index)
        return SyntheticVideo(
            (self.seed, _VIDEO_STREAM, index),
            self.num_frames,
            self.image_size,
            self.degradation,
            self.sources,
        )

    def clip(self, index: int, start: int = 0, length: int | None = None) -> dict:
        """Frames start .. start + length - 1 of video ``index`` (rendering only those)."""
        length = self.num_frames - start if length is None else length
        if start < 0 or length < 1 or start + length > self.num_frames:
            raise ValueError(
                f"clip [{start}, {start + length}) outside the video's 0..{self.num_frames} frames"
            )
        video = self.video(index)
        frames = np.stack([video.frame(t) for t in range(start, start + length)])
        landmarks = video.landmarks[start : start + length].astype(np.float32)
        return {
            "frames": torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))),
            "landmarks": torch.from_numpy(landmarks),
            "affine": torch.eye(2, 3).expand(length, 2, 3).clone(),
            "valid": torch.ones(length, dtype=torch.bool),
            "norm_size": torch.from_numpy(_interocular(landmarks).astype(np.float32)),
            "video_id": torch.tensor(self._check_index(index), dtype=torch.int64),
            "frame_index": torch.arange(start, start + length, dtype=torch.int64),
        }

    def __getitem__(self, index: int) -> dict:
        return self.clip(index)


class SyntheticVideoWindows(Dataset):
    """Training windows: item i is ``seq_len`` consecutive frames of a video, the video and the
    start both drawn from (seed, i) (deterministic per index, so workers agree)."""

    def __init__(self, videos: SyntheticFaceVideos, num_windows: int, seq_len: int) -> None:
        check_ints(num_windows=num_windows, seq_len=seq_len)
        if seq_len > videos.num_frames:
            raise ValueError(f"seq_len {seq_len} exceeds the videos' {videos.num_frames} frames")
        self.videos, self.num_windows, self.seq_len = videos, num_windows, seq_len

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_windows:
            raise IndexError(f"index {index} out of range for {self.num_windows} windows")
        rng = np.random.default_rng((self.videos.seed, _WINDOW_STREAM, index))
        video = int(rng.integers(len(self.videos)))
        start = int(rng.integers(self.videos.num_frames - self.seq_len + 1))
        return self.videos.clip(video, start, self.seq_len)


class SyntheticFaceImages(_Generated):
    """``num_images`` random synthetic faces as image-mode samples (backbone pretraining).

    Each is the middle frame of its own 3-frame clip, so motion blur follows a real motion.
    """

    def __init__(
        self,
        num_images: int,
        image_size: int = 128,
        degradation: str | Degradation = "mild",
        seed: int = 0,
        mode: GeneratorMode = "procedural",
        source_dir: str | Path | None = None,
    ) -> None:
        super().__init__(num_images, image_size, degradation, seed, mode, source_dir)

    def __getitem__(self, index: int) -> dict:
        index = self._check_index(index)
        key = (self.seed, _IMAGE_STREAM, index)
        video = SyntheticVideo(key, 3, self.image_size, self.degradation, self.sources)
        landmarks = video.landmarks[1].astype(np.float32)
        return {
            "image": to_chw_tensor(video.frame(1)),
            "landmarks": torch.from_numpy(landmarks),
            "affine": torch.eye(2, 3),
            "visible": torch.ones(NUM_LANDMARKS, dtype=torch.bool),
            "norm_size": torch.tensor(float(_interocular(landmarks)), dtype=torch.float32),
            "index": torch.tensor(index, dtype=torch.int64),
        }


# --------------------------------------------------------------------------- DataModule


class SyntheticDataModule(FaceDataModule):
    """Synthetic faces for backbone pretraining (``mode="image"``) or ConvLSTM fine-tuning
    (``mode="sequence"``: random windows of ``seq_len`` frames from generated videos).

    Validation / test use held-out seeds (``seed + SPLIT_SEED_OFFSET`` and twice that); in
    sequence mode they stream whole videos with batch size 1. ``eval_degradation`` may list
    several presets (e.g. ["clean", "heavy"]): one val / test dataloader per entry, in order.
    """

    spec = SPEC

    def __init__(
        self,
        mode: Literal["image", "sequence"] = "sequence",
        generator: GeneratorMode = "procedural",
        source_dir: str | None = None,
        image_size: int = 128,
        seq_len: int = 8,
        batch_size: int = 8,
        num_workers: int = 0,
        train_samples: int = 2048,
        train_videos: int = 1024,
        train_video_frames: int = 150,
        val_samples: int = 256,
        val_videos: int = 4,
        val_frames: int = 100,
        test_samples: int = 512,
        test_videos: int = 8,
        test_frames: int = 200,
        degradation: str = "mild",
        eval_degradation: str | list[str] = "mild",
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if mode not in ("image", "sequence"):
            raise ValueError(f"mode must be 'image' or 'sequence', got {mode!r}")
        check_ints(
            seq_len=seq_len,
            batch_size=batch_size,
            train_samples=train_samples,
            train_videos=train_videos,
            train_video_frames=train_video_frames,
            val_samples=val_samples,
            val_videos=val_videos,
            val_frames=val_frames,
            test_samples=test_samples,
            test_videos=test_videos,
            test_frames=test_frames,
        )
        check_ints(32, image_size=image_size)
        self.check_loader_settings(num_workers, seed)
        if mode == "sequence" and seq_len > train_video_frames:
            raise ValueError(
                f"seq_len={seq_len} exceeds train_video_frames={train_video_frames} (the windows "
                "are cut from the training videos)"
            )
        self.save_hyperparameters()
        evals = [eval_degradation] if isinstance(eval_degradation, str) else list(eval_degradation)
        for name in [degradation, *evals]:
            Degradation.resolve(name)  # fail at construction, not at the first batch
        self.eval_degradations = evals

    @property
    def eval_loader_names(self) -> list[str]:
        """Metric prefixes of the evaluation loaders: one per degradation level."""
        return list(self.eval_degradations)

    def _common(self, degradation: str, split: int) -> dict:
        h = self.hparams
        return {
            "image_size": h.image_size,
            "degradation": degradation,
            "seed": h.seed + split * SPLIT_SEED_OFFSET,
            "mode": h.generator,
            "source_dir": h.source_dir,
        }

    def _eval_sets(self, split: int, samples: int, videos: int, frames: int) -> list[Dataset]:
        if self.hparams.mode == "image":
            return [SyntheticFaceImages(samples, **self._common(d, split)) for d in self.eval_degradations]  # fmt: skip
        return [SyntheticFaceVideos(videos, frames, **self._common(d, split)) for d in self.eval_degradations]  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if h.mode == "image":
            self.train_set = SyntheticFaceImages(h.train_samples, **self._common(h.degradation, 0))
        else:
            videos = SyntheticFaceVideos(
                h.train_videos, h.train_video_frames, **self._common(h.degradation, 0)
            )
            self.train_set = SyntheticVideoWindows(videos, h.train_samples, h.seq_len)
        self.val_sets = self._eval_sets(1, h.val_samples, h.val_videos, h.val_frames)
        self.test_sets = self._eval_sets(2, h.test_samples, h.test_videos, h.test_frames)

    def train_dataloader(self) -> DataLoader:
        # Shuffled from (seed, epoch), not from the global RNG, so a resumed run replays the
        # same order (checkpoints do not store RNG states).
        sampler = EpochSampler(len(self.train_set), seed=self.hparams.seed, with_epoch=False)
        return self.loader(self.train_set, self.hparams.batch_size, sampler)

    def _eval_loaders(self, sets: list[Dataset]) -> DataLoader | list[DataLoader]:
        # Whole videos one at a time (the temporal state runs through each video in order).
        batch = self.hparams.batch_size if self.hparams.mode == "image" else 1
        loaders = [self.loader(s, batch) for s in sets]
        return loaders[0] if len(loaders) == 1 else loaders

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._eval_loaders(self.val_sets)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._eval_loaders(self.test_sets)
