"""A `StableAlignmentModule` checkpoint: the backbone record it carries, the checks that it
fits the live module, and the rebuild from the file alone (`from_checkpoint`)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_fa.backbones import build_from_spec, read_checkpoint
from lightning_fa.backbones.base import (
    check_fit,
    require_finite,
    require_plain_data,
    require_tensors,
)
from lightning_fa.outputs import file_sha256
from lightning_fa.temporal import build_temporal_stage

# Constructor arguments that `rebuild` builds itself, never takes from a file.
_BUILT_ARGUMENTS = {"self", "backbone", "temporal", "loss"}


def describe_backbone(backbone: nn.Module, checkpoint: str | None) -> dict[str, Any]:
    """The backbone's record: its spec (class path, init args), weights file and SHA-256."""
    spec = dict(getattr(backbone, "spec", None) or {})
    spec.setdefault("class_path", f"{type(backbone).__module__}.{type(backbone).__qualname__}")
    spec["checkpoint"] = str(checkpoint) if checkpoint else None
    spec["sha256"] = file_sha256(checkpoint) if checkpoint else None
    return spec


def check_loaded(module: Any, checkpoint: dict[str, Any], ckpt_path: str | None) -> None:
    """`module.on_load_checkpoint`: the checkpoint fits the live module (landmark count,
    backbone weights); one without backbone weights takes them from the live backbone.
    ``ckpt_path``: the Trainer's `--ckpt_path`, None when `rebuild` checked the file itself."""
    # Checkpoints without backbone weights take them from the live (referenced) backbone, so
    # loading stays strict for everything this module trained.
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError("checkpoint has no state_dict mapping: not a checkpoint of this module")
    if ckpt_path is not None:  # `--ckpt_path` (from_checkpoint checked the file itself)
        require_finite(state, ckpt_path)
    stored = any(k.startswith("backbone.") for k in state)
    if not stored:
        state.update({f"backbone.{k}": v for k, v in module.backbone.state_dict().items()})
    reference = checkpoint.get("backbone_reference")
    reference = reference if isinstance(reference, Mapping) else {}
    init_args = reference.get("init_args")
    saved_count = init_args.get("num_landmarks") if isinstance(init_args, Mapping) else None
    live_count = getattr(module.backbone, "num_landmarks", None)
    if isinstance(saved_count, int) and live_count is not None and saved_count != live_count:
        source = ckpt_path if ckpt_path is not None else "checkpoint"
        raise ValueError(
            f"{source} was fine-tuned for {saved_count} landmarks, but this model (and its "
            f"data) has {live_count}"
        )
    saved = reference.get("sha256")
    if saved and module.backbone_reference.get("sha256") is None and not stored:
        raise ValueError(
            f"checkpoint was fine-tuned on the backbone weights {saved} "
            f"({reference.get('checkpoint')}), which it does not store; "
            "build the module with backbone_checkpoint=<that file> (make evaluate: BACKBONE_CKPT)"
        )
    if saved and module.backbone_reference.get("sha256") not in (None, saved):
        raise ValueError(
            "checkpoint was fine-tuned on a backbone with SHA-256 "
            f"{saved}, but the backbone loaded now has {module.backbone_reference['sha256']} "
            f"({module.backbone_reference.get('checkpoint')})"
        )


def rebuild(cls: type, path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Rebuild a fine-tuned module from its checkpoint alone (no training config needed).

    The file is data, never code: it is read with `torch.load(weights_only=True)`, and the
    backbone and temporal stage it names are built only from classes allowed in code
    (`lightning_fa.backbones.allow_checkpoint_class`, `lightning_fa.temporal.TEMPORAL_STAGES`).
    A file that is no checkpoint of this module, holds NaN / inf weights or does not fit the
    module it describes is refused with a one-line ValueError naming it.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, map_location)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"checkpoint {path} holds a {type(checkpoint).__name__}, not a fine-tuned "
            "checkpoint (a mapping with state_dict and backbone_reference)"
        )
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(
            f"checkpoint {path} has no state_dict: not a checkpoint of StableAlignmentModule"
        )
    require_tensors(state, path)
    require_finite(state, path)
    reference = checkpoint.get("backbone_reference")
    if not isinstance(reference, Mapping):
        raise ValueError(
            f"checkpoint {path} has no backbone_reference, so it was not saved by "
            "StableAlignmentModule (a backbone's own weights load with "
            "create_backbone(name, num_landmarks, checkpoint=...))"
        )
    if "init_args" not in reference:
        raise ValueError(
            f"{path} records no backbone constructor (backbones built outside "
            "lightning_fa.backbones.Backbone); rebuild the module from its training config: "
            "lightning-fa predict --config CONFIG --ckpt_path CKPT"
        )
    backbone = build_from_spec(reference, source=path)
    saved_hparams = checkpoint.get("hyper_parameters", {})
    if not isinstance(saved_hparams, Mapping):
        raise ValueError(f"checkpoint {path}: hyper_parameters is not a mapping")
    # LightningCLI adds bookkeeping entries (`_class_path`, ...) to the hyper-parameters; the
    # modules passed to the constructor come from the allow-listed builders only.
    accepted = set(inspect.signature(cls.__init__).parameters) - _BUILT_ARGUMENTS
    hparams = {k: v for k, v in saved_hparams.items() if k in accepted}
    require_plain_data(hparams, f"checkpoint {path}: hyper_parameters")
    stored_weights = any(k.startswith("backbone.") for k in state)
    # A weightless backbone (e.g. a coordinate detector such as dlib) is fully described by
    # its constructor arguments.
    if stored_weights or not backbone.state_dict():
        hparams["backbone_checkpoint"] = None
    elif reference.get("checkpoint"):
        hparams["backbone_checkpoint"] = reference["checkpoint"]
    else:
        raise ValueError(
            f"{path} stores no backbone weights and references no backbone file; "
            "fine-tune with backbone_checkpoint=... or store_backbone_weights=True"
        )
    temporal = None
    temporal_config = checkpoint.get("temporal_config")
    if temporal_config:
        saved_landmarks = (
            temporal_config.get("num_landmarks") if isinstance(temporal_config, Mapping) else None
        )
        if saved_landmarks not in (None, backbone.num_landmarks):
            raise ValueError(
                f"checkpoint {path}: its backbone gives {backbone.num_landmarks} landmarks "
                f"but its temporal stage was saved for {saved_landmarks}"
            )
        # Checkpoints written before stages were named all hold a ConvLSTM.
        name = checkpoint.get("temporal_stage", "ConvLSTM")
        temporal = build_temporal_stage(name, temporal_config, path)
    try:
        module = cls(backbone=backbone, temporal=temporal, **hparams)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {path}: cannot rebuild the module: {err}") from err
    module.on_load_checkpoint(checkpoint)
    check_fit(module, state, path)
    module.load_state_dict(state, strict=True)
    if stored_weights:
        module.backbone_reference = reference
    return module.eval()
