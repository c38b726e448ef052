"""Why a tuned causal filter dominates the learned stage on the embedded benchmark (issue #18).

Reads an embedded run folder (`lightning-fa demo --out RUN` / `make finetune RUN_DIR=RUN`:
``metrics.json``, ``tracks.npz``, ``finetuned.ckpt``) and measures, per held-out set:

(a) how much of the raw PDC track's error is shared by all landmarks: per frame the error is
    projected onto the errors a global translation (2 dof), similarity (4) or affine (6)
    transform of the true shape can produce (a linear least-squares fit of ``truth -> raw``;
    the identity lies in each model, so the fitted part of ``raw - truth`` is exactly that
    projection and the two parts are orthogonal). Shares of the error energy, of its
    fluctuation about each landmark's per-video mean (the part a smoother acts on) and of the
    frame-to-frame jitter energy. Isotropic i.i.d. noise would put k / (2 L) of its energy in
    a k-dof model (3 % for a similarity at 68 landmarks);
(b) how the error follows per-frame degradation (motion-blur streak length, flicker gain; the
    sensor noise and JPEG quality are constant within a video) and per-landmark heatmap
    statistics (peak, thresholded mass, spread of the thresholded mass): Spearman correlations
    within each (video, landmark) series, and the error variance in the frames of the top vs
    the bottom quartile of each statistic (what a Kalman gain set by a measured noise uses);
(c) the bounds: each classical filter swept over its parameters on the raw PDC track, the
    (NRMSE, error-jitter) frontier of the settings with lag <= 1 frame and where ours sits,
    and the offline zero-phase Butterworth smoother of the raw track over its cutoff;
(d) a probe of a shared face-level motion state built from the classical filters
    (`SplitFilter`: the similarity part and the per-landmark part of each raw step smoothed
    apart) against that frontier.

    python experiments/analysis/stabiliser_bounds.py RUN [--out JSON] [--no-heatmaps]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from data_modules.embedded import rendered
from data_modules.synthetic import SyntheticVideo
from lightning_fa.commands.embedded import config as embedded_config
from lightning_fa.heatmaps import decode, heatmap_to_crop
from lightning_fa.metrics import frontier as filter_frontier
from lightning_fa.metrics.frontier import FILTER_GRIDS, FilterGrid, setting_name
from lightning_fa.metrics.tracks import interocular, track_metrics
from lightning_fa.systems.finetune import StableAlignmentModule
from lightning_fa.temporal import make_filter
from lightning_fa.temporal.filters import LandmarkFilter, zero_phase_smooth

MODELS = {"translation": 2, "similarity": 4, "affine": 6}


# (c) the classical grids are the library's (`lightning_fa.metrics.frontier.FILTER_GRIDS`).
# The split probe: the shared part under the moving sets' best One Euro settings, the
# per-landmark part under a low-cutoff One Euro (beta 0: a fixed first-order low-pass).
SPLIT = FilterGrid(
    ("shared_cutoff", "shared_beta", "residual_cutoff"),
    list(itertools.product((0.5, 1.0, 2.0, 4.0), (10.0, 30.0), (0.1, 0.3, 1.0, 2.0))),
    lambda c, b, r: SplitFilter(
        make_filter("one-euro", min_cutoff=c, beta=b), make_filter("one-euro", min_cutoff=r, beta=0)
    ),
    interocular,
)
GRIDS = {**FILTER_GRIDS, "split": SPLIT}
ZERO_PHASE_CUTOFFS_HZ = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)
MAX_LAG = 1.0


# --------------------------------------------------------------------------- (a) decomposition


def transform_basis(truth: np.ndarray, model: str) -> np.ndarray:
    """(..., 2L, k) columns spanning the displacements ``A(g) - g`` that a global transform of
    the shape ``truth`` (..., L, 2) can produce (flattened x0, y0, x1, y1, ...). The shape is
    centred first, which changes the columns' mix but not their span, and conditions the fit."""
    g = truth - truth.mean(axis=-2, keepdims=True)
    x, y = g[..., 0], g[..., 1]
    one, zero = np.ones_like(x), np.zeros_like(x)
    columns = [(one, zero), (zero, one)]  # translation
    if model in ("similarity", "affine"):
        columns += [(x, y), (-y, x)]  # uniform scale, rotation
    if model == "affine":
        columns += [(x, -y), (y, x)]  # anisotropic scale, shear
    if model not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {model!r}")
    return np.stack([np.stack(pair, axis=-1).reshape(*x.shape[:-1], -1) for pair in columns], -1)


