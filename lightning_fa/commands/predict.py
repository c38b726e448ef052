"""`lightning-fa predict CKPT --data DATA.yaml --out preds.json`: predictions without the training config.

The module is rebuilt from the checkpoint alone (`StableAlignmentModule.from_checkpoint`); the data
is any LightningDataModule given as a `class_path` / `init_args` YAML (the `data:` block of a config).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from jsonargparse import ArgumentParser

from lightning_fa.outputs import atomic_write, claim_outputs

DATA_HINT = "the class_path (and init_args) of a LightningDataModule"


def _read_data_block(config_path: Path) -> None:
    """Refuse a data YAML that cannot describe a datamodule, naming the file, before jsonargparse
    (whose errors for these cases are usage screens or a decode error without the path)."""
    if not config_path.is_file():
        raise FileNotFoundError(f"data config not found: {config_path}")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"data config {config_path} is not UTF-8 text ({error.reason})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or error
        raise ValueError(f"data config {config_path} is not valid YAML{where}: {problem}") from None
    if config is None:
        raise ValueError(
            f"data config {config_path} is empty; it needs a `data:` block with {DATA_HINT}"
        )
    if not isinstance(config, dict) or "data" not in config:
        raise ValueError(f"data config {config_path} has no `data:` block with {DATA_HINT}")


def load_datamodule(config_path: Path) -> pl.LightningDataModule:
    _read_data_block(config_path)
    parser = ArgumentParser(parser_mode="omegaconf", exit_on_error=False)
    # A plain (not Optional) subclass type: jsonargparse then reports the one reason it failed.
    parser.add_argument("--data", type=pl.LightningDataModule, required=True)
    try:
        config = parser.parse_path(str(config_path))
        return parser.instantiate(config).data
    except (argparse.ArgumentError, ValueError, TypeError) as error:
        lines = [line.strip() for line in str(error).splitlines()]
        reason = " ".join(line for line in lines if line and line != 'Parser key "data":')
        raise ValueError(f"data config {config_path}: {reason}") from error


class LandmarkCountCheck(pl.Callback):
    """Refuses a checkpoint whose landmark count differs from the data's, once the datamodule is
    set up and before any prediction (its outputs would not match the data's annotations)."""

    def __init__(self, checkpoint: Path, data: Path) -> None:
        self.checkpoint, self.data = checkpoint, data

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        expected = getattr(trainer.datamodule, "num_landmarks", None)
        found = int(pl_module.backbone.num_landmarks)
        if expected is not None and int(expected) != found:
            raise ValueError(
                f"checkpoint {self.checkpoint} predicts {found} landmarks but the data of "
                f"{self.data} have {int(expected)}"
            )


def _records(batches: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [
        {
            "video_id": item["video_id"],
            "frame_index": item["frame_index"].tolist(),
            "backbone": item["backbone"].tolist(),
            "finetuned": item["finetuned"].tolist(),
        }
        for batch in batches or []
        for item in batch["predictions"]
    ]


def main(argv: list[str]) -> int:
    from lightning_fa.systems.finetune import StableAlignmentModule

    parser = argparse.ArgumentParser(prog="lightning-fa predict", description=__doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="YAML with a `data:` block")
    parser.add_argument("--out", type=Path, default=Path("predictions.json"))
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args(argv)

    with claim_outputs([(args.out, "--out")]):
        datamodule = load_datamodule(args.data)
        module = StableAlignmentModule.from_checkpoint(args.checkpoint)
        trainer = pl.Trainer(
            accelerator=args.accelerator,
            devices=1,
            logger=False,
            callbacks=[LandmarkCountCheck(args.checkpoint, args.data)],
        )
        records = _records(trainer.predict(module, datamodule=datamodule))
        try:
            with atomic_write(args.out, encoding="utf-8") as handle:
                json.dump({"checkpoint": str(args.checkpoint), "items": records}, handle)
        except OSError as error:  # a full disk: name the output, not the temporary file
            raise ValueError(f"cannot write --out {args.out}: {error.strerror or error}") from error
    print(f"wrote {len(records)} predictions to {args.out}")
    return 0
