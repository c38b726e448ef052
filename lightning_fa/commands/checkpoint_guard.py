"""What `--ckpt_path` may change in `lightning-fa fit / validate / test / predict`: data, no code.

LightningCLI merges the `hyper_parameters` of the checkpoint given with `--ckpt_path` into the
config before anything is built, class paths included: a file could replace the backbone by any
module class (with the arguments it likes) or the model by any class it names. Here a checkpoint
may only set plain values; the modules come from the trusted config. The checkpoint's own
top-level `_class_path` (which LightningCLI records) must name a LightningModule that is already
imported, the rule Lightning applies in `load_from_checkpoint`: nothing is imported because a file
says so.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lightning_fa.backbones import read_checkpoint

# Constructor arguments of this project's systems that are modules: saved hyper-parameters leave
# them out (`save_hyperparameters(ignore=...)`), so a file that sets them was edited.
MODULE_ARGUMENTS = ("backbone", "temporal", "loss")
CLASS_KEYS = ("class_path", "_class_path", "_instantiator")


def _imported_lightning_module(class_path: Any) -> type | None:
    if not isinstance(class_path, str):
        return None
    module_name, _, name = class_path.rpartition(".")
    found = getattr(sys.modules.get(module_name), name, None)
    return found if isinstance(found, type) and issubclass(found, pl.LightningModule) else None


def _nested_class_key(value: Any, where: str) -> str | None:
    """The first `where.key` below `value` that names a class, else None."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key in CLASS_KEYS:
                return f"{where}.{key}"
            found = _nested_class_key(item, f"{where}.{key}")
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _nested_class_key(item, f"{where}[{i}]")
            if found:
                return found
    return None


def check_ckpt_path(path: str | Path) -> None:
    """ValueError naming `path` unless the checkpoint is plain data (torch.load weights_only=True)
    whose hyper-parameters choose no class; see the module docstring."""
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"checkpoint {path} holds a {type(checkpoint).__name__}, not a Lightning checkpoint"
        )
    hparams = checkpoint.get("hyper_parameters", {})
    if not isinstance(hparams, Mapping):
        raise ValueError(f"checkpoint {path}: hyper_parameters is not a mapping")
    for key in MODULE_ARGUMENTS:
        if key in hparams:
            raise ValueError(
                f"checkpoint {path}: its hyper_parameters set {key!r}, which the config builds; a "
                "checkpoint may not choose modules (a file saved by this project never has it)"
            )
    class_path = hparams.get("_class_path")
    if class_path is not None and _imported_lightning_module(class_path) is None:
        raise ValueError(
            f"checkpoint {path} asks for the model class {class_path!r}, which is not an imported "
            "LightningModule; import the module that defines it first if you trust the file"
        )
    for key, value in hparams.items():
        found = _nested_class_key(value, f"hyper_parameters.{key}")
        if found:
            raise ValueError(
                f"checkpoint {path}: {found} names a class; a checkpoint may set plain values "
                "only, the classes come from the config"
            )
