"""The classical-filter frontier: each filter swept over its parameters on the same raw track,
and where a stabiliser sits against the sweep (issue #18).

A stabiliser is *dominated* when some filter setting is no worse on both axes (an accuracy
``x``: NRMSE, or the deviation from an offline track; a stability ``y``: error-jitter, or
Accel) at a lag no larger than max(its own, ``max_lag``). The verdict line names the dominating
setting with the lowest ``y``, or says "not dominated".
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_fa.metrics.tracks import interocular
from lightning_fa.temporal.filters import LandmarkFilter, apply_filter, make_filter

# Keys of a swept point that are measurements, not the filter's parameters.
MEASUREMENTS = frozenset(
    {"nrmse", "mcv", "mav", "error_jitter", "accel", "lag", "deviation", "latency_ms"}
)
DEFAULT_MAX_LAG = 1.0  # frames


@dataclass(frozen=True)
class FilterGrid:
    """A filter's parameter names, the value tuples swept, how to build it from one tuple, and
    the face scale of a (T, L, 2) track that its speed is measured in (None: no scale)."""

    parameters: tuple[str, ...]
    values: list[tuple[float, ...]]
    build: Callable[..., LandmarkFilter]
    scale_of: Callable[[np.ndarray], Any]


def _no_scale(track: np.ndarray) -> None:
    return None


ONE_EURO_CUTOFFS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0)
ONE_EURO_BETAS = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0)
FILTER_GRIDS: dict[str, FilterGrid] = {
    "one-euro": FilterGrid(
        ("min_cutoff", "beta"),
        list(itertools.product(ONE_EURO_CUTOFFS, ONE_EURO_BETAS)),
        lambda c, b: make_filter("one-euro", min_cutoff=c, beta=b),
        interocular,
    ),
    "moving-average": FilterGrid(
        ("window",),
        [(w,) for w in (2, 3, 4, 5, 7, 9, 13)],
        lambda w: make_filter("moving-average", window=int(w)),
        _no_scale,
    ),
    "kalman": FilterGrid(
        ("process_noise",),
        [(q,) for q in (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)],
        lambda q: make_filter("kalman", process_noise=q),
        _no_scale,
    ),
    "savgol": FilterGrid(
        ("window",),
        [(w,) for w in (5, 7, 9, 13, 17, 25, 33)],
        lambda w: make_filter("savgol", window=int(w)),
        _no_scale,
    ),
}


def smooth(
    grid: FilterGrid,
    values: tuple[float, ...],
    track: np.ndarray,
    timestamps: np.ndarray | None = None,
) -> np.ndarray:
    """One (T, L, 2) track under one setting of ``grid``, from a fresh filter; ``timestamps``
    (T,) in seconds, else frames at the filter's default rate."""
    filter = grid.build(*values)
    scale = grid.scale_of(track)
    out = apply_filter(filter, track.astype(np.float64), scale=scale, timestamps=timestamps)
    return np.asarray(out, dtype=np.float32)


def sweep(
    raw: np.ndarray,
    score: Callable[[np.ndarray], dict[str, float]],
    grids: dict[str, FilterGrid] = FILTER_GRIDS,
    timestamps: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Every setting of ``grids`` on the raw (V, T, L, 2) tracks: one point per setting, its
    filter name and parameters plus ``score(smoothed tracks)``; ``timestamps`` (T,) seconds."""
    points = []
    for name, grid in grids.items():
        for values in grid.values:
            smoothed = np.stack([smooth(grid, values, video, timestamps) for video in raw])
            points.append({"filter": name, **dict(zip(grid.parameters, values)), **score(smoothed)})
    return points


def setting_name(point: dict[str, Any]) -> str:
    """``one-euro(min_cutoff=2, beta=10)``: a swept point's filter and parameters."""
    parameters = [k for k in point if k not in MEASUREMENTS and k not in ("filter", "setting")]
    return f"{point['filter']}(" + ", ".join(f"{k}={point[k]:g}" for k in parameters) + ")"


def _lag_ok(lag: float, limit: float) -> bool:
    return not math.isfinite(lag) or lag <= limit + 1e-9  # NaN: no motion, so no lag to see


def lag_limit(ours_lag: float, max_lag: float = DEFAULT_MAX_LAG) -> float:
    """The lag a filter may have when compared with ours: max(ours, ``max_lag``)."""
    return max(ours_lag, max_lag) if math.isfinite(ours_lag) else max_lag


def frontier(
    points: Sequence[dict[str, Any]], x: str, y: str, max_lag: float = DEFAULT_MAX_LAG
) -> list[dict[str, Any]]:
    """The settings with lag <= ``max_lag`` that no other such setting beats on both ``x`` and
    ``y``, by increasing ``x``."""
    admissible = [p for p in points if _lag_ok(p["lag"], max_lag)]
    keep = [
        p
        for p in admissible
        if not any(
            q[x] <= p[x] and q[y] <= p[y] and (q[x] < p[x] or q[y] < p[y]) for q in admissible
        )
    ]
    return sorted(keep, key=lambda p: p[x])


def fair_settings(
    ours: dict[str, float],
    points: Sequence[dict[str, Any]],
    x: str,
    max_lag: float = DEFAULT_MAX_LAG,
) -> list[dict[str, Any]]:
    """The settings ours is compared with: ``x`` no worse, lag <= max(ours, ``max_lag``)."""
    limit = lag_limit(ours["lag"], max_lag)
    return [p for p in points if _lag_ok(p["lag"], limit) and p[x] <= ours[x]]


def dominating(
    ours: dict[str, float],
    points: Sequence[dict[str, Any]],
    x: str,
    y: str,
    max_lag: float = DEFAULT_MAX_LAG,
) -> list[dict[str, Any]]:
    """The settings that dominate ours, lowest ``y`` first."""
    beating = [p for p in fair_settings(ours, points, x, max_lag) if p[y] <= ours[y]]
    return sorted(beating, key=lambda p: p[y])


def verdict(
    ours: dict[str, float],
    points: Sequence[dict[str, Any]],
    x: str,
    y: str,
    max_lag: float = DEFAULT_MAX_LAG,
) -> str:
    """ "dominated by <setting> (x a vs b, y c vs d)" or "not dominated"."""
    beating = dominating(ours, points, x, y, max_lag)
    if not beating:
        return f"not dominated ({len(points)} filter settings, {x} x {y}, lag <= max(ours, {max_lag:g}))"
    best = beating[0]
    return (
        f"dominated by {setting_name(best)} ({x} {best[x]:.3f} vs ours {ours[x]:.3f}, "
        f"{y} {best[y]:.4g} vs {ours[y]:.4g}; {len(beating)} of {len(points)} settings)"
    )
