"""Temporal stage: the ConvLSTM stabiliser and classical landmark filters."""

from lightning_fa.temporal.convlstm import ConvLSTM, ConvLSTMCell, State, detach_state

__all__ = ["ConvLSTM", "ConvLSTMCell", "State", "detach_state"]
