"""The temporal state of many streams: flat tensor lists, and the one gather / scatter of their
rows around a batched step.

A stage's state is a tuple of groups of batch-first tensors (`lightning_fa.temporal.State`).
Exporters, the batched streamer and the tracker carry it flat (tensor k of every stream in one
list position) without knowing its layout; one stream's row is batch 1 in every tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_fa.temporal import State


def flatten_state(state: State) -> list[Tensor]:
    """The state's tensors in order, group after group."""
    return [tensor for layer in state for tensor in layer]


def unflatten_state(flat: Sequence[Tensor], sizes: Sequence[int]) -> State:
    """Regroup flat tensors into the state's groups of ``sizes`` tensors each."""
    tensors = iter(flat)
    return tuple(tuple(islice(tensors, size)) for size in sizes)


def state_sizes(state: State) -> list[int]:
    """How many tensors each group of ``state`` holds (what `unflatten_state` needs)."""
    return [len(group) for group in state]


def _concatenate(parts: list[Any]) -> Any:
    # Torch tensors for the PyTorch step, numpy arrays for onnxruntime's.
    return torch.cat(parts) if isinstance(parts[0], Tensor) else np.concatenate(parts)


def gather_rows(rows: Sequence[Sequence[Any]]) -> list[Any]:
    """Flat states of single streams (batch 1 each) -> one flat state of them all, stream i in
    batch row i."""
    return [_concatenate([row[k] for row in rows]) for k in range(len(rows[0]))]


def scatter_rows(flat: Sequence[Any], count: int) -> list[list[Any]]:
    """A flat state of ``count`` streams -> each stream's own flat state (batch 1, views)."""
    return [[tensor[i : i + 1] for tensor in flat] for i in range(count)]
