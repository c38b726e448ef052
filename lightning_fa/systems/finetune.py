"""`StableAlignmentModule`: a frozen heatmap backbone + a trainable ConvLSTM, fine-tuned with TBPTT.

Training splits every sequence of T frames into chunks of k frames; each chunk gets its own loss,
backward and optimizer step, and the recurrent state is detached between chunks (truncated BPTT;
Lightning 2.x removed the automatic version, so this runs under manual optimization).

Evaluation reports the raw backbone and the fine-tuned output side by side, decoded the same way,
so every log shows the improvement (or the lack of it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_fa.backbones import Backbone, load_checkpoint
from lightning_fa.checks import check_ints
from lightning_fa.heatmaps import PDC_THRESHOLD, HeatmapCodec, crop_to_frame
from lightning_fa.inference.step import FrameStep
from lightning_fa.losses import JitterLoss, PixelLoss
from lightning_fa.metrics import LandmarkAccuracy, VideoStability
from lightning_fa.systems.checkpoints import check_loaded, describe_backbone, rebuild
from lightning_fa.temporal import (
    ConvLSTM,
    State,
    TemporalStage,
    detach_state,
    registered_name,
)

VARIANTS = ("backbone", "finetuned")


class StableAlignmentModule(pl.LightningModule):
    """Fine-tunes only the temporal stage on top of a frozen backbone (paper Fig. 2).

    Args:
        backbone: a heatmap backbone (protocol of `lightning_fa.backbones.Backbone`); frozen here.
        temporal: the trainable stage; default `ConvLSTM(backbone.num_landmarks)`.
        loss: `JitterLoss` (default) or a `PixelLoss` `(pred, target) -> scalar` for ablations
            (the paper's Figure 6). A loss of one's own subclasses `JitterLoss` (called on whole
            TBPTT chunks with the previous chunk's coordinates) or `PixelLoss` (called on the
            chunk's frames flattened into the batch).
        backbone_checkpoint: weights loaded into the backbone; its path and SHA-256 go into every
            checkpoint of this module, so a run names exactly which detector it stabilised.
        store_backbone_weights: also keep the backbone weights in this module's checkpoints.
        decoder / pdc_threshold / relative_threshold: how heatmaps become coordinates (SPEC 2).
        sigma: Gaussian target width in heatmap pixels (the dataset's; 300W 1.0, others 1.5).
            These four and the backbone's stride make `self.codec` (`HeatmapCodec`), which
            renders the targets and decodes every output; the default loss takes its threshold.
        tbptt_chunk: k, frames per truncated-BPTT chunk.
        burn_in: frames at the start of every training window that only run the stage (no loss,
            no gradient), so the chunks that train start from the state a stream has built up
            rather than a fresh one; 0 trains from the window's first frame.
        fr_thresholds: NME thresholds of the failure rate / AUC in image evaluation.
        channels_last: run the frozen backbone on NHWC memory.

    Validation logs `val/score`, the number to select checkpoints on (lower is better): on the
    first validation loader, the fine-tuned NRMSE x MCV for video data (the paper's Table 3
    criterion: accurate and stable) and the fine-tuned NME (%) for image data.
    """

    def __init__(
        self,
        backbone: Backbone,
        temporal: TemporalStage | None = None,
        loss: JitterLoss | PixelLoss | None = None,
        backbone_checkpoint: str | None = None,
        store_backbone_weights: bool = False,
        decoder: str = "pdc",
        pdc_threshold: float = PDC_THRESHOLD,
        relative_threshold: bool = False,
        sigma: float = 1.0,
        tbptt_chunk: int = 4,
        burn_in: int = 0,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        lr_scheduler: str = "none",
        gradient_clip_val: float | None = 1.0,
        fr_thresholds: tuple[float, ...] = (0.08, 0.10),
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        check_ints(need=">= 1", tbptt_chunk=tbptt_chunk)
        check_ints(0, burn_in=burn_in)
        if lr_scheduler not in ("none", "cosine"):
            raise ValueError(f"lr_scheduler must be 'none' or 'cosine', got {lr_scheduler!r}")
        self.save_hyperparameters(ignore=["backbone", "temporal", "loss"])
        self.automatic_optimization = False

        self.backbone = backbone
        self.backbone_reference = describe_backbone(backbone, backbone_checkpoint)
        if backbone_checkpoint is not None:
            load_checkpoint(self.backbone, backbone_checkpoint)
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        if channels_last:  # NHWC convolutions: faster under bf16 on GPUs with tensor cores
            self.backbone.to(memory_format=torch.channels_last)

        self.temporal = temporal if temporal is not None else ConvLSTM(backbone.num_landmarks)
        self.codec = HeatmapCodec(
            stride=float(backbone.stride),
            sigma=sigma,
            decoder=decoder,
            threshold=pdc_threshold,
            relative=relative_threshold,
        )
        self.loss = loss if loss is not None else JitterLoss(threshold=self.codec.threshold)

        self.metrics = nn.ModuleDict()
        self._streams: dict[int, tuple[int, State]] = {}

    # ----------------------------------------------------------------- model
    def train(self, mode: bool = True) -> StableAlignmentModule:
        # The backbone stays in eval mode: its BatchNorm statistics must never change.
        super().train(mode)
        self.backbone.eval()
        return self

    @property
    def stride(self) -> float:
        return self.codec.stride

    @property
    def step(self) -> FrameStep:
        """The per-frame step over this module's backbone, stage and codec (holds no weights)."""
        return FrameStep(
            self.backbone, self.temporal, self.codec, channels_last=self.hparams.channels_last
        )

    def backbone_heatmaps(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen backbone on (..., 3, H, W) uint8 RGB -> (..., L, h, w); never builds a graph."""
        with torch.inference_mode():
            heatmaps = self.step.backbone_heatmaps(images)
        # Inference tensors cannot be saved for backward: the ConvLSTM gets a normal copy.
        return heatmaps.clone() if torch.is_grad_enabled() else heatmaps

    def decode(self, heatmaps: torch.Tensor) -> torch.Tensor:
        """Heatmaps (..., L, h, w) -> crop-pixel coordinates (..., L, 2)."""
        return self.step.decode(heatmaps)

    def forward(
        self, images: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """One streaming step: images (B, 3, H, W) -> (coords (B, L, 2) crop px, raw coords, state)."""
        coords, raw_coords, _, state = self.step(images, state)
        return coords, raw_coords, state

    # -------------------------------------------------------------- training
    def _chunk_loss(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        target_coords: torch.Tensor,
        prev: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(self.loss, JitterLoss):
            prev_pred, prev_target = prev if prev is not None else (None, None)
            return self.loss(
                pred,
                target,
                target_coords,
                prev_pred_coords=prev_pred,
                prev_target_coords=prev_target,
                return_last_coords=True,
            )
        return self.loss(pred.flatten(0, 1), target.flatten(0, 1)), None

    def _run_chunk(
        self,
        frames: torch.Tensor,
        landmarks: torch.Tensor,
        cached: torch.Tensor | None,
        state: State | None,
        prev: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, State, tuple[torch.Tensor, torch.Tensor] | None]:
        """One chunk through the stage: (its loss, the stage's state after it, the jitter loss's
        previous frame (pred, target coordinates) for the next chunk)."""
        raw = cached.float() if cached is not None else self.backbone_heatmaps(frames)
        target, target_coords = self.codec.encode(landmarks, *raw.shape[-2:])
        stabilised, state = self.temporal.forward_sequence(raw, state)
        loss, last_coords = self._chunk_loss(stabilised, target, target_coords, prev)
        if last_coords is not None:
            prev = (last_coords, target_coords[:, -1])  # JitterLoss returns it detached
        return loss, state, prev

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        frames, landmarks = batch["frames"], batch["landmarks"]
        # Data modules may deliver the frozen backbone's output precomputed (e.g. a slow
        # coordinate detector run once per video); it is what the backbone would compute.
        cached = batch.get("backbone_heatmaps")
        state: State | None = None
        prev: tuple[torch.Tensor, torch.Tensor] | None = None
        if burn_in := self.hparams.burn_in:
            if frames.shape[1] <= burn_in:
                raise ValueError(
                    f"burn_in ({burn_in}) must be shorter than the training windows "
                    f"({frames.shape[1]} frames)"
                )
            head = slice(None, burn_in)
            with torch.no_grad():  # only the state and the previous frame are kept
                _, state, prev = self._run_chunk(
                    frames[:, head],
                    landmarks[:, head],
                    cached[:, head] if cached is not None else None,
                    None,
                    None,
                )
            frames, landmarks = frames[:, burn_in:], landmarks[:, burn_in:]
            cached = cached[:, burn_in:] if cached is not None else None
        cached_chunks = (
            torch.split(cached, self.hparams.tbptt_chunk, dim=1)
            if cached is not None
            else [None] * math.ceil(frames.shape[1] / self.hparams.tbptt_chunk)
        )
        losses = []
        # torch.split gives ceil(T / k) chunks of k frames (the last one shorter).
        for frame_chunk, landmark_chunk, cached_chunk in zip(
            torch.split(frames, self.hparams.tbptt_chunk, dim=1),
            torch.split(landmarks, self.hparams.tbptt_chunk, dim=1),
            cached_chunks,
        ):
            loss, state, prev = self._run_chunk(
                frame_chunk, landmark_chunk, cached_chunk, state, prev
            )
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            optimizer.step()
            state = detach_state(state)
            losses.append(loss.detach())
        mean_loss = torch.stack(losses).mean()
        self.log("train/loss", mean_loss, prog_bar=True, batch_size=frames.shape[0])
        return mean_loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Called after the AMP scaler has unscaled the gradients, so the clip threshold is real.
        if self.hparams.gradient_clip_val:
            self.clip_gradients(
                optimizer,
                gradient_clip_val=self.hparams.gradient_clip_val,
                gradient_clip_algorithm="norm",
            )

    def on_train_epoch_end(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(
            self.temporal.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        if self.hparams.lr_scheduler == "none":
            return optimizer
        epochs = max(1, self.trainer.max_epochs or 1) if self._trainer is not None else 1
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # ------------------------------------------------------------ evaluation
    def _metric(self, stage: str, loader: str, kind: str, variant: str) -> nn.Module:
        key = f"{stage}__{loader}__{kind}__{variant}"
        if key not in self.metrics:
            norm_indices = getattr(self._datamodule_spec(), "norm_indices", (36, 45))
            if kind == "image":
                metric = LandmarkAccuracy(
                    norm_indices=norm_indices, thresholds=self.hparams.fr_thresholds
                )
            else:
                metric = VideoStability(norm_indices=norm_indices)
            self.metrics[key] = metric.to(self.device)
        return self.metrics[key]

    def _datamodule_spec(self) -> Any:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        return getattr(datamodule, "spec", None)

    def _loader_name(self, dataloader_idx: int) -> str:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        names = getattr(datamodule, "eval_loader_names", None)
        return names[dataloader_idx] if names else f"set{dataloader_idx}"

    def _stream(self, batch: dict[str, torch.Tensor], i: int) -> tuple[torch.Tensor, ...]:
        """Window i of a sequence batch -> (raw, stabilised) heatmaps (T, L, h, w). The state
        continues that of the same video's previous window when the frames follow on, and is
        kept for its next window."""
        video_id, frame_index = int(batch["video_id"][i]), batch["frame_index"][i]
        last_frame, state = self._streams.get(video_id, (None, None))
        if last_frame is None or int(frame_index[0]) != last_frame + 1:
            state = None
        cached = batch.get("backbone_heatmaps")
        raw = (
            cached[i : i + 1].float()
            if cached is not None
            else self.backbone_heatmaps(batch["frames"][i : i + 1])
        )
        stabilised, state = self.temporal.forward_sequence(raw, state)
        self._streams[video_id] = (int(frame_index[-1]), state)
        return raw[0], stabilised[0]

    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str, dataloader_idx: int) -> None:
        loader = self._loader_name(dataloader_idx)
        if "image" in batch:  # the paper's image protocol: every image from the initial state
            raw = self.backbone_heatmaps(batch["image"])
            stabilised, _ = self.temporal(raw, None)
            for variant, heatmaps in zip(VARIANTS, (raw, stabilised)):
                self._metric(stage, loader, "image", variant).update(
                    self.decode(heatmaps),
                    batch["landmarks"],
                    box_size=batch["norm_size"],
                    visible=batch.get("visible"),
                    index=batch.get("index"),
                )
            return
        for i in range(batch["frames"].shape[0]):
            frame_index = batch["frame_index"][i]
            raw, stabilised = self._stream(batch, i)
            affine = batch["affine"][i]
            target = crop_to_frame(batch["landmarks"][i], affine)
            for variant, heatmaps in zip(VARIANTS, (raw, stabilised)):
                self._metric(stage, loader, "video", variant).update(
                    crop_to_frame(self.decode(heatmaps), affine),
                    target,
                    video_id=batch["video_id"][i].expand(len(frame_index)),
                    frame_index=frame_index,
                    valid=batch["valid"][i],
                    norm_size=batch["norm_size"][i] * self._crop_to_frame_scale(affine),
                )

    @staticmethod
    def _crop_to_frame_scale(affine: torch.Tensor) -> torch.Tensor:
        """Frame pixels per crop pixel, per frame (the affine is a similarity: det = scale^2)."""
        return torch.linalg.det(affine[..., :2]).abs().rsqrt()

    def _metric_keys(self, stage: str) -> list[str]:
        """Metrics updated this epoch, on any rank: every rank must join each metric's gather,
        also a rank whose shard held none of that metric's data."""
        keys = [
            k for k, m in self.metrics.items() if k.startswith(f"{stage}__") and m.update_called
        ]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[list[str] | None] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, keys)
            keys = [k for rank_keys in gathered for k in rank_keys or []]
        return sorted(set(keys))

    def _log_metrics(self, stage: str) -> None:
        first_loader = self._loader_name(0)
        for key in self._metric_keys(stage):
            _, loader, kind, variant = key.split("__")
            metric = self._metric(stage, loader, kind, variant)
            values = metric.compute()
            if "nrmse" in values and "mcv" in values:  # the paper's Table 3 criterion
                values["nrmse_x_mcv"] = values["nrmse"] * values["mcv"]
            for name, value in values.items():
                self.log(f"{stage}/{loader}/{variant}/{name}", value, sync_dist=False)
            if stage == "val" and loader == first_loader and variant == "finetuned":
                # The one number checkpointing / early stopping / sweeps select on (docstring).
                score = values["nrmse_x_mcv"] if kind == "video" else values["nme"]
                self.log("val/score", score, sync_dist=False)
            metric.reset()

    def on_validation_epoch_start(self) -> None:
        self._streams.clear()

    def on_test_epoch_start(self) -> None:
        self._streams.clear()

    def on_predict_epoch_start(self) -> None:
        self._streams.clear()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "val", dataloader_idx)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "test", dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Frame-coordinate predictions (raw backbone and fine-tuned) for every frame of the batch:
        videos streamed as in evaluation, still images each from the initial state."""
        if "image" in batch:
            raw = self.backbone_heatmaps(batch["image"])
            stabilised, _ = self.temporal(raw, None)
            pairs = list(zip(raw[:, None], stabilised[:, None]))
            affines, video_ids = batch["affine"][:, None], [-1] * len(pairs)
            frame_indices = [torch.zeros(1, dtype=torch.long)] * len(pairs)
        else:
            pairs = [self._stream(batch, i) for i in range(batch["frames"].shape[0])]
            affines, video_ids = batch["affine"], batch["video_id"].tolist()
            frame_indices = list(batch["frame_index"])
        outputs = [
            {
                "video_id": video_id,
                "frame_index": frame_index.cpu(),
                "backbone": crop_to_frame(self.decode(raw), affine).cpu(),
                "finetuned": crop_to_frame(self.decode(stabilised), affine).cpu(),
            }
            for (raw, stabilised), affine, video_id, frame_index in zip(
                pairs, affines, video_ids, frame_indices
            )
        ]
        return {"predictions": outputs}

    # ----------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["backbone_reference"] = self.backbone_reference
        # Like the backbone: the registered name and constructor arguments (None: a stage
        # outside lightning_fa.temporal.TEMPORAL_STAGES, which from_checkpoint refuses).
        checkpoint["temporal_stage"] = registered_name(self.temporal)
        checkpoint["temporal_config"] = getattr(self.temporal, "config", None)
        if not self.hparams.store_backbone_weights:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith("backbone.")]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_loaded(
            self, checkpoint, self._trainer.ckpt_path if self._trainer is not None else None
        )

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, map_location: str | torch.device = "cpu"
    ) -> StableAlignmentModule:
        """Rebuild a fine-tuned module from its checkpoint alone (no training config needed;
        `lightning_fa.systems.checkpoints.rebuild`)."""
        return rebuild(cls, path, map_location)
