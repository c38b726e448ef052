"""`lightning-fa report RUN_DIR`: report.md, figures and an overlay video of an embedded run.

Reads ``metrics.json`` and ``tracks.npz`` written by `lightning-fa demo`; frames are re-rendered
from the recorded config (the synthetic data are deterministic), so nothing heavy is stored.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Ellipse

from lightning_fa.commands.embedded import config as embedded
from lightning_fa.metrics.tracks import NORM_INDICES
from lightning_fa.outputs import atomic_output, claim_outputs

COLUMNS = (
    ("nrmse", "NRMSE %", "{:.2f}"),
    ("mcv", "MCV %", "{:.3f}"),
    ("mav", "MAV px²", "{:.3f}"),
    ("error_jitter", "err-jitter px²", "{:.3f}"),
    ("accel", "Accel px", "{:.3f}"),
    ("lag", "lag fr", "{:.2f}"),
    ("latency_ms", "ms/frame", "{:.1f}"),
)
# Chi-square quantile (2 degrees of freedom) of a 95 % confidence ellipse.
CHI2_95 = 5.991
COMPARED = {  # the three tracks of the trajectory, robustness and video figures
    embedded.BASELINE: ("raw PDC", "tab:red"),
    f"{embedded.BASELINE}+one-euro-tuned": ("raw + One Euro", "tab:orange"),
    embedded.OURS: ("ours", "tab:green"),
}


def summary_table(metrics: dict[str, Any], eval_set: str, markdown: bool = False) -> str:
    """The metric table of one eval set, one row per method (plain text or markdown)."""
    rows = [
        [label, *(fmt.format(metrics["results"][eval_set][key][m]) for m, _, fmt in COLUMNS)]
        for key, label in metrics["methods"].items()
    ]
    header = ["method", *(title for _, title, _ in COLUMNS)]
    # Runs before the frontier was recorded have no verdict line.
    position = metrics.get("frontier", {}).get(eval_set)
    verdict = [f"ours against the swept filters: {position['verdict']}"] if position else []
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        table = [*lines, *("| " + " | ".join(r) + " |" for r in rows)]
        return "\n".join([*table, *(["", f"**{verdict[0]}**"] if verdict else [])])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt_row = "  ".join(f"{{:<{widths[0]}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))  # fmt: skip
    lines = [f"== {eval_set} ==", fmt_row.format(*header)]
    return "\n".join([*lines, *(fmt_row.format(*r) for r in rows), *verdict])


RUN_FILES = ("metrics.json", "tracks.npz")
TRAJECTORY_LANDMARKS = (8, 30, 36, 48)
NUMBER = "number"  # a JSON number (int or float, not true / false)


@contextlib.contextmanager
def _output(path: Path) -> Iterator[Path]:
    """`atomic_output(path)` whose write failures (a full disk) name `path`, not the temporary."""
    try:
        with atomic_output(path) as partial:
            yield partial
    except OSError as error:
        raise ValueError(f"cannot write {path}: {error.strerror or error}") from error


def _save(fig: plt.Figure, path: Path) -> str:
    fig.tight_layout()
    try:
        with _output(path) as partial:
            fig.savefig(partial, dpi=110)
    finally:
        plt.close(fig)
    return path.name


def confidence_ellipse(points: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """95 % ellipse of (T, 2) points: centre, width, height, angle (degrees)."""
    centre = points.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(points, rowvar=False))
    values = np.clip(values, 1e-12, None)
    width, height = 2.0 * np.sqrt(CHI2_95 * values[::-1])
    angle = float(np.degrees(np.arctan2(vectors[1, -1], vectors[0, -1])))
    return centre, float(width), float(height), angle


def figure_still(tracks: Any, config: embedded.PipelineConfig, out: Path) -> str:
    """Paper Figure 1: 95 % ellipses of each landmark over a still face, backbone vs ours."""
    frame = embedded.eval_sources(config)["still"]()[0].frame(0)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.8))
    for ax, key, title in zip(
        axes, (embedded.BASELINE, embedded.OURS), ("raw backbone (PDC)", "fine-tuned (ours)")
    ):
        track = tracks[f"still/{key}"][0]
        ax.imshow(frame)
        for k in range(track.shape[1]):
            centre, w, h, angle = confidence_ellipse(track[:, k].astype(np.float64))
            ax.add_patch(Ellipse(centre, w, h, angle=angle, fill=False, color="yellow", lw=0.8))
        ax.plot(*tracks["still/gt"][0, 0].T, "c.", ms=2)
        area = np.mean([np.prod(confidence_ellipse(track[:, k])[1:3]) for k in range(track.shape[1])])  # fmt: skip
        ax.set_title(f"{title}\nmean ellipse w*h {area:.2f} px²")
        ax.axis("off")
    fig.suptitle(f"Still face, {len(track)} frames, degraded camera: 95% ellipses")
    return _save(fig, out / "fig1_still_ellipses.png")


def figure_trajectories(tracks: Any, out: Path, landmarks=TRAJECTORY_LANDMARKS) -> str:
    """x / y of a few landmarks over time: ground truth vs raw, One Euro, ours."""
    fig, axes = plt.subplots(len(landmarks), 2, figsize=(11, 2.2 * len(landmarks)), sharex=True)
    truth = tracks["degraded/gt"][0]
    for row, k in enumerate(landmarks):
        for col, axis in enumerate("xy"):
            ax = axes[row, col]
            ax.plot(truth[:, k, col], "k-", lw=1.5, label="ground truth")
            for key, (label, colour) in COMPARED.items():
                ax.plot(tracks[f"degraded/{key}"][0][:, k, col], color=colour, lw=0.9, label=label)
            ax.set_ylabel(f"pt {k} {axis} (px)")
    axes[0, 0].legend(fontsize=7, ncol=2)
    for ax in axes[-1]:
        ax.set_xlabel("frame")
    fig.suptitle("Landmark trajectories, held-out degraded video 0")
    return _save(fig, out / "trajectories.png")


def per_frame_nme(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N,) normalised mean error of every frame (fraction of the inter-ocular distance)."""
    a, b = NORM_INDICES
    iod = np.linalg.norm(truth[..., a, :] - truth[..., b, :], axis=-1)
    return (np.linalg.norm(pred - truth, axis=-1).mean(axis=-1) / iod).ravel()


