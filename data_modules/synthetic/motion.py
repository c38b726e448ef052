"""Motion: keyframe trajectories of pose and expression whose accelerations stay under per-channel
limits, and blinks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_modules.synthetic.face import _C, CHANNELS

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
