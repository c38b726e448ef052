"""DDP on CPU (2 gloo processes): video metrics logged by a distributed fit equal a one-process
validation of the same checkpoint.

Three validation videos on two ranks: the DistributedSampler pads rank 1 with a second copy of
video 0, which the metric must drop. Each rank also trains on different windows, so unsynced
gradients would leave the ranks with different weights and the DDP metrics (rank 1's videos
evaluated with rank 1's weights) would stop matching the checkpoint (rank 0's weights).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.test_cli import TINY

VAL_VIDEOS = 3


def write_config(tmp_path: Path) -> Path:
    config = json.loads(json.dumps(TINY))
    config["trainer"].update(
        default_root_dir=str(tmp_path),
        limit_val_batches=1.0,
        logger=[
            {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path), "name": "csv"},
            }
        ],
        callbacks=[
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": str(tmp_path / "checkpoints"), "save_last": True},
            }
        ],
    )
    # train_samples 4, batch 2, one batch per rank: the two ranks train on different windows.
    config["data"]["init_args"].update(val_videos=VAL_VIDEOS, val_frames=4, train_samples=4)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def lightning_fa(*args: str) -> None:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled")
    result = subprocess.run(
        [sys.executable, "-m", "lightning_fa", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def logged_val_metrics(metrics_csv: Path) -> dict[str, float]:
    values: dict[str, float] = {}
    with metrics_csv.open() as handle:
        for row in csv.DictReader(handle):
            values.update({k: float(v) for k, v in row.items() if k.startswith("val/") and v})
    return values


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_video_metrics_equal_single_process_validation(tmp_path) -> None:
    config = write_config(tmp_path)
    base = ["--config", str(REPO_ROOT / "experiments" / "base.yaml"), "--config", str(config)]
    lightning_fa(
        "fit", *base, "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"
    )
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    lightning_fa("validate", *base, "--ckpt_path", str(checkpoint))

    distributed, single = (
        logged_val_metrics(tmp_path / "csv" / version / "metrics.csv")
        for version in ("version_0", "version_1")
    )
    expected_keys = {
        f"val/mild/{variant}/{name}"
        for variant in ("backbone", "finetuned")
        for name in ("nrmse", "mcv", "mav", "accel", "error_jitter")
    }
    assert expected_keys <= set(single)
    assert set(distributed) == set(single)
    for key, value in single.items():
        assert math.isfinite(value), key
        assert distributed[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