def figure_ced(tracks: Any, metrics: dict[str, Any], out: Path) -> str:
    sets = [s for s in ("degraded", "clean") if f"{s}/gt" in tracks]
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.5), squeeze=False)
    for ax, name in zip(axes[0], sets):
        truth = tracks[f"{name}/gt"]
        for key, label in metrics["methods"].items():
            errors = np.sort(per_frame_nme(tracks[f"{name}/{key}"], truth)) * 100.0
            style = "-" if key.startswith(embedded.OURS) else "--"
            ax.plot(errors, np.arange(1, len(errors) + 1) / len(errors), style, label=label)
        ax.set(xlabel="NME (% inter-ocular)", ylabel="fraction of frames", title=f"CED, {name}")
        ax.set_xlim(0, 15)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=6)
    return _save(fig, out / "ced.png")


def figure_tradeoff(metrics: dict[str, Any], out: Path) -> str:
    """Accuracy vs stability: each filter across its parameter range, our model as points."""
    results = metrics["results"]["degraded"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, stability in zip(axes, ("error_jitter", "mav")):
        for name, sweep in metrics["sweeps"]["degraded"].items():
            points = sweep["points"]
            x = [p[stability] for p in points]
            y = [p["nrmse"] for p in points]
            ax.plot(x, y, "o-", ms=3, label=f"{name} ({sweep['parameter']})")
            ax.annotate(str(points[0][sweep["parameter"]]), (x[0], y[0]), fontsize=6)
            ax.annotate(str(points[-1][sweep["parameter"]]), (x[-1], y[-1]), fontsize=6)
        for key, marker in ((embedded.BASELINE, "kX"), (embedded.OURS, "g*"),
                            (f"{embedded.OURS}+one-euro-tuned", "gP")):  # fmt: skip
            r = results[key]
            ax.plot(r[stability], r["nrmse"], marker, ms=11, label=metrics["methods"][key])
        ax.set_xscale("log")
        ax.set(xlabel=f"{stability} (px², log)", ylabel="NRMSE (%)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle("Accuracy / stability trade-off, held-out degraded videos (lower-left is better)")
    return _save(fig, out / "tradeoff.png")


def figure_robustness(metrics: dict[str, Any], out: Path) -> str:
    """Paper Figure 8: MCV against the noise level and the blur level."""
    probe = metrics["robustness"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, axis, xlabel in zip(
        axes, ("noise", "blur"), ("noise std (grey levels)", "blur exposure (x motion)")
    ):
        for key, (label, colour) in COMPARED.items():
            ax.plot(probe[axis]["levels"], probe[axis]["curves"][key]["mcv"], "o-", color=colour, label=label)  # fmt: skip
        ax.set(xlabel=xlabel, ylabel="MCV (%)", title=f"MCV vs {axis}")
        ax.grid(alpha=0.3)
    axes[0].legend()
    return _save(fig, out / "robustness.png")


def write_overlay_video(
    tracks: Any, config: embedded.PipelineConfig, out: Path, upscale: int = 3
) -> str:
    """raw | One Euro | ours side by side on held-out degraded video 0 (MJPG .avi)."""
    video = embedded.eval_sources(config)["degraded"]()[0]
    size = video.image_size * upscale
    path = out / "overlay.avi"
    fourcc = cv2.VideoWriter_fourcc(*"MJPG")
    with _output(path) as partial:
        writer = cv2.VideoWriter(str(partial), fourcc, 30.0, (3 * size, size))
        if not writer.isOpened():
            raise ValueError(f"cannot open a video writer for {path}")
        try:
            for t in range(len(video)):
                frame = cv2.resize(video.frame(t), (size, size), interpolation=cv2.INTER_NEAREST)
                panels = []
                for key, (label, _) in COMPARED.items():
                    panel = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
                    points = (tracks[f"degraded/{key}"][0, t] + 0.5) * upscale - 0.5
                    for x, y in points:
                        cv2.circle(panel, (round(x), round(y)), 2, (0, 255, 0), -1)
                    white = (255, 255, 255)
                    cv2.putText(panel, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, white)
                    panels.append(panel)
                writer.write(np.concatenate(panels, axis=1))
        finally:
            writer.release()
    return path.name


def _verdict_text(metrics: dict[str, Any]) -> str:
    a = metrics["acceptance"]
    lines = [
        f"- MAV cut by **{a['mav_reduction_pct']:.1f} %** and MCV by "
        f"**{a['mcv_reduction_pct']:.1f} %** vs the raw backbone (same PDC decoding); NRMSE "
        f"{a['nrmse_backbone']:.2f} % -> {a['nrmse_finetuned']:.2f} %. Target (>= 40 % cuts, "
        f"NRMSE no worse): **{'met' if a['passed'] else 'NOT met'}**. Lag added by the temporal stage: "
        f"{a['added_lag_frames']:+.2f} frames.",
    ]
    results = metrics["results"][a.get("eval_set", "degraded")]
    ours = results[embedded.OURS]
    for name, checks in a["versus_filters"].items():
        other = results[f"{embedded.BASELINE}+{name}"]
        lines.append(
            f"- vs {metrics['methods'][f'{embedded.BASELINE}+{name}']}: error-jitter "
            f"{ours['error_jitter']:.3f} vs {other['error_jitter']:.3f} px² "
            f"({'lower' if checks['lower_error_jitter'] else 'higher'}), NRMSE "
            f"{ours['nrmse']:.2f} vs {other['nrmse']:.2f} % "
            f"({'not worse' if checks['nrmse_not_worse'] else 'worse'}), lag "
            f"{ours['lag']:.2f} vs {other['lag']:.2f} frames."
        )
    return "\n".join(lines)


def _dotted(keys: Sequence[str | int]) -> str:
    """metrics.json keys as written in messages: results.degraded.raw-pdc, points[0]."""
    text = ""
    for key in keys:
        text += f"[{key}]" if isinstance(key, int) else f".{key}" if text else key
    return text


def _field(data: Any, keys: Sequence[str | int], kind: Any, file: Path) -> Any:
    """`data[k0][k1]...` (str keys into objects, int keys into lists); refused with `file` and
    the keys named when it is missing or not of `kind` (dict, list, str, bool or NUMBER)."""
    value = data
    for depth, key in enumerate(keys):
        inside = isinstance(value, list) if isinstance(key, int) else isinstance(value, dict)
        if not inside or (key not in value if isinstance(value, dict) else key >= len(value)):
            raise ValueError(
                f"{file} lacks `{_dotted(keys[: depth + 1])}`: not a complete "
                "`lightning-fa demo` metrics file"
            )
        value = value[key]
    if kind is NUMBER:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        names = {dict: "an object", list: "a list", str: "a string", bool: "true or false"}
        raise ValueError(
            f"{file}: `{_dotted(keys)}` should be {names.get(kind, 'a number')}, "
            f"got {json.dumps(value)[:40]}"
        )
    return value


def _numbers(data: Any, keys: list[str | int], file: Path) -> list[float]:
    values = _field(data, keys, list, file)
    for i in range(len(values)):
        _field(data, [*keys, i], NUMBER, file)
    return values


def _check_metrics(metrics: Any, file: Path) -> None:
    """Everything the report reads from metrics.json is there and of the right type, so a
    truncated or foreign file is refused in one line before any figure is drawn."""
    if not isinstance(metrics, dict):
        raise ValueError(f"{file} holds a JSON {type(metrics).__name__}, not a demo run's metrics")
    _field(metrics, ["config"], dict, file)
    methods = _field(metrics, ["methods"], dict, file)
    filters = _field(metrics, ["acceptance", "versus_filters"], dict, file)
    needed = [*COMPARED, f"{embedded.OURS}+one-euro-tuned"]
    needed += [f"{embedded.BASELINE}+{name}" for name in filters]
    for key in [*methods, *needed]:
        _field(metrics, ["methods", key], str, file)
    results = _field(metrics, ["results"], dict, file)
    eval_set = "degraded"  # the verdict's set; runs before it was recorded used this one
    if "eval_set" in metrics["acceptance"]:
        eval_set = _field(metrics, ["acceptance", "eval_set"], str, file)
    for name in [*results, "degraded", eval_set]:
        for key in methods:
            for column, _, _ in COLUMNS:
                _field(metrics, ["results", name, key, column], NUMBER, file)
    for key in ("mav_reduction_pct", "mcv_reduction_pct", "nrmse_backbone", "nrmse_finetuned"):
        _field(metrics, ["acceptance", key], NUMBER, file)
    _field(metrics, ["acceptance", "added_lag_frames"], NUMBER, file)
    _field(metrics, ["acceptance", "passed"], bool, file)
    for name in filters:
        for check in ("lower_error_jitter", "nrmse_not_worse"):
            _field(metrics, ["acceptance", "versus_filters", name, check], bool, file)
    for name in _field(metrics, ["sweeps", "degraded"], dict, file):
        sweep = ["sweeps", "degraded", name]
        parameter = _field(metrics, [*sweep, "parameter"], str, file)
        _field(metrics, [*sweep, "points", 0], dict, file)  # at least one point
        for i in range(len(metrics["sweeps"]["degraded"][name]["points"])):
            for column in ("error_jitter", "mav", "nrmse"):
                _field(metrics, [*sweep, "points", i, column], NUMBER, file)
            _field(metrics, [*sweep, "points", i, parameter], object, file)
    for axis in ("noise", "blur"):
        levels = _numbers(metrics, ["robustness", axis, "levels"], file)
        for key in COMPARED:
            curve = _numbers(metrics, ["robustness", axis, "curves", key, "mcv"], file)
            if len(curve) != len(levels):
                raise ValueError(
                    f"{file}: `robustness.{axis}.curves.{key}.mcv` has {len(curve)} values "
                    f"for {len(levels)} levels"
                )
    for key in ("pretrain_s", "finetune_s", "evaluate_s", "total_s"):
        _field(metrics, ["timing", key], NUMBER, file)
    _field(metrics, ["backbone_cache", "path"], str, file)
    _field(metrics, ["backbone_cache", "reused"], bool, file)
    _field(metrics, ["torch_threads"], NUMBER, file)
    if "ground_truth_motion" in metrics:  # optional: older runs did not record it
        for name in _field(metrics, ["ground_truth_motion"], dict, file):
            for key in ("mcv", "mav", "accel"):
                _field(metrics, ["ground_truth_motion", name, key], NUMBER, file)


def load_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error.reason}); rerun the demo") from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error.msg}, line {error.lineno}): truncated or "
            f"overwritten; rerun `lightning-fa demo --out {run_dir}`"
        ) from None
    _check_metrics(metrics, path)
    return metrics


