"""Temporal stages (the ConvLSTM stabilisers, one protocol) and classical landmark filters."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from lightning_fa.backbones.base import require_plain_data
from lightning_fa.temporal.base import State, TemporalStage, detach_state
from lightning_fa.temporal.cells import ConvLSTMCell, ConvLSTMStack
from lightning_fa.temporal.convlstm import ConvLSTM
from lightning_fa.temporal.face_motion import FaceMotionStage
from lightning_fa.temporal.filters import (
    FILTER_NAMES,
    ONE_EURO_MEDIAPIPE,
    ONE_EURO_TUNED,
    ConstantVelocityKalman,
    LandmarkFilter,
    MovingAverage,
    NoFilter,
    OneEuroFilter,
    SavitzkyGolayCausal,
    apply_filter,
    make_filter,
    zero_phase_smooth,
)
from lightning_fa.temporal.gated_blend import GatedBlendConvLSTM
from lightning_fa.temporal.landmarkwise import LandmarkWiseConvLSTM

# The temporal stages a checkpoint may name, by name: a file never chooses code, it picks one of
# these. Add a trusted stage of your own here before loading its checkpoints.
TEMPORAL_STAGES: dict[str, type[TemporalStage]] = {
    "ConvLSTM": ConvLSTM,
    "LandmarkWiseConvLSTM": LandmarkWiseConvLSTM,
    "GatedBlendConvLSTM": GatedBlendConvLSTM,
    "FaceMotionStage": FaceMotionStage,
}

# Until the split into one class per stage, "ConvLSTM" was all three behind these flags, and
# the checkpoints (and stage files) written then record them in the stage's config.
_LEGACY_FLAGS = ("landmark_wise", "gated_blend", "max_blend", "motion_smoothing")


def registered_name(stage: nn.Module) -> str | None:
    """The name `stage`'s class is registered under in `TEMPORAL_STAGES` (None: not there)."""
    for name, cls in TEMPORAL_STAGES.items():
        if type(stage) is cls:
            return name
    return None


def translate_legacy_stage(name: str, config: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """The registered name and constructor arguments of the stage that an old record (name
    "ConvLSTM" with the flags `landmark_wise` / `gated_blend`) built; any other record as is."""
    if name != "ConvLSTM" or not any(flag in config for flag in _LEGACY_FLAGS):
        return name, config
    config = dict(config)
    landmark_wise = config.pop("landmark_wise", False)
    gated_blend = config.pop("gated_blend", False)
    blend = {key: config.pop(key) for key in ("max_blend", "motion_smoothing") if key in config}
    if not landmark_wise:
        if gated_blend:
            raise ValueError("gated_blend=True needs landmark_wise=True")
        return "ConvLSTM", config
    input_proj = config.pop("input_proj", 16)
    if input_proj is not None:
        raise ValueError(
            f"landmark_wise=True has nothing to squeeze: needs input_proj=None, got {input_proj}"
        )
    if gated_blend:
        return "GatedBlendConvLSTM", {**config, **blend}
    return "LandmarkWiseConvLSTM", config


def _allowed_stage(name: Any, source: str | Path) -> type[TemporalStage]:
    stage = TEMPORAL_STAGES.get(name) if isinstance(name, str) else None
    if stage is None:
        raise ValueError(
            f"checkpoint {source} asks for temporal stage {name!r}, which is not an allowed stage "
            f"(allowed: {', '.join(sorted(TEMPORAL_STAGES))}); if you trust it, add its class to "
            "lightning_fa.temporal.TEMPORAL_STAGES in code"
        )
    return stage


def build_temporal_stage(name: Any, config: Any, source: str | Path) -> TemporalStage:
    """The stage `TEMPORAL_STAGES[name]` built from `config`, both read from the file `source`
    (an old "ConvLSTM" record with flags builds the stage those flags chose)."""
    _allowed_stage(name, source)
    if not isinstance(config, Mapping):
        raise ValueError(
            f"checkpoint {source}: temporal_config is {type(config).__name__}, not a mapping"
        )
    require_plain_data(config, f"checkpoint {source}: temporal_config")
    try:
        name, config = translate_legacy_stage(name, config)
        return _allowed_stage(name, source)(**config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {source}: cannot build temporal stage {name}: {err}") from err


__all__ = [
    "FILTER_NAMES",
    "ONE_EURO_MEDIAPIPE",
    "ONE_EURO_TUNED",
    "TEMPORAL_STAGES",
    "ConstantVelocityKalman",
    "ConvLSTM",
    "ConvLSTMCell",
    "ConvLSTMStack",
    "FaceMotionStage",
    "GatedBlendConvLSTM",
    "LandmarkFilter",
    "LandmarkWiseConvLSTM",
    "MovingAverage",
    "NoFilter",
    "OneEuroFilter",
    "SavitzkyGolayCausal",
    "State",
    "TemporalStage",
    "apply_filter",
    "build_temporal_stage",
    "detach_state",
    "make_filter",
    "registered_name",
    "translate_legacy_stage",
    "zero_phase_smooth",
]
