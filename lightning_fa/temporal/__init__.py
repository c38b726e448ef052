"""Temporal stage: the ConvLSTM stabiliser and classical landmark filters."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from lightning_fa.backbones.base import require_plain_data
from lightning_fa.temporal.convlstm import ConvLSTM, ConvLSTMCell, State, detach_state
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

# The temporal stages a checkpoint may name, by name: a file never chooses code, it picks one of
# these. Add a trusted stage of your own here before loading its checkpoints.
TEMPORAL_STAGES: dict[str, type[nn.Module]] = {"ConvLSTM": ConvLSTM}


def build_temporal_stage(name: Any, config: Any, source: str | Path) -> nn.Module:
    """The stage `TEMPORAL_STAGES[name]` built from `config`, both read from the file `source`."""
    stage = TEMPORAL_STAGES.get(name) if isinstance(name, str) else None
    if stage is None:
        raise ValueError(
            f"checkpoint {source} asks for temporal stage {name!r}, which is not an allowed stage "
            f"(allowed: {', '.join(sorted(TEMPORAL_STAGES))}); if you trust it, add its class to "
            "lightning_fa.temporal.TEMPORAL_STAGES in code"
        )
    if not isinstance(config, Mapping):
        raise ValueError(
            f"checkpoint {source}: temporal_config is {type(config).__name__}, not a mapping"
        )
    require_plain_data(config, f"checkpoint {source}: temporal_config")
    try:
        return stage(**config)
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
    "LandmarkFilter",
    "MovingAverage",
    "NoFilter",
    "OneEuroFilter",
    "SavitzkyGolayCausal",
    "State",
    "apply_filter",
    "build_temporal_stage",
    "detach_state",
    "make_filter",
    "zero_phase_smooth",
]