def load_tracks(run_dir: Path, metrics: dict[str, Any], config: Any) -> dict[str, np.ndarray]:
    """The arrays of tracks.npz, refused in one line naming the file when the archive is
    truncated or lacks an array (or its shape) that the figures and the video read."""
    path = run_dir / "tracks.npz"
    rerun = f"rerun `lightning-fa demo --out {run_dir}`"
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a NumPy .npz archive (truncated or overwritten); {rerun}")
    try:
        with np.load(path, allow_pickle=False) as data:
            tracks = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(f"{path} cannot be read ({error}); {rerun}") from error
    frames = {"degraded": config.evaluate.frames, "still": config.evaluate.still_frames}
    sets = {"still": [embedded.BASELINE, embedded.OURS], "degraded": list(metrics["methods"])}
    if "clean/gt" in tracks:
        sets["clean"] = list(metrics["methods"])
    landmarks = max(*TRAJECTORY_LANDMARKS, *NORM_INDICES) + 1
    for name, keys in sets.items():
        for key in ["gt", *keys]:
            array = tracks.get(f"{name}/{key}")
            if array is None:
                raise ValueError(f"{path} lacks the array `{name}/{key}`; {rerun}")
            truth = tracks[f"{name}/gt"]
            fits = (
                np.issubdtype(array.dtype, np.number)
                and array.ndim == 4
                and array.shape[-1] == 2
                and array.shape[2] >= landmarks
                and array.shape[1] == frames.get(name, array.shape[1])
                and array.shape == truth.shape
            )
            if not fits:
                raise ValueError(
                    f"{path}: `{name}/{key}` is {array.dtype} {array.shape}; the figures need "
                    f"numbers (videos, {frames.get(name, 'frames')}, >= {landmarks} landmarks, 2) "
                    f"shaped as `{name}/gt` {truth.shape}"
                )
    return tracks


