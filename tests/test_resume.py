"""Resuming: an interrupted fine-tuning run continued from its last checkpoint ends where an
uninterrupted run ends (same seed, CPU, deterministic), bit for bit.

Manual optimization counts one global step per TBPTT chunk: with seq_len 4 and tbptt_chunk 2 a
batch is 2 steps, an epoch of 2 batches 4 steps. The interruption falls on an epoch boundary:
mid-epoch checkpoints cannot replay the rest of the epoch (the DataLoader keeps no state), which
Lightning warns about on resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lightning_fa.cli import main
from tests.conftest import REPO_ROOT
from tests.test_cli import TINY

STEPS_PER_EPOCH = 4  # 2 batches x ceil(seq_len 4 / tbptt_chunk 2) chunks


def write_config(tmp_path: Path, run: str, max_steps: int) -> Path:
    config = json.loads(json.dumps(TINY))
    trainer = config["trainer"]
    del trainer["limit_train_batches"]
    trainer.update(
        default_root_dir=str(tmp_path / run),
        max_epochs=-1,
        max_steps=max_steps,
        limit_val_batches=0,
        deterministic=True,
        logger=False,
        # A fixed folder: with the default (the logger's versioned folder) `last` would look in
        # the new run's empty version folder.
        callbacks=[
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": str(tmp_path / run / "checkpoints"), "save_last": True},
            }
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
