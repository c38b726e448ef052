"""Old (hand-written numpy / OpenCV) vs albumentations photometric augmentation, per 256x256 crop.

A one-off measurement for docs/benchmarks.md, not part of `make bench`: the old implementation is
read from git (``--old-rev``, the last commit before albumentations) into a throw-away module.
Each case is timed in interleaved rounds (old, new, old, new, ...) so that load from other jobs on
the machine hits both alike; the figures are medians of per-call times.

    .venv/bin/python scripts/bench_photometric.py [--old-rev 7d068cb] [--rounds 400]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_modules import transforms as new  # noqa: E402


def old_module(rev: str) -> types.ModuleType:
    source = subprocess.run(
        ["git", "show", f"{rev}:data_modules/transforms.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType("old_transforms")
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(source, f"{rev}:data_modules/transforms.py", "exec"), module.__dict__)
    return module


def crop() -> np.ndarray:
    # A smooth random RGB image stands in for a face crop (content does not change these costs).
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (9, 9), 0)


def median_ms(calls: dict[str, object], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-rev", default="7d068cb")
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args()
    old = old_module(args.old_rev)
    image = crop()
    cases = {
        "colour jitter": {"colour": (1.15, 0.85, 1.2)},
        "gaussian noise (sigma 8)": {"noise_sigma": 8.0},
        "motion blur (7 px)": {"motion_blur_length": 7},
        "gaussian blur (5x5)": {"blur_kernel": 5},
        "jpeg (q 70)": {"jpeg_quality": 70},
        "all four degradations": {
            "noise_sigma": 8.0,
            "blur_kernel": 5,
            "motion_blur_length": 7,
            "jpeg_quality": 70,
        },
    }
    rng = np.random.default_rng(1)
    print(f"per 256x256 RGB uint8 crop, median of {args.rounds} interleaved rounds (ms)")
    print(f"{'case':28s} {'old':>8s} {'new':>8s} {'old/new':>8s}")
    for name, levels in cases.items():
        if "colour" in levels:
            b, c, s = levels["colour"]

            def run_old(b=b, c=c, s=s):
                return old.apply_colour(
                    image, old.AugmentParams(brightness=b, contrast=c, saturation=s)
                )

            def run_new(b=b, c=c, s=s):
                return new.apply_colour(
                    image, new.AugmentParams(brightness=b, contrast=c, saturation=s)
                )
        else:

            def run_old(levels=levels):
                return old.degrade(image, rng, **levels)

            def run_new(levels=levels):
                return new.degrade(image, rng, **levels)

        run_new()  # the first call imports albumentations and builds the pipeline
        ms = median_ms({"old": run_old, "new": run_new}, args.rounds)
        print(f"{name:28s} {ms['old']:8.3f} {ms['new']:8.3f} {ms['old'] / ms['new']:7.1f}x")


if __name__ == "__main__":
    main()
