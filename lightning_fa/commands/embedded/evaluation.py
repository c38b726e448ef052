"""The embedded benchmark's evaluation: every method's tracks on the held-out sets (the raw
backbone's decoders, the classical filters on the raw PDC track, the fine-tuned model), the
filters' parameter sweeps, the robustness curves, per-frame latency and the acceptance verdict."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from data_modules.embedded import render, rendered
from data_modules.synthetic import SyntheticVideo
from data_modules.transforms import Degradation
from lightning_fa.commands.embedded.config import (
    BASELINE,
    METHODS,
    OURS,
    EvalConfig,
    PipelineConfig,
    eval_videos,
)
from lightning_fa.metrics import frontier
from lightning_fa.metrics.tracks import box_size, interocular, track_metrics
from lightning_fa.systems.finetune import StableAlignmentModule
from lightning_fa.temporal import apply_filter, make_filter


def filter_factories() -> dict[str, tuple[Callable[[], Any], Callable[[np.ndarray], Any]]]:
    """Filter name -> (factory, scale of a (T, L, 2) track): the scale is what the filter's
    speed is measured in, computed causally from the track it smooths."""
    return {
        "one-euro-mediapipe": (lambda: make_filter("one-euro-mediapipe"), box_size),
        "one-euro-tuned": (lambda: make_filter("one-euro"), interocular),
        "kalman": (lambda: make_filter("kalman"), lambda track: None),
        "savgol": (lambda: make_filter("savgol"), lambda track: None),
        "moving-average": (lambda: make_filter("moving-average"), lambda track: None),
    }


def run_filter(factory: Callable[[], Any], scale_of: Callable, track: np.ndarray) -> np.ndarray:
    return apply_filter(factory(), track.astype(np.float64), scale=scale_of(track)).astype(
        np.float32
    )


# Parameter sweeps of the accuracy / stability trade-off figure: name -> (parameter, values,
# factory(value), scale).
SWEEPS: dict[str, tuple[str, tuple[float, ...], Callable[[float], Any], Callable]] = {
    "one-euro": (
        "min_cutoff",
        (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0),
        lambda v: make_filter("one-euro", min_cutoff=v),
        interocular,
    ),
    "moving-average": (
        "window",
        (1, 2, 3, 5, 7, 9, 13),
        lambda v: make_filter("moving-average", window=int(v)),
        lambda track: None,
    ),
    "kalman": (
        "process_noise",
        (5.0, 10.0, 30.0, 100.0, 300.0, 1000.0),
        lambda v: make_filter("kalman", process_noise=v),
        lambda track: None,
    ),
    "savgol": (
        "window",
        (5, 7, 9, 13, 17, 25),
        lambda v: make_filter("savgol", window=int(v)),
        lambda track: None,
    ),
}


@torch.no_grad()
def predict(
    module: StableAlignmentModule, frames: torch.Tensor, batch_size: int
) -> dict[str, np.ndarray]:
    """Tracks (T, L, 2) of the raw decoders and the fine-tuned model for one whole video."""
    device = module.device
    raw = torch.cat(
        [module.backbone_heatmaps(chunk.to(device)) for chunk in frames.split(batch_size)]
    )
    stabilised = module.temporal.forward_sequence(raw[None])[0][0]
    tracks = {
        f"raw-{method}": replace(module.codec, decoder=method).decode(raw)
        for method in ("argmax", "argmax_quarter", "pdc")
    }
    tracks[OURS] = module.decode(stabilised)
    return {k: v.float().cpu().numpy() for k, v in tracks.items()}


def with_filters(tracks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add the classical filters on the raw PDC track and One Euro on ours."""
    factories = filter_factories()
    out = dict(tracks)
    for name, (factory, scale_of) in factories.items():
        out[f"{BASELINE}+{name}"] = run_filter(factory, scale_of, tracks[BASELINE])
    factory, scale_of = factories["one-euro-tuned"]
    out[f"{OURS}+one-euro-tuned"] = run_filter(factory, scale_of, tracks[OURS])
    return {key: out[key] for key in METHODS}


