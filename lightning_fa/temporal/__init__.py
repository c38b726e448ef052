"""Temporal stage: the ConvLSTM stabiliser and classical landmark filters."""

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

__all__ = [
    "FILTER_NAMES",
    "ONE_EURO_MEDIAPIPE",
    "ONE_EURO_TUNED",
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
    "detach_state",
    "make_filter",
    "zero_phase_smooth",
]
