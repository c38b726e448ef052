"""The unlabelled-video acceptance experiment: `lightning-fa unlabelled-experiment --out DIR`.

For every rotation (each clip held out once): fine-tune the temporal stage on the other clips
with `lightning-fa fit` and the committed configs, those the shipped stage is trained with
(experiments/base.yaml, unlabelled.yaml and unlabelled-face-motion.yaml: the face-level motion
stage, on the dlib backbone's own offline-smoothed track as pseudo labels), then `lightning-fa evaluate-video
HELD_OUT --checkpoint CKPT`. Writes `DIR/<clip>/fit` (logs, checkpoints), `DIR/<clip>/eval`
(metrics.json, report.md) and `DIR/summary.md`: one table per held-out clip and the goals
(Accel cut >= 50% vs raw; deviation from the offline track below raw's and both One Euro
presets'; lag <= 1 frame).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from lightning_fa.commands.sweep import check_configs, split_configs
from lightning_fa.outputs import claim_outputs, write_text_atomic
from lightning_fa.tracking.shipped import CLIP_NAMES, UNLABELLED_CONFIGS, VIDEO_DIR

SHOWN = ("raw", "one-euro", "one-euro-mediapipe", "kalman", "ours", "offline")


def goals(methods: dict[str, dict[str, float]]) -> dict[str, bool]:
    """The acceptance goals for one held-out clip's metrics (evaluate-video's `methods`)."""
    ours, raw = methods["ours"], methods["raw"]
    return {
        "accel_cut_50": ours["accel"] <= 0.5 * raw["accel"],
        "deviation_below_raw_and_one_euro": ours["deviation"]
        < min(methods[m]["deviation"] for m in ("raw", "one-euro", "one-euro-mediapipe")),
        "lag_le_1": abs(ours["lag"]) <= 1,
    }


def summary_markdown(results: dict[str, dict[str, Any]]) -> str:
    lines = ["# Unlabelled-video experiment (dlib backbone, one clip held out per rotation)", ""]
    for clip, result in results.items():
        methods = result["methods"]
        lines += [
            f"## held out: {clip} ({result['frames']} frames; trained on "
            f"{', '.join(result['trained_on'])})",
            "",
            "| method | MCV (%) | MAV (px^2) | Accel (px) | deviation (px) | lag (frames) |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {m['mcv']:.3f} | {m['mav']:.3f} | {m['accel']:.3f} | "
            f"{m['deviation']:.3f} | {m['lag']:g} |"
            for name, m in ((n, methods[n]) for n in SHOWN)
        ]
        cut = 1 - methods["ours"]["accel"] / methods["raw"]["accel"]
        met = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in result["goals"].items())
        lines += ["", f"Accel cut vs raw: {100 * cut:.0f}%. Goals: {met}.", ""]
    return "\n".join(lines)


def run_rotation(
    held_out: Path, train: list[Path], out: Path, overrides: list[str]
) -> dict[str, Any]:
    """Fit on `train`, evaluate on `held_out`; returns evaluate-video's result for the clip."""
    from lightning_fa.commands import evaluate_video

    fit_dir = out / held_out.stem / "fit"
    shutil.rmtree(fit_dir / "checkpoints", ignore_errors=True)  # last.ckpt must be this run's
    command = [
        sys.executable, "-m", "lightning_fa", "fit",
        *(arg for config in UNLABELLED_CONFIGS for arg in ("--config", config)),
        f"--run_name=unlabelled-{held_out.stem}",
        f"--trainer.default_root_dir={fit_dir}",
        f"--data.init_args.videos=[{', '.join(str(p) for p in train)}]",
        f"--data.init_args.val_videos=[{held_out}]",
        *overrides,
    ]  # fmt: skip
    print(" ".join(command), flush=True)
    status = subprocess.run(command).returncode
    if status:
        # Almost always the arguments passed on to fit; fit has printed why just above.
        raise ValueError(f"lightning-fa fit holding out {held_out} exited with status {status}")
    checkpoint = fit_dir / "checkpoints" / "last.ckpt"
    eval_dir = out / held_out.stem / "eval"
    if evaluate_video.main(
        [str(held_out), "--checkpoint", str(checkpoint), "--out", str(eval_dir)]
    ):
        raise RuntimeError(f"evaluate-video failed on {held_out}")
    result = json.loads((eval_dir / "metrics.json").read_text())["videos"][held_out.name]
    result["trained_on"] = [p.name for p in train]
    result["goals"] = goals(result["methods"])
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-fa unlabelled-experiment", description=__doc__)
    parser.add_argument(
        "--videos", type=Path, nargs="+", default=[VIDEO_DIR / c for c in CLIP_NAMES]
    )
    parser.add_argument("--out", type=Path, default=Path("runs/unlabelled-experiment"))
    parser.add_argument(
        "--held-out", nargs="*", default=None, help="clip names to hold out (default: each)"
    )
    # Anything else is passed on to `lightning-fa fit`, e.g. --model.init_args.lr=3e-3.
    args, fit_overrides = parser.parse_known_args(argv)
    videos = list(args.videos)
    missing = [str(v) for v in videos if not v.is_file()]
    if missing:
        raise FileNotFoundError(f"--videos: no such file: {', '.join(missing)}")
    if len(videos) < 2:
        raise ValueError(
            f"--videos: need at least 2 clips (one is held out, the others train), got {videos}"
        )
    names = [v.name for v in videos]
    if len(set(names)) < len(names):
        raise ValueError(f"--videos: clip names must differ (results are keyed by name): {names}")
    held_names = args.held_out or names
    unknown_names = sorted(set(held_names) - set(names))
    if unknown_names:
        raise ValueError(f"--held-out {unknown_names} not among the --videos {names}")
    check_configs(UNLABELLED_CONFIGS, "run from the repository root")
    check_configs(split_configs(fit_overrides)[0], "--config")
    outputs = [args.out / "summary.md", args.out / "summary.json"]
    results = {}
    with claim_outputs((path, "--out") for path in outputs):
        for held_out in (v for v in videos if v.name in held_names):
            train = [v for v in videos if v != held_out]
            results[held_out.name] = run_rotation(held_out, train, args.out, fit_overrides)
            # Rewritten after every rotation, so a later failure keeps the finished ones.
            summary = summary_markdown(results)
            write_text_atomic(outputs[0], summary)
            write_text_atomic(outputs[1], json.dumps(results, indent=2))
    print(summary)
    return 0
