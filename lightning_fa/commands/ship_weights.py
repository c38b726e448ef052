"""Regenerate the trained stabiliser that ships with the package (`make ship-weights`):
`lightning-fa fit` of the committed unlabelled config on the three public clips (~15 epochs, a
few CPU minutes on an idle machine), then its temporal stage extracted into a stage file
(`lightning_fa.tracking.shipped`).

    python -m lightning_fa.commands.ship_weights --out lightning_fa/resources/dlib-stage.pt
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from lightning_fa.outputs import file_sha256
from lightning_fa.tracking.shipped import (
    CLIP_NAMES,
    SHIPPED_DLIB_STAGE,
    UNLABELLED_CONFIGS,
    VIDEO_DIR,
    write_stage_file,
)


def fit_command(videos: list[Path], run_dir: Path, overrides: list[str]) -> list[str]:
    """`lightning-fa fit` with the committed unlabelled config on every clip (no validation)."""
    return [
        sys.executable, "-m", "lightning_fa", "fit",
        *(arg for config in UNLABELLED_CONFIGS for arg in ("--config", config)),
        "--run_name=ship-weights",
        f"--trainer.default_root_dir={run_dir}",
        f"--data.init_args.videos=[{', '.join(str(v) for v in videos)}]",
        "--data.init_args.val_videos=null",
        *overrides,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_fa.commands.ship_weights", description=__doc__
    )
    parser.add_argument("--out", type=Path, default=SHIPPED_DLIB_STAGE)
    parser.add_argument(
        "--videos", type=Path, nargs="+", default=[VIDEO_DIR / c for c in CLIP_NAMES]
    )
    parser.add_argument("--run-dir", type=Path, default=Path("runs/ship-weights"))
    parser.add_argument(
        "--no-fit", action="store_true",
        help="extract the stage of the fit already in --run-dir (run with the same arguments)",
    )  # fmt: skip
    # Anything else goes to `lightning-fa fit` (e.g. --seed_everything=1).
    args, overrides = parser.parse_known_args(argv)
    missing = [str(v) for v in args.videos if not v.is_file()]
    if missing:
        raise FileNotFoundError(f"--videos: no such file: {', '.join(missing)}")
    command = fit_command(args.videos, args.run_dir, overrides)
    if not args.no_fit:
        shutil.rmtree(args.run_dir, ignore_errors=True)  # its config and checkpoint: this run's
        print(" ".join(command), flush=True)
        status = subprocess.run(command).returncode
        if status:
            raise ValueError(f"lightning-fa fit exited with status {status} (its message is above)")
    configs = sorted(args.run_dir.glob("csv/version_*/config.yaml"))
    if len(configs) != 1:
        raise ValueError(
            f"{args.run_dir}: expected the config.yaml of one fit, found {len(configs)}"
        )
    config = configs[0]
    training = {
        "config_sha256": file_sha256(config),
        "command": " ".join(["lightning-fa", *command[3:]]),
        "videos": {v.name: file_sha256(v) for v in args.videos},
    }
    contents = write_stage_file(args.run_dir / "checkpoints" / "last.ckpt", args.out, training)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes; {contents['temporal_stage']})")
    return 0


if __name__ == "__main__":
    from lightning_fa.errors import run_command

    sys.exit(run_command("lightning_fa.commands.ship_weights", main, sys.argv[1:]))
