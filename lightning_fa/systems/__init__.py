"""LightningModules: backbone pretraining and the temporal fine-tuning.

Imported lazily, so that using one system does not require the other's dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BackbonePretrainModule": "lightning_fa.systems.pretrain",
    "StableAlignmentModule": "lightning_fa.systems.finetune",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