def shared_part(errors: np.ndarray, truth: np.ndarray, model: str) -> np.ndarray:
    """The part of each frame's error (..., L, 2) that one global transform explains: the
    least-squares projection onto ``transform_basis`` of that frame's true shape."""
    basis = transform_basis(truth.astype(np.float64), model)
    flat = errors.astype(np.float64).reshape(*errors.shape[:-2], -1, 1)
    coefficients = np.linalg.solve(
        np.swapaxes(basis, -1, -2) @ basis, np.swapaxes(basis, -1, -2) @ flat
    )
    return (basis @ coefficients).reshape(errors.shape)


def _energy(x: np.ndarray) -> float:
    return float(np.square(x).sum())


def decomposition(errors: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Shares of the error energy of (V, T, L, 2) errors: static bias and, per transform model,
    the shared part vs the per-landmark residual, of the error, of its fluctuation about each
    (video, landmark) mean and of the frame-to-frame jitter ``e_t - e_{t-1}``; and the share of
    the true frame-to-frame motion ``g_t - g_{t-1}`` that a global transform of ``g_{t-1}``
    explains (how rigid the face's motion is; NaN for a still face).

    The shared and residual parts of a frame are orthogonal, so their energy shares add up to
    1; after the temporal mean or difference they need not (``*_cross`` is the rest)."""
    total = _energy(errors)
    bias = errors.mean(axis=1, keepdims=True)
    fluctuation = errors - bias
    jitter = np.diff(errors, axis=1)
    motion = np.diff(truth, axis=1)
    out: dict[str, Any] = {
        "error_energy_px2_per_point": total / errors[..., 0].size,
        "bias_share": _energy(np.broadcast_to(bias, errors.shape)) / total,
        "models": {},
    }
    for model, dof in MODELS.items():
        shared = shared_part(errors, truth, model)
        residual = errors - shared
        parts = {
            "error": (shared, residual, total),
            "fluctuation": (
                shared - shared.mean(axis=1, keepdims=True),
                residual - residual.mean(axis=1, keepdims=True),
                _energy(fluctuation),
            ),
            "jitter": (np.diff(shared, axis=1), np.diff(residual, axis=1), _energy(jitter)),
        }
        entry: dict[str, float] = {"iid_share": dof / (2 * errors.shape[-2])}
        moved = _energy(motion)
        entry["truth_motion_shared"] = (
            _energy(shared_part(motion, truth[:, :-1], model)) / moved if moved > 0 else math.nan
        )
        for name, (s, r, whole) in parts.items():
            entry[f"{name}_shared"] = _energy(s) / whole
            entry[f"{name}_residual"] = _energy(r) / whole
            entry[f"{name}_cross"] = 1.0 - entry[f"{name}_shared"] - entry[f"{name}_residual"]
        out["models"][model] = entry
    return out


# --------------------------------------------------------------------------- (b) evidence quality


def frame_degradation(video: SyntheticVideo) -> dict[str, np.ndarray]:
    """Per-frame degradation levels (T,) of a synthetic video: the motion-blur streak length
    (px; `apply_degradation` smears only streaks >= 0.5 px) and |flicker gain - 1|.

    The gain is the first draw of frame t's generator (seeded by ``key + (1, t)``), exactly as
    `data_modules.synthetic.apply_degradation` draws it; tests/test_stabiliser_bounds.py checks
    that against a rendered frame."""
    d = video.degradation
    streak = np.hypot(*(np.asarray(video.motion, float) * d.blur_exposure).T)
    gain = np.zeros(len(video))
    if d.flicker > 0 or d.noise_sigma > 0:
        for t in range(len(video)):
            draw = np.random.default_rng((*video.key, 1, t)).standard_normal()
            gain[t] = d.flicker * abs(float(np.clip(draw, -3, 3)))
    return {"blur_streak_px": streak, "flicker": gain}


def heatmap_statistics(heatmaps: torch.Tensor, threshold: float) -> dict[str, np.ndarray]:
    """Per-map statistics (..., L) of heatmaps (..., L, h, w): the peak value, the thresholded
    mass PDC averages over (values >= threshold) and that mass's spatial spread
    sqrt(var_x + var_y) in heatmap pixels (0 where no mass survives)."""
    maps = heatmaps.double()
    kept = torch.where(maps >= threshold, maps, 0.0)
    mass = kept.sum((-2, -1))
    h, w = maps.shape[-2:]
    ys = torch.arange(h, dtype=maps.dtype)[:, None]
    xs = torch.arange(w, dtype=maps.dtype)[None, :]
    safe = torch.where(mass > 0, mass, 1.0)
    mx = (kept * xs).sum((-2, -1)) / safe
    my = (kept * ys).sum((-2, -1)) / safe
    var = (kept * (xs**2 + ys**2)).sum((-2, -1)) / safe - mx**2 - my**2
    return {
        "peak": maps.amax((-2, -1)).numpy(),
        "mass": mass.numpy(),
        "spread": var.clamp(min=0).sqrt().numpy(),
    }


def spearman_along_time(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation over axis 0 of two (T, ...) arrays, per remaining entry
    (NaN where either series is constant)."""
    ra, rb = stats.rankdata(a, axis=0), stats.rankdata(b, axis=0)
    ra, rb = ra - ra.mean(axis=0), rb - rb.mean(axis=0)
    denominator = np.sqrt((ra**2).sum(axis=0) * (rb**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (ra * rb).sum(axis=0) / denominator, np.nan)


def quartile_variance_ratio(error2: np.ndarray, statistic: np.ndarray) -> np.ndarray:
    """Per series (axis 0 is time): mean squared error in the frames where the statistic is in
    its top quartile over that in its bottom quartile (NaN for a constant statistic)."""
    low, high = np.quantile(statistic, [0.25, 0.75], axis=0)
    top = np.where(statistic >= high, error2, np.nan)
    bottom = np.where(statistic <= low, error2, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.nanmean(top, axis=0) / np.nanmean(bottom, axis=0)
    return np.where(high > low, ratio, np.nan)


def _summary(values: np.ndarray) -> dict[str, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"mean": math.nan, "median": math.nan, "count": 0}
    return {
        "mean": float(finite.mean()),
        "median": float(np.median(finite)),
        "count": int(finite.size),
    }


def _per_video(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Spearman over time of two (V, T) series, within each video, summarised over videos."""
    return _summary(np.array([spearman_along_time(x, y) for x, y in zip(a, b)], float))


def evidence(
    errors: np.ndarray,
    truth: np.ndarray,
    per_frame: dict[str, np.ndarray],
    per_map: dict[str, np.ndarray],
) -> dict[str, Any]:
    """(b) for one set: errors and truth (V, T, L, 2); per_frame {name: (V, T)} degradation
    levels; per_map {name: (V, T, L)} heatmap statistics.

    The error's size is |e| and its deviation |e - mean_t e| from the landmark's static bias
    (what a smoother acts on). Correlations run within each video: a frame's degradation level
    against the landmarks' mean deviation, and against its shared (similarity) and residual
    parts; a heatmap statistic within each (video, landmark) series, and, averaged over the
    landmarks, per frame (a frame-level quality)."""
    size = np.linalg.norm(errors, axis=-1)  # (V, T, L)
    fluctuation = errors - errors.mean(axis=1, keepdims=True)
    deviation = np.linalg.norm(fluctuation, axis=-1)
    shared = shared_part(fluctuation, truth, "similarity")
    frame = {
        "deviation": deviation.mean(axis=-1),  # (V, T)
        "shared_deviation": np.linalg.norm(shared, axis=-1).mean(axis=-1),
        "residual_deviation": np.linalg.norm(fluctuation - shared, axis=-1).mean(axis=-1),
    }
    out: dict[str, Any] = {"per_frame": {}, "per_landmark": {}}
    for name, level in per_frame.items():
        out["per_frame"][name] = {
            "level_mean": float(level.mean()),
            "level_max": float(level.max()),
            "spearman_error": _per_video(level, size.mean(axis=-1)),
            **{f"spearman_{k}": _per_video(level, v) for k, v in frame.items()},
        }
    time_first = np.moveaxis(size, 1, 0), np.moveaxis(deviation, 1, 0)  # (T, V, L)
    for name, statistic in per_map.items():
        series = np.moveaxis(statistic, 1, 0)
        out["per_landmark"][name] = {
            "value_mean": float(statistic.mean()),
            "spearman_error": _summary(spearman_along_time(series, time_first[0])),
            "spearman_deviation": _summary(spearman_along_time(series, time_first[1])),
            "deviation_variance_top_vs_bottom_quartile": _summary(
                quartile_variance_ratio(time_first[1] ** 2, series)
            ),
            "frame_mean_spearman_deviation": _per_video(statistic.mean(-1), frame["deviation"]),
            "frame_mean_spearman_shared_deviation": _per_video(
                statistic.mean(-1), frame["shared_deviation"]
            ),
        }
    return out


def held_out_config(run_dir: Path) -> embedded_config.PipelineConfig:
    """The recorded pretraining and evaluation sections of a run's config, which alone decide
    the held-out videos (the fine-tuning section's layout changes between versions and is not
    needed; the PDC cross-check in `set_evidence` shows the videos are the run's)."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: (b) needs the run's recorded config")
    recorded = json.loads(path.read_text(encoding="utf-8"))["config"]

    def build(cls: type, section: dict[str, Any]) -> Any:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: _tuples(v) for k, v in section.items() if k in names})

    return embedded_config.PipelineConfig(
        pretrain=build(embedded_config.PretrainConfig, recorded["pretrain"]),
        evaluate=build(embedded_config.EvalConfig, recorded["evaluate"]),
        num_workers=recorded.get("num_workers", 0),
    )


def _tuples(value: Any) -> Any:
    """JSON lists back into the (nested) tuples of the frozen config dataclasses."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


@torch.no_grad()
def set_evidence(run_dir: Path, tracks: dict[str, np.ndarray]) -> dict[str, Any]:
    """(b) for every held-out set: the run's backbone regenerates the heatmaps of the same
    videos (`embedded_config.eval_sources` is deterministic), one video at a time in float32 (the
    float16 of `pipeline.video_heatmaps` moves values across the PDC threshold, and so the
    decoded points by up to 0.3 px); the PDC decoded from them is checked against the run's
    raw PDC track."""
    config = held_out_config(run_dir)
    module = StableAlignmentModule.from_checkpoint(run_dir / "finetuned.ckpt").eval()
    threshold = float(module.hparams.pdc_threshold)
    out = {}
    for name, source in embedded_config.eval_sources(config).items():
        videos = source()
        statistics, decoded = [], []
        for frames, _ in rendered(videos, config.num_workers):
            maps = torch.cat(
                [module.backbone_heatmaps(c) for c in frames.split(config.evaluate.batch_size)]
            ).float()
            statistics.append(heatmap_statistics(maps, threshold))
            decoded.append(heatmap_to_crop(decode(maps, threshold=threshold), module.stride))
        raw, truth = tracks[f"{name}/{embedded_config.BASELINE}"], tracks[f"{name}/gt"]
        levels = [frame_degradation(v) for v in videos]
        result = evidence(
            raw - truth,
            truth,
            {k: np.stack([lv[k] for lv in levels]) for k in levels[0]},
            {k: np.stack([st[k] for st in statistics]) for k in statistics[0]},
        )
        result["pdc_max_abs_diff_px"] = float(np.abs(torch.stack(decoded).numpy() - raw).max())
        out[name] = result
    return out


# --------------------------------------------------------------------------- (c) bounds


def sweep(
    raw: np.ndarray, truth: np.ndarray, names: Sequence[str] = tuple(FILTER_GRIDS)
) -> list[dict[str, Any]]:
    """Metrics of every setting of the grids ``names`` (keys of `GRIDS`) on (V, T, L, 2) raw
    tracks."""
    grids = {name: GRIDS[name] for name in names}
    return filter_frontier.sweep(raw, lambda smoothed: track_metrics(smoothed, truth), grids)


def smooth(point: dict[str, Any], track: np.ndarray) -> np.ndarray:
    """One (T, L, 2) track under the setting ``point`` (filter name and parameters)."""
    grid = GRIDS[point["filter"]]
    return filter_frontier.smooth(grid, tuple(point[k] for k in grid.parameters), track)


def frontier(points: Sequence[dict[str, Any]], max_lag: float = MAX_LAG) -> list[dict[str, Any]]:
    """The NRMSE x error-jitter frontier of the settings with lag <= max_lag."""
    return filter_frontier.frontier(points, "nrmse", "error_jitter", max_lag)


def best_at_equal_nrmse(
    ours: dict[str, float], points: Sequence[dict[str, Any]]
) -> dict[str, Any] | None:
    """The lowest error-jitter among settings with NRMSE <= ours at lag <= max(ours, 1)."""
    fair = filter_frontier.fair_settings(ours, points, "nrmse", MAX_LAG)
    choice = min(fair, key=lambda p: p["error_jitter"], default=None)
    return None if choice is None else {"setting": setting_name(choice), **choice}


def position(ours: dict[str, float], points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Where ours sits against the sweep: the settings that dominate it (NRMSE and error-jitter
    no higher, lag <= max(ours, 1 frame)), and the lowest error-jitter among settings with NRMSE
    <= ours at that lag (the ratio ours / it is how far ours is from the frontier)."""
    dominating = filter_frontier.dominating(ours, points, "nrmse", "error_jitter", MAX_LAG)
    best = best_at_equal_nrmse(ours, points)
    return {
        "lag_limit": filter_frontier.lag_limit(ours["lag"], MAX_LAG),
        "dominated": bool(dominating),
        "dominating_settings": len(dominating),
        "best_at_equal_nrmse": best,
        "error_jitter_ratio_ours_vs_best": (
            None if best is None else ours["error_jitter"] / best["error_jitter"]
        ),
    }


def zero_phase(raw: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """The offline zero-phase Butterworth smoother of the raw track over its cutoff; ``best``
    is the cutoff with the lowest NRMSE."""
    curve = []
    for cutoff in ZERO_PHASE_CUTOFFS_HZ:
        smoothed = np.stack([zero_phase_smooth(video.astype(np.float64), cutoff) for video in raw])
        curve.append({"cutoff_hz": cutoff, **track_metrics(smoothed, truth)})
    return {"curve": curve, "best": min(curve, key=lambda p: p["nrmse"])}


# --------------------------------------------------------------------------- (d) split probe


class SplitFilter(LandmarkFilter):
    """A causal probe of the "shared face-level motion state" candidate, built from the
    classical filters: each frame's displacement from the previous raw frame is split into its
    projection onto the similarity motions of the previous raw shape (shared) and the rest
    (per landmark); the two running sums are smoothed by separate filters (``shared``,
    ``residual``) and added back to the first frame. No ground truth is used."""

    def __init__(self, shared: LandmarkFilter, residual: LandmarkFilter) -> None:
        self.shared, self.residual = shared, residual
        super().__init__()

    def _start(self, x: torch.Tensor) -> None:
        self._first, self._previous = x.clone(), x.clone()
        self._sums = [torch.zeros_like(x), torch.zeros_like(x)]
        for part, total in zip((self.shared, self.residual), self._sums):
            part.reset()
            part.step(total)

    def _update(self, x: torch.Tensor, dt: float, scale: float | None) -> torch.Tensor:
        step = x - self._previous
        rigid = torch.from_numpy(
            shared_part(step.numpy(), self._previous.numpy(), "similarity")
        ).to(x)
        self._previous = x.clone()
        self._sums = [self._sums[0] + rigid, self._sums[1] + step - rigid]
        smoothed = [
            part.step(total, scale=scale)
            for part, total in zip((self.shared, self.residual), self._sums)
        ]
        return self._first + smoothed[0] + smoothed[1]


def split_probe(
    raw: np.ndarray, truth: np.ndarray, points: list[dict[str, Any]], ours: dict[str, float]
) -> dict[str, Any]:
    """`SplitFilter` over its grid: its share of the joint frontier (lag <= 1 frame) with the
    classical filters, and the lowest error-jitter each family reaches at NRMSE <= ours and
    lag <= max(ours, 1 frame), as in `position`."""
    split = sweep(raw, truth, ("split",))
    joint = frontier(points + split)
    chosen = {
        "split": best_at_equal_nrmse(ours, split),
        "classical": best_at_equal_nrmse(ours, points),
    }
    per_video = {
        family: None if point is None else [
            track_metrics(smooth(point, video)[None], target[None])
            for video, target in zip(raw, truth)
        ]
        for family, point in chosen.items()
    }  # fmt: skip
    lower = None
    if None not in per_video.values():
        lower = sum(
            a["error_jitter"] < b["error_jitter"]
            for a, b in zip(per_video["split"], per_video["classical"])
        )
    return {
        "best_split": chosen["split"],
        "best_classical": chosen["classical"],
        "per_video": per_video,
        "videos_split_lower_error_jitter": lower,
        "joint_frontier_split_points": sum(p["filter"] == "split" for p in joint),
        "joint_frontier_points": len(joint),
        "points": split,
    }


def bounds(tracks: dict[str, np.ndarray], name: str) -> dict[str, Any]:
    truth, raw = tracks[f"{name}/gt"], tracks[f"{name}/{embedded_config.BASELINE}"]
    points = sweep(raw, truth)
    ours = track_metrics(tracks[f"{name}/{embedded_config.OURS}"], truth)
    # The truth plus the raw track's static per-landmark bias: what a perfect smoother that
    # removes every fluctuation but no bias would score.
    bias_only = truth + (raw - truth).mean(axis=1, keepdims=True)
    return {
        "raw": track_metrics(raw, truth),
        "bias_only": track_metrics(bias_only, truth),
        "ours": ours,
        "frontier": [{"setting": setting_name(p), **p} for p in frontier(points)],
        "ours_position": position(ours, points),
        "zero_phase": zero_phase(raw, truth),
        "split_probe": split_probe(raw, truth, points, ours),
        "sweep": points,
    }


# --------------------------------------------------------------------------- driver


def set_names(tracks: dict[str, np.ndarray]) -> list[str]:
    return [key.split("/")[0] for key in tracks if key.endswith("/gt")]


def analyse(run_dir: str | Path, heatmaps: bool = True) -> dict[str, Any]:
    run_dir = Path(run_dir)
    path = run_dir / "tracks.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `make finetune RUN_DIR={run_dir}` first")
    try:
        with np.load(path, allow_pickle=False) as data:
            tracks = {k: data[k].astype(np.float64) for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: cannot read the tracks archive ({error})") from error
    names = set_names(tracks)
    if not names:
        raise ValueError(f"{path}: no '<set>/gt' array; is this a `lightning-fa demo` run?")
    for name in names:
        for key in (
            f"{name}/gt",
            f"{name}/{embedded_config.BASELINE}",
            f"{name}/{embedded_config.OURS}",
        ):
            shape = tracks[f"{name}/gt"].shape
            if key not in tracks or tracks[key].shape != shape or len(shape) != 4:
                raise ValueError(
                    f"{path}: array {key!r} missing or not (V, T, L, 2) like {name}/gt {shape}"
                )
    result: dict[str, Any] = {"run_dir": str(run_dir), "sets": {}}
    for name in names:
        errors = tracks[f"{name}/{embedded_config.BASELINE}"] - tracks[f"{name}/gt"]
        result["sets"][name] = {
            "decomposition": decomposition(errors, tracks[f"{name}/gt"]),
            "bounds": bounds(tracks, name),
        }
    if heatmaps:
        for name, value in set_evidence(run_dir, tracks).items():
            result["sets"][name]["evidence"] = value
    return result


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(cells) + " |"


def tables(result: dict[str, Any]) -> str:
    """The markdown tables of docs/stabiliser-analysis.md."""
    sets = result["sets"]
    lines = ["### (a) Shared vs per-landmark error of the raw PDC track (% of energy)", ""]
    lines.append(_row(["set", "bias", "model", "error shared", "fluct. shared", "jitter shared",
                       "jitter residual", "i.i.d. share", "true motion shared"]))  # fmt: skip
    lines.append(_row(["---"] * 9))
    for name, s in sets.items():
        d = s["decomposition"]
        for model, m in d["models"].items():
            lines.append(_row([name, f"{100 * d['bias_share']:.0f}", model,
                               f"{100 * m['error_shared']:.0f}",
                               f"{100 * m['fluctuation_shared']:.0f}",
                               f"{100 * m['jitter_shared']:.0f}",
                               f"{100 * m['jitter_residual']:.0f}",
                               f"{100 * m['iid_share']:.1f}",
                               f"{100 * m['truth_motion_shared']:.0f}"]))  # fmt: skip
    evidence_sets = {name: s["evidence"] for name, s in sets.items() if "evidence" in s}
    if evidence_sets:
        lines += ["", "### (b1) Spearman, within video, of per-frame degradation with the "
                  "frame's mean |e|, |e - bias| and its shared (similarity) / residual parts",
                  ""]  # fmt: skip
        lines.append(_row(["set", "level", "mean level", "rho |e|", "rho |e - bias|",
                           "rho shared", "rho residual"]))  # fmt: skip
        lines.append(_row(["---"] * 7))
        for name, e in evidence_sets.items():
            for stat, v in e["per_frame"].items():
                lines.append(_row([name, stat, f"{v['level_mean']:.3f}"] + [
                    f"{v[f'spearman_{k}']['mean']:+.2f}" for k in
                    ("error", "deviation", "shared_deviation", "residual_deviation")]))  # fmt: skip
        lines += ["", "### (b2) Heatmap statistics vs |e - bias|: Spearman within each (video, "
                  "landmark) series, variance ratio top / bottom quartile (median), and the "
                  "landmark-mean statistic per frame vs the frame's mean |e - bias| and its "
                  "shared part", ""]  # fmt: skip
        lines.append(_row(["set", "statistic", "mean value", "rho per landmark", "var ratio",
                           "rho frame mean", "rho frame mean vs shared"]))  # fmt: skip
        lines.append(_row(["---"] * 7))
        for name, e in evidence_sets.items():
            for stat, v in e["per_landmark"].items():
                lines.append(_row([name, stat, f"{v['value_mean']:.3f}",
                                   f"{v['spearman_deviation']['mean']:+.2f}",
                                   f"{v['deviation_variance_top_vs_bottom_quartile']['median']:.2f}",
                                   f"{v['frame_mean_spearman_deviation']['mean']:+.2f}",
                                   f"{v['frame_mean_spearman_shared_deviation']['mean']:+.2f}"]))  # fmt: skip
    lines += [
        "",
        "### (c) Bounds on the raw PDC track (NRMSE %, error-jitter px^2, lag frames)",
        "",
    ]
    lines.append(_row(["set", "raw", "raw bias only", "ours",
                       "best filter at NRMSE <= ours (lag <= max(ours, 1))", "ours / best EJ",
                       "zero-phase best (cutoff)"]))  # fmt: skip
    lines.append(_row(["---"] * 7))

    def cell(m: dict[str, float]) -> str:
        return f"{m['nrmse']:.2f} / {m['error_jitter']:.4f} / {m['lag']:.2f}"

    for name, s in sets.items():
        b = s["bounds"]
        best = b["ours_position"]["best_at_equal_nrmse"]
        ratio = b["ours_position"]["error_jitter_ratio_ours_vs_best"]
        z = b["zero_phase"]["best"]
        lines.append(_row([name, cell(b["raw"]), f"{b['bias_only']['nrmse']:.2f}", cell(b["ours"]),
                           "none" if best is None else f"{best['setting']}: {cell(best)}",
                           "" if ratio is None else f"{ratio:.2f}",
                           f"{cell(z)} ({z['cutoff_hz']:g} Hz)"]))  # fmt: skip
    lines += ["", "### (d) Split probe: shared (similarity) and per-landmark parts filtered "
              "apart, vs the classical filters (NRMSE <= ours, lag <= max(ours, 1))", ""]  # fmt: skip
    lines.append(_row(["set", "best classical", "best split", "videos where split has lower EJ",
                       "split points on the joint frontier (lag <= 1)"]))  # fmt: skip
    lines.append(_row(["---"] * 5))
    for name, s in sets.items():
        probe = s["bounds"]["split_probe"]
        best = [probe[k] for k in ("best_classical", "best_split")]
        lines.append(_row([name] + [
            "none" if b is None else f"{b['setting']}: {cell(b)}" for b in best
        ] + [f"{probe['videos_split_lower_error_jitter']} / {len(probe['per_video']['split'] or [])}",
             f"{probe['joint_frontier_split_points']} / {probe['joint_frontier_points']}"]))  # fmt: skip
    lines += ["", "Frontier (lag <= 1 frame):", ""]
    for name, s in sets.items():
        points = ", ".join(
            f"{p['setting']} {p['nrmse']:.2f}/{p['error_jitter']:.4f}"
            for p in s["bounds"]["frontier"]
        )
        lines.append(f"- {name}: {points}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, help="JSON (default RUN/stabiliser_bounds.json)")
    parser.add_argument(
        "--no-heatmaps", action="store_true", help="skip (b) (no backbone pass over the videos)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        result = analyse(args.run_dir, heatmaps=not args.no_heatmaps)
    except (ValueError, FileNotFoundError) as error:
        print(f"stabiliser_bounds: {error}", file=sys.stderr)
        return 2
    out = args.out or args.run_dir / "stabiliser_bounds.json"
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(tables(result))
    print(f"\n[stabiliser_bounds] wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