def evaluate_set(
    module: StableAlignmentModule, videos: list[SyntheticVideo], config: PipelineConfig, name: str
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Stacked tracks {method: (V, T, L, 2)} and ground truth (V, T, L, 2) of one eval set."""
    per_video, truths = [], []
    loader = rendered(videos, config.num_workers)
    for frames, landmarks in tqdm(loader, desc=f"eval {name}", unit="video"):
        per_video.append(with_filters(predict(module, frames, config.evaluate.batch_size)))
        truths.append(landmarks)
    tracks = {key: np.stack([v[key] for v in per_video]) for key in METHODS}
    return tracks, np.stack(truths)


def sweep_filters(raw: np.ndarray, truth: np.ndarray) -> dict[str, dict[str, Any]]:
    """Accuracy and stability of each filter across its parameter range (raw PDC tracks)."""
    results = {}
    for name, (parameter, values, factory, scale_of) in tqdm(SWEEPS.items(), desc="sweeps"):
        points = []
        for value in values:
            smoothed = np.stack(
                [run_filter(lambda f=factory, v=value: f(v), scale_of, video) for video in raw]
            )
            points.append({parameter: value, **track_metrics(smoothed, truth)})
        results[name] = {"parameter": parameter, "points": points}
    return results


def frontier_position(ours: np.ndarray, raw: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Ours against every classical filter setting (`metrics.frontier.FILTER_GRIDS`) on the same
    raw PDC track: NRMSE x error-jitter at lag <= max(ours, 1 frame). The verdict line, the
    frontier of the settings with lag <= 1 frame, and the lowest error-jitter at NRMSE <= ours."""
    points = frontier.sweep(raw, lambda smoothed: track_metrics(smoothed, truth))
    mine = track_metrics(ours, truth)
    fair = frontier.fair_settings(mine, points, "nrmse")
    best = min(fair, key=lambda p: p["error_jitter"], default=None)
    return {
        "verdict": frontier.verdict(mine, points, "nrmse", "error_jitter"),
        "dominated": bool(frontier.dominating(mine, points, "nrmse", "error_jitter")),
        "frontier": [
            {"setting": frontier.setting_name(p), **p}
            for p in frontier.frontier(points, "nrmse", "error_jitter")
        ],
        "best_at_equal_nrmse": None
        if best is None
        else {"setting": frontier.setting_name(best), **best},
        "settings": len(points),
    }


def robustness(module: StableAlignmentModule, config: PipelineConfig) -> dict[str, Any]:
    """MCV / NRMSE against the noise level and the motion-blur exposure (paper Figure 8)."""
    e = config.evaluate
    probe = replace(e, videos=e.robustness_videos, frames=e.robustness_frames)
    keys = (BASELINE, f"{BASELINE}+one-euro-tuned", OURS)
    results: dict[str, Any] = {}
    for axis, levels, make in (
        ("noise", e.noise_levels, lambda v: Degradation(noise_sigma=v)),
        ("blur", e.blur_levels, lambda v: Degradation(blur_exposure=v)),
    ):
        curves: dict[str, dict[str, list[float]]] = {k: {"mcv": [], "nrmse": []} for k in keys}
        for level in tqdm(levels, desc=f"robustness {axis}"):
            # The same faces and motions at every level (same seed): only the camera changes.
            ds = eval_videos(probe, config.pretrain.image_size, make(level), 3)
            tracks, truth = evaluate_set(
                module, [ds.video(i) for i in range(len(ds))], config, f"{axis}={level}"
            )
            for key in keys:
                m = track_metrics(tracks[key], truth)
                curves[key]["mcv"].append(m["mcv"])
                curves[key]["nrmse"].append(m["nrmse"])
        results[axis] = {"levels": list(levels), "curves": curves}
    return results


def _time_per_frame(step: Callable[[int], Any], frames: int) -> float:
    step(0)  # warm-up (allocations, lazy init)
    start = time.perf_counter()
    for t in range(frames):
        step(t)
    return 1000.0 * (time.perf_counter() - start) / frames


@torch.no_grad()
def latency(module: StableAlignmentModule, config: PipelineConfig) -> dict[str, float]:
    """Streaming cost per frame (ms, batch 1): backbone + decoding + stabiliser, per method."""
    e = config.evaluate
    frames, _ = render(eval_videos(e, config.pretrain.image_size, "clean", 0).video(0))
    frames = frames[: e.latency_frames].to(module.device)
    n = len(frames)
    raw = module.backbone_heatmaps(frames)
    backbone_ms = _time_per_frame(lambda t: module.backbone_heatmaps(frames[t : t + 1]), n)
    decode_ms = {
        method: _time_per_frame(
            lambda t, m=method: replace(module.codec, decoder=m).locate(raw[t : t + 1]), n
        )
        for method in ("argmax", "argmax_quarter", "pdc")
    }
    state: list[Any] = [None]

    def convlstm_step(t: int) -> None:
        _, state[0] = module.temporal(raw[t : t + 1], state[0] if t else None)

    convlstm_ms = _time_per_frame(convlstm_step, n)
    track = replace(module.codec, decoder="pdc").decode(raw).cpu().numpy()
    filter_ms = {}
    for name, (factory, scale_of) in filter_factories().items():
        start = time.perf_counter()
        run_filter(factory, scale_of, track)
        filter_ms[name] = 1000.0 * (time.perf_counter() - start) / n
    out = {f"raw-{m}": backbone_ms + ms for m, ms in decode_ms.items()}
    for name, ms in filter_ms.items():
        out[f"{BASELINE}+{name}"] = out[BASELINE] + ms
    out[OURS] = out[BASELINE] + convlstm_ms
    out[f"{OURS}+one-euro-tuned"] = out[OURS] + filter_ms["one-euro-tuned"]
    return out


def acceptance(
    results: dict[str, dict[str, dict[str, float]]], eval_set: str = EvalConfig.acceptance_set
) -> dict[str, Any]:
    """The embedded default's acceptance test on one held-out set (by default the degraded,
    nearly still talking heads: the paper's setting)."""
    if eval_set not in results:
        raise ValueError(f"acceptance set {eval_set!r} not among the results {sorted(results)}")
    base, ours = results[eval_set][BASELINE], results[eval_set][OURS]
    cut = {m: 100.0 * (1.0 - ours[m] / base[m]) for m in ("mav", "mcv")}
    verdict = {
        "eval_set": eval_set,
        "mav_reduction_pct": cut["mav"],
        "mcv_reduction_pct": cut["mcv"],
        "nrmse_backbone": base["nrmse"],
        "nrmse_finetuned": ours["nrmse"],
        # Positive: frames of delay the temporal stage adds to the raw backbone (motion only).
        "added_lag_frames": ours["lag"] - base["lag"],
        "passed": cut["mav"] >= 40.0 and cut["mcv"] >= 40.0 and ours["nrmse"] <= base["nrmse"],
    }
    versus = {}
    for name in ("one-euro-mediapipe", "one-euro-tuned", "kalman"):
        other = results[eval_set][f"{BASELINE}+{name}"]
        versus[name] = {
            "lower_error_jitter": ours["error_jitter"] < other["error_jitter"],
            "nrmse_not_worse": ours["nrmse"] <= other["nrmse"],
            "lag_not_larger": ours["lag"] <= other["lag"],
        }
    verdict["versus_filters"] = versus
    return verdict
