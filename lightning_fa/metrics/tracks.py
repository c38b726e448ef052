"""Metrics of whole (T, L, 2) landmark tracks: accuracy and stability against the ground truth
(`track_metrics`, the embedded benchmark), stability against an offline reference track
(`stability_metrics`, evaluate-video), the one lag metric both use, and the 68-point face
scales the filters measure speed in."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from lightning_fa.metrics import functional as F

# The 68-point outer eye corners (the interocular distance).
NORM_INDICES = (36, 45)
# Floor of the filters' speed scales: a collapsed track (every point in one place, e.g. from an
# untrained smoke-run model) must still be filterable.
MIN_SCALE_PX = 1e-3


def box_size(track: np.ndarray) -> np.ndarray:
    """(T,) mean of the landmark box's width and height (MediaPipe's One Euro speed scale)."""
    extent = track.max(axis=1) - track.min(axis=1)
    return np.maximum(extent.mean(axis=1), MIN_SCALE_PX)


def interocular(track: np.ndarray) -> np.ndarray:
    """(T,) the 68-point interocular distance (the tuned One Euro's speed scale)."""
    a, b = NORM_INDICES
    return np.maximum(np.linalg.norm(track[:, a] - track[:, b], axis=-1), MIN_SCALE_PX)


def lag(
    track: np.ndarray,
    reference: np.ndarray,
    max_lag: float = 4.0,
    match: Literal["position", "velocity"] = "position",
) -> float:
    """Frames of delay s that best align a (T, L, 2) track with a reference track,
    track_t ~ reference_{t - s}: positive when the track follows late (a causal smoother's lag).

    What is matched is what genuinely differs between the two references:
    - "position" (against the ground truth, `track_metrics`): s on a 1/8-frame grid from -1 to
      `max_lag` minimising the mean distance to the reference s frames earlier (linear
      interpolation); an unbiased tracker gives ~0. NaN when the reference does not move (no lag
      to see) or the clip is too short.
    - "velocity" (against an offline smoothed track, `stability_metrics`, whose positions a
      filter's bias moves): the whole number s in -max_lag..max_lag maximising the normalised
      cross-correlation of the mean-centred frame-to-frame velocities over the frames both
      cover; an int.
    """
    if match == "position":
        return _position_lag(track, reference, max_lag)
    if match == "velocity":
        return _velocity_lag(track, reference, int(max_lag))
    raise ValueError(f"lag: match must be 'position' or 'velocity', got {match!r}")


def _position_lag(track: np.ndarray, reference: np.ndarray, max_lag: float) -> float:
    steps = len(reference)
    start = int(np.ceil(max_lag)) + 1
    moving = steps > 1 and np.abs(np.diff(reference, axis=0)).max() > 1e-3
    if steps <= start + 1 or not moving:
        return float("nan")
    shifts = np.arange(-1.0, max_lag + 1e-9, 0.125)
    times = np.arange(start, steps)[None, :] - shifts[:, None]  # (S, T')
    times = np.clip(times, 0, steps - 1)
    low = np.floor(times).astype(int)
    frac = (times - low)[..., None, None]
    shifted = reference[low] * (1 - frac) + reference[np.minimum(low + 1, steps - 1)] * frac
    errors = np.linalg.norm(track[start:][None] - shifted, axis=-1).mean(axis=(1, 2))
    return float(shifts[int(np.argmin(errors))])


def _velocity_lag(track: np.ndarray, reference: np.ndarray, max_lag: int) -> int:
    v = np.diff(track, axis=0).reshape(track.shape[0] - 1, -1)
    w = np.diff(reference, axis=0).reshape(reference.shape[0] - 1, -1)
    v, w = v - v.mean(0), w - w.mean(0)
    best, best_score = 0, -np.inf
    for shift in range(-max_lag, max_lag + 1):
        a = v[max(shift, 0) : len(v) + min(shift, 0)]
        b = w[max(-shift, 0) : len(w) + min(-shift, 0)]
        score = float((a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-12))
        if score > best_score:
            best, best_score = shift, score
    return best


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def track_metrics(preds: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Metrics of (V, T, L, 2) frame-pixel tracks against the ground truth (SPEC 5 units)."""
    p = torch.from_numpy(preds.astype(np.float64))
    g = torch.from_numpy(targets.astype(np.float64))
    videos, truths = list(p), list(g)
    return {
        "nrmse": float(F.nrmse(p.flatten(0, 1), g.flatten(0, 1), norm_indices=NORM_INDICES)),
        "mcv": float(F.mcv(videos)),
        "mav": float(F.mav(videos)),
        "error_jitter": float(F.error_jitter(videos, truths)),
        "accel": float(F.accel(videos)) if preds.shape[1] >= 3 else float("nan"),
        "lag": _nanmean([lag(a, b) for a, b in zip(preds, targets)]),
    }


def stability_metrics(
    track: np.ndarray, reference: np.ndarray, max_lag: int = 5
) -> dict[str, float]:
    """Stability of one (T, L, 2) frame-pixel track without ground truth: MCV, MAV, Accel, the
    mean distance to an offline `reference` track and the velocity lag behind it."""
    video = [torch.from_numpy(np.asarray(track, dtype=np.float64))]
    return {
        "mcv": float(F.mcv(video)),
        "mav": float(F.mav(video)),
        "accel": float(F.accel(video)),
        "deviation": float(np.linalg.norm(track - reference, axis=-1).mean()),
        "lag": lag(track, reference, max_lag, match="velocity"),
    }
