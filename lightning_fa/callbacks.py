"""Lightning callbacks: what a person wants to see in the logs besides numbers, checkpoints that
resume the right run, and predictions written to a file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import matplotlib
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lightning_fa.heatmaps import crop_to_frame
from lightning_fa.outputs import write_text_atomic


class RunCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose `last.ckpt` is always the newest state, and that writes nothing in
    a smoke run (`trainer.fast_dev_run`).

    Lightning refreshes `last` only when it also saves a top-k checkpoint: with a monitored score
    that stopped improving, last.ckpt stayed at the best epoch and a resume went back in time.
    And it suppresses checkpointing under fast_dev_run except in `on_train_end`, which wrote
    `last-v1.ckpt`: a smoke test into a real run's folder left the newest `last*.ckpt`, which
    `--ckpt_path last` then resumed instead of the real run.
    """

    def _refresh_last(self, trainer: pl.Trainer) -> None:
        # The skip test also holds when this step is already saved (as a top-k or last).
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.fast_dev_run:
            super().on_train_end(trainer, pl_module)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Only last.ckpt, what a resume reads: Lightning also writes an `epoch=..-step=..` file,
        # which would sit beside the best checkpoint looking like a second best.
        if not self.save_last:
            super().on_exception(trainer, pl_module, exception)
        elif self._should_save_on_exception(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def prediction_records(batches: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`StableAlignmentModule.predict_step` outputs -> JSON-ready records, one per sequence."""
    return [
        {
            "video_id": item["video_id"],
            "frame_index": item["frame_index"].tolist(),
            "backbone": item["backbone"].tolist(),
            "finetuned": item["finetuned"].tolist(),
        }
        for batch in batches
        for item in batch["predictions"]
    ]


class PredictionWriter(BasePredictionWriter):
    """Writes what `lightning-fa predict --config ... --ckpt_path ...` predicted to a JSON file,
    `{"checkpoint": ..., "items": [{video_id, frame_index, backbone, finetuned}, ...]}` with
    frame-pixel (x, y) landmarks, replaced atomically (a crash leaves any earlier file whole).

    Args:
        filename: relative paths go into the run folder (`trainer.default_root_dir`).
    """

    def __init__(self, filename: str = "predictions.json") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        if not trainer.is_global_zero:
            return
        # One list per predict loader, or the batches themselves when there is one loader.
        loaders = predictions if predictions and isinstance(predictions[0], list) else [predictions]
        records = [record for batches in loaders for record in prediction_records(batches)]
        path = Path(trainer.default_root_dir) / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint = trainer.ckpt_path and str(trainer.ckpt_path)
        write_text_atomic(path, json.dumps({"checkpoint": checkpoint, "items": records}))
        print(f"wrote {len(records)} predictions to {path}")


class ValidationSamples(pl.Callback):
    """After each validation, plot the first validation sequence: its first frame with the true,
    backbone and fine-tuned landmarks, and x/y trajectories of a few landmarks over time.

    PNGs go to `<log_dir>/samples/`; a W&B logger also receives them as images.
    """

    def __init__(self, every_n_epochs: int = 1, landmarks: tuple[int, ...] = (30, 36, 48)) -> None:
        super().__init__()
        self.every_n_epochs = every_n_epochs
        self.landmarks = landmarks

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        if not trainer.is_global_zero or not trainer.val_dataloaders:
            return
        loaders = trainer.val_dataloaders
        batch = next(iter(loaders[0] if isinstance(loaders, list) else loaders))
        if "frames" not in batch:  # image datasets: nothing temporal to draw
            return
        frames = batch["frames"][:1].to(pl_module.device)
        with torch.no_grad():
            raw = pl_module.backbone_heatmaps(frames)
            stabilised, _ = pl_module.temporal.forward_sequence(raw, None)
        affine = batch["affine"][0].to(pl_module.device)
        # Crop pixels (what the network saw), per frame; the trajectories are in frame pixels.
        crop_tracks = {
            "ground truth": batch["landmarks"][0].to(pl_module.device),
            "backbone": pl_module.decode(raw[0]),
            "fine-tuned": pl_module.decode(stabilised[0]),
        }
        tracks = {name: crop_to_frame(t, affine).float().cpu() for name, t in crop_tracks.items()}
        crop_points = {name: t[0].float().cpu() for name, t in crop_tracks.items()}
        out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "samples"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"epoch{trainer.current_epoch:03d}.png"
        self._plot(batch["frames"][0, 0], crop_points, tracks, path)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="val/samples", images=[str(path)], step=trainer.global_step)

    def _plot(self, image: torch.Tensor, points: dict, tracks: dict, path: Path) -> None:
        colours = {"ground truth": "limegreen", "backbone": "red", "fine-tuned": "dodgerblue"}
        figure, axes = plt.subplots(1, 3, figsize=(13, 4))
        axes[0].imshow(image.permute(1, 2, 0).cpu().numpy())
        for name, xy in points.items():
            axes[0].scatter(xy[:, 0], xy[:, 1], s=6, c=colours[name], label=name)
        axes[0].set_axis_off()
        axes[0].legend(loc="lower right", fontsize=7)
        for axis, coordinate in zip(axes[1:], ("x", "y")):
            index = 0 if coordinate == "x" else 1
            for name, track in tracks.items():
                for k in self.landmarks:
                    axis.plot(track[:, k, index], color=colours[name], lw=1)
            axis.set_title(f"{coordinate} of landmarks {list(self.landmarks)} (frame px)")
            axis.set_xlabel("frame")
        figure.tight_layout()
        figure.savefig(path, dpi=80)
        plt.close(figure)