def _check_run_folder(run_dir: Path) -> None:
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if not missing:
        return
    what = "not found" if not run_dir.is_dir() else "is not a `lightning-fa demo` run folder"
    raise FileNotFoundError(
        f"run folder {run_dir} {what}: the report needs its {' and '.join(RUN_FILES)} "
        f"(missing: {', '.join(missing)}); write them with `lightning-fa demo --out {run_dir}`"
    )


def _recorded_config(run_dir: Path) -> embedded.PipelineConfig:
    try:
        return embedded.load_config(run_dir)
    except (TypeError, KeyError) as error:  # a key this version does not know, or lacks
        raise ValueError(
            f"{run_dir / 'metrics.json'}: `config` is not a PipelineConfig this version can "
            f"rebuild ({error})"
        ) from error


def write_report(run_dir: str | Path, video: bool = True) -> Path:
    """Write ``report.md`` and the figures into ``run_dir``; returns the report path.

    Every input is checked before anything is drawn; each output replaces its earlier version
    only once complete, and `report.md` is locked, so two reports of one run never interleave.
    """
    run_dir = Path(run_dir)
    _check_run_folder(run_dir)
    metrics = load_metrics(run_dir)
    config = _recorded_config(run_dir)
    tracks = load_tracks(run_dir, metrics, config)
    path = run_dir / "report.md"
    with claim_outputs([(path, "report")]):
        figures = {
            "Still face (paper Figure 1)": figure_still(tracks, config, run_dir),
            "Trajectories": figure_trajectories(tracks, run_dir),
            "CED": figure_ced(tracks, metrics, run_dir),
            "Accuracy / stability trade-off": figure_tradeoff(metrics, run_dir),
            "Robustness to noise and blur (paper Figure 8)": figure_robustness(metrics, run_dir),
        }
        overlay = write_overlay_video(tracks, config, run_dir) if video else None
        t = metrics["timing"]
        cache = metrics["backbone_cache"]
        parts = [
            "# Embedded default run: synthetic faces, hrnet_lite + fine-tuned temporal stage",
            "",
            f"Backbone `{cache['path']}` ({'reused from the cache' if cache['reused'] else 'pretrained in this run'}); "
            f"times: pretrain {t['pretrain_s']:.0f} s, fine-tune {t['finetune_s']:.0f} s, evaluation "
            f"{t['evaluate_s']:.0f} s, total {t['total_s']:.0f} s ({metrics['torch_threads']} torch "
            "threads).",
            "",
            f"## Verdict (held-out set `{metrics['acceptance'].get('eval_set', 'degraded')}`)",
            "",
            _verdict_text(metrics),
            "",
            "Units: NRMSE % of the inter-ocular distance; MCV %; MAV and error-jitter px² (Allan "
            "variance of the prediction / of its error); Accel px/frame²; lag = delay in frames that "
            "best aligns the track with the ground truth; ms/frame = batch-1 streaming cost "
            "(backbone + decoding + stabiliser) on this machine.",
        ]
        for name in metrics["results"]:
            parts += ["", f"## {name}", "", summary_table(metrics, name, markdown=True)]
            truth = metrics.get("ground_truth_motion", {}).get(name)
            if truth:
                parts += [
                    "",
                    f"Ground truth itself (the floor a perfect tracker reaches): MCV "
                    f"{truth['mcv']:.3f} %, MAV {truth['mav']:.3f} px², Accel {truth['accel']:.3f} px.",
                ]
        parts += ["", "## Figures", ""]
        parts += [f"### {title}\n\n![{title}]({name})\n" for title, name in figures.items()]
        if overlay:
            parts.append(f"Overlay video (raw | One Euro | ours): `{overlay}` (not committed).")
        with _output(path) as partial:
            partial.write_text("\n".join(parts) + "\n", encoding="utf-8")
        print(f"[report] wrote {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lightning-fa report", description=__doc__)
    parser.add_argument("run_dir", help="directory of a `lightning-fa demo` run")
    parser.add_argument("--no-video", action="store_true", help="skip the overlay video")
    args = parser.parse_args(argv)
    write_report(args.run_dir, video=not args.no_video)
    return 0
