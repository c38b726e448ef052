"""`lightning-fa predict CKPT --data DATA.yaml --out preds.json`: predictions without the training config.

The module is rebuilt from the checkpoint alone (`StableAlignmentModule.from_checkpoint`); the data
is any LightningDataModule given as a `class_path` / `init_args` YAML (the `data:` block of a config).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning.pytorch as pl
from jsonargparse import ArgumentParser


def load_datamodule(config_path: Path) -> pl.LightningDataModule:
    parser = ArgumentParser(parser_mode="omegaconf")
    parser.add_subclass_arguments(pl.LightningDataModule, "data", required=True)
    if not config_path.is_file():
        raise FileNotFoundError(f"data config not found: {config_path}")
    config = parser.parse_path(str(config_path))
    return parser.instantiate_classes(config).data


def main(argv: list[str]) -> int:
    from lightning_fa.systems.finetune import StableAlignmentModule

    parser = argparse.ArgumentParser(prog="lightning-fa predict", description=__doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="YAML with a `data:` block")
    parser.add_argument("--out", type=Path, default=Path("predictions.json"))
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args(argv)

    # Fail before any work when the output cannot be written.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.touch()

    module = StableAlignmentModule.from_checkpoint(args.checkpoint)
    datamodule = load_datamodule(args.data)
    trainer = pl.Trainer(accelerator=args.accelerator, devices=1, logger=False)
    batches = trainer.predict(module, datamodule=datamodule)
    records = [
        {
            "video_id": item["video_id"],
            "frame_index": item["frame_index"].tolist(),
            "backbone": item["backbone"].tolist(),
            "finetuned": item["finetuned"].tolist(),
        }
        for batch in batches
        for item in batch["predictions"]
    ]
    args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "items": records}))
    print(f"wrote {len(records)} predictions to {args.out}")
    return 0
