"""Shared fixtures: deterministic seeds, W&B disabled, the optional real data in ../shared/data."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
import torch

from lightning_fa.backbones import HRNetConfig

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LIGHTNING_FA_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


# An HRNet small enough to train in a test (same code as HRNetV2-W18, other widths and depths).
TINY_HRNET = HRNetConfig(
    stem_channels=8,
    layer1_planes=4,
    layer1_blocks=1,
    widths=(4, 8, 12, 16),
    stage_modules=(1, 1, 1),
    blocks_per_branch=1,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the time of the write."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture(autouse=True)
def _console_handlers_follow_stderr():
    """`import lightning` (and torchmetrics) adds a `logging.StreamHandler()`, which keeps the
    `sys.stderr` of that moment. The commands import Lightning lazily, so in tests/test_cli.py that
    is the capsys stream of the first test calling `main(["fit", ...])`, which pytest closes after
    that test: every later Lightning INFO line ("Seed set to 42") then printed a "Logging error ...
    I/O operation on closed file" traceback into the next test's stderr. After each test, a
    console handler left on a closed stream writes to the current `sys.stderr` instead."""
    yield
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            stream = getattr(handler, "stream", None)
            if (
                isinstance(handler, logging.StreamHandler)
                and not isinstance(handler, logging.FileHandler)
                and getattr(stream, "closed", False)
            ):
                handler.stream = _CurrentStderr()


@pytest.fixture
def one_thread():
    """Train-heavy tests on one torch thread: two per process is much slower on a busy 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_data() -> Path:
    """The read-only real samples; the test is skipped when they are absent (a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA
