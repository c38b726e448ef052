"""Resuming: an interrupted fine-tuning run continued from its last checkpoint ends where an
uninterrupted run ends (same seed, CPU, deterministic), bit for bit.

Manual optimization counts one global step per TBPTT chunk: with seq_len 4 and tbptt_chunk 2 a
batch is 2 steps, an epoch of 2 batches 4 steps. The interruption falls on an epoch boundary:
mid-epoch checkpoints cannot replay the rest of the epoch (the DataLoader keeps no state), which
Lightning warns about on resume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from lightning_fa.commands.cli import main
from tests.conftest import REPO_ROOT
from tests.test_cli import TINY

STEPS_PER_EPOCH = 4  # 2 batches x ceil(seq_len 4 / tbptt_chunk 2) chunks


def write_config(tmp_path: Path, run: str, max_steps: int) -> Path:
    """A tiny run into `tmp_path/run`, keeping base.yaml's callbacks (its RunCheckpoint in a fixed
    folder, so `last` finds the previous run's checkpoint)."""
    config = json.loads(json.dumps(TINY))
    trainer = config["trainer"]
    del trainer["limit_train_batches"]
    root = str(tmp_path / run)
    trainer.update(
        default_root_dir=root,
        max_epochs=-1,
        max_steps=max_steps,
        limit_val_batches=0,
        deterministic=True,
        logger=[
            {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": root}}
        ],
    )
    config["data"]["init_args"].update(seq_len=4, batch_size=2, train_samples=4)
    path = tmp_path / f"{run}-{max_steps}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit(config: Path, *extra: str) -> None:
    main(["fit", "--config", str(REPO_ROOT / "experiments" / "base.yaml"), "--config", str(config), *extra])  # fmt: skip


def last_checkpoint(tmp_path: Path, run: str) -> dict:
    return torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)


class SigintAtStep(pl.Callback):
    """Presses Ctrl-C in its own process when training reaches `step`: a deterministic interrupt."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            # A process started in the background by a non-interactive shell (as CI may be)
            # inherits SIGINT ignored; a terminal's Ctrl-C reaches Python's default handler.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.kill(os.getpid(), signal.SIGINT)


class RecordStartStep(pl.Callback):
    """Writes the global step training starts from (what a resume restored) to `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer: pl.Trainer, *args) -> None:
        Path(self.path).write_text(str(trainer.global_step))


def extra_callback(class_name: str, **init_args) -> str:
    """Appends a callback of this module to base.yaml's list."""
    spec = {"class_path": f"tests.test_resume.{class_name}", "init_args": init_args}
    return f"--trainer.callbacks+={json.dumps(spec)}"


def assert_same_training(interrupted: dict, straight: dict, resumed: dict) -> None:
    temporal = [k for k in straight["state_dict"] if k.startswith("temporal.")]
    assert temporal
    # The second half really trained (a resume that silently restarted or skipped would not).
    assert any(
        not torch.equal(interrupted["state_dict"][k], resumed["state_dict"][k]) for k in temporal
    )
    for key in temporal:
        assert torch.equal(straight["state_dict"][key], resumed["state_dict"][key]), key
    # Adam's moments too: the next step would also agree.
    for a, b in zip(
        straight["optimizer_states"][0]["state"].values(),
        resumed["optimizer_states"][0]["state"].values(),
        strict=True,
    ):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])  # fmt: skip


@pytest.mark.slow
def test_resumed_run_matches_uninterrupted_run(tmp_path) -> None:
    total = 2 * STEPS_PER_EPOCH
    fit(write_config(tmp_path, "straight", total))
    fit(write_config(tmp_path, "resumed", STEPS_PER_EPOCH))
    interrupted = last_checkpoint(tmp_path, "resumed")
    assert interrupted["global_step"] == STEPS_PER_EPOCH
    fit(write_config(tmp_path, "resumed", total), "--ckpt_path=last")

    straight, resumed = last_checkpoint(tmp_path, "straight"), last_checkpoint(tmp_path, "resumed")
    assert straight["global_step"] == resumed["global_step"] == total
    assert_same_training(interrupted, straight, resumed)


@pytest.mark.slow
def test_run_interrupted_by_ctrl_c_resumes_from_its_last_checkpoint(tmp_path) -> None:
    """SIGINT at the first step of epoch 2: Lightning stops gracefully and RunCheckpoint's
    save_on_exception writes last.ckpt, from which `--ckpt_path last` finishes the run."""
    total = 2 * STEPS_PER_EPOCH
    fit(write_config(tmp_path, "straight", total))
    config = write_config(tmp_path, "interrupted", total)
    command = [sys.executable, "-m", "lightning_fa", "fit", "--config", str(REPO_ROOT / "experiments" / "base.yaml"), "--config", str(config)]  # fmt: skip
    stopped = subprocess.run(
        [*command, extra_callback("SigintAtStep", step=STEPS_PER_EPOCH)],
        cwd=REPO_ROOT,
        # The same torch thread count as the in-process runs: reductions split differently
        # across threads, and the weights are compared bit for bit.
        env={
            **os.environ,
            "WANDB_MODE": "disabled",
            "OMP_NUM_THREADS": str(torch.get_num_threads()),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert stopped.returncode != 0, stopped.stderr[-2000:]
    assert "KeyboardInterrupt" in stopped.stdout + stopped.stderr
    interrupted = last_checkpoint(tmp_path, "interrupted")
    assert interrupted["global_step"] == STEPS_PER_EPOCH
    assert [p.name for p in (tmp_path / "interrupted" / "checkpoints").iterdir()] == ["last.ckpt"]
    fit(config, "--ckpt_path=last")

    straight, resumed = (
        last_checkpoint(tmp_path, "straight"),
        last_checkpoint(tmp_path, "interrupted"),
    )
    assert resumed["global_step"] == total
    assert_same_training(interrupted, straight, resumed)


def test_smoke_run_leaves_no_checkpoint_for_resume(tmp_path) -> None:
    """A fast_dev_run into a real run's folder used to write last-v1.ckpt (global step 2), the
    newest `last*.ckpt`, which `--ckpt_path last` then resumed instead of the real last.ckpt."""
    fit(write_config(tmp_path, "run", STEPS_PER_EPOCH))
    fit(write_config(tmp_path, "run", STEPS_PER_EPOCH), "--trainer.fast_dev_run=1")
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["last.ckpt"]

    start = tmp_path / "start.txt"
    fit(write_config(tmp_path, "run", STEPS_PER_EPOCH + 2), "--ckpt_path=last", extra_callback("RecordStartStep", path=str(start)))  # fmt: skip
    assert start.read_text() == str(STEPS_PER_EPOCH)
    assert last_checkpoint(tmp_path, "run")["global_step"] == STEPS_PER_EPOCH + 2


def test_training_order_is_a_function_of_seed_and_epoch() -> None:
    """The shuffled order must not come from the global RNG (which checkpoints do not restore)."""
    from data_modules.synthetic import SyntheticDataModule

    def order(epoch: int, global_seed: int) -> list[int]:
        module = SyntheticDataModule(
            image_size=32, seq_len=2, batch_size=1, train_samples=6, train_videos=2,
            train_video_frames=4, val_videos=1, val_frames=2, test_videos=1, test_frames=2,
        )  # fmt: skip
        module.setup("fit")
        loader = module.train_dataloader()
        loader.sampler.set_epoch(epoch)  # what Lightning calls at each epoch start
        torch.manual_seed(global_seed)
        return list(iter(loader.sampler))

    assert order(1, 0) == order(1, 123)
    assert sorted(order(1, 0)) == list(range(6))
    assert order(0, 0) != order(1, 0)
