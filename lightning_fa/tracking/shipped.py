"""The trained stabiliser that ships with the package: `lightning_fa/resources/dlib-stage.pt`.

`lightning-fa track`, `evaluate-video` and `lightning_fa.Tracker()` use it whenever the dlib
backbone runs without a checkpoint. It holds the temporal stage alone (a few KB: dlib has no
weights of its own), as plain tensors and plain data: the stage's registered name and constructor
arguments, the backbone's constructor spec, the decoder settings, a format version, the SHA-256
of the resolved training config and of the dlib model it was trained for. It is read with
`torch.load(weights_only=True)` and the stage is built only through the allow-listed registry
(`lightning_fa.temporal.TEMPORAL_STAGES`).

Regenerate it with `make ship-weights` (`lightning_fa.commands.ship_weights`); the configs and
clips it trains on are named here, beside the file they produce.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lightning_fa.outputs import file_sha256

FORMAT_VERSION = 1
SHIPPED_DLIB_STAGE = Path(__file__).parents[1] / "resources" / "dlib-stage.pt"
# The module settings that turn the stage's maps into coordinates; everything else in
# StableAlignmentModule only matters for training.
DECODER_SETTINGS = ("decoder", "pdc_threshold", "relative_threshold")


def default_stage(checkpoint: str | Path | None, backbone: str) -> Path | None:
    """The shipped stage file that stands in for a missing checkpoint: the dlib backbone's."""
    return SHIPPED_DLIB_STAGE if checkpoint is None and backbone == "dlib" else None


def _dlib_model(module: Any) -> Path:
    """The 68-point model file the module's dlib backbone runs."""
    return Path(module.backbone.detector.predictor_path)


def _registered_name(stage: torch.nn.Module) -> str:
    from lightning_fa.temporal import registered_name

    name = registered_name(stage)
    if name is not None:
        return name
    raise ValueError(
        f"temporal stage {type(stage).__name__} is not in lightning_fa.temporal.TEMPORAL_STAGES, "
        "so a stage file could not be loaded back; register it first"
    )


def stage_file_contents(module: Any, training: Mapping[str, Any]) -> dict[str, Any]:
    """The plain contents of a stage file for a fine-tuned `StableAlignmentModule` on the dlib
    backbone; `training` (plain data) says how it was trained."""
    reference = dict(module.backbone_reference)
    if reference.get("init_args", {}).get("predictor_path") is not None:
        raise ValueError(
            "the stage was fine-tuned on a dlib model given by predictor_path; a shipped stage "
            "must use the installed default model"
        )
    model = _dlib_model(module)
    return {
        "format_version": FORMAT_VERSION,
        "temporal_stage": _registered_name(module.temporal),
        "temporal_config": dict(module.temporal.config),
        "state_dict": {
            k: v.detach().cpu().clone() for k, v in module.temporal.state_dict().items()
        },
        "backbone_reference": reference,
        "decoder": {k: module.hparams[k] for k in DECODER_SETTINGS},
        "dlib_model": {
            "file": model.name,
            "bytes": model.stat().st_size,
            "sha256": file_sha256(model),
        },
        "training": dict(training),
    }


def write_stage_file(checkpoint: Path, out: Path, training: Mapping[str, Any]) -> dict[str, Any]:
    """Extract the stage of a fine-tuned checkpoint (`fit`'s last.ckpt) into `out`."""
    from lightning_fa.outputs import atomic_write
    from lightning_fa.systems.finetune import StableAlignmentModule

    module = StableAlignmentModule.from_checkpoint(checkpoint)
    contents = stage_file_contents(module, training)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, mode="wb") as handle:
        torch.save(contents, handle)
    return contents


def read_stage_file(path: str | Path) -> dict[str, Any]:
    """The checked contents of a stage file (weights only); ValueError naming `path` otherwise."""
    from lightning_fa.backbones.base import (
        read_checkpoint,
        require_finite,
        require_plain_data,
        require_tensors,
    )

    path = Path(path)
    contents = read_checkpoint(path)
    if not isinstance(contents, Mapping) or "format_version" not in contents:
        raise ValueError(f"{path} is not a lightning_fa stage file (no format_version)")
    if contents["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{path} is a stage file of format {contents['format_version']!r}; this version of "
            f"lightning_fa reads format {FORMAT_VERSION}"
        )
    state = contents.get("state_dict")
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: state_dict is not a mapping")
    require_tensors(state, path)
    require_finite(state, path)
    for key in ("temporal_config", "backbone_reference", "decoder", "dlib_model", "training"):
        if not isinstance(contents.get(key), Mapping):
            raise ValueError(f"{path}: {key} is missing or not a mapping")
        require_plain_data(dict(contents[key]), f"{path}: {key}")
    return dict(contents)


def load_stage_file(path: str | Path = SHIPPED_DLIB_STAGE) -> Any:
    """A `StableAlignmentModule` (eval mode): the dlib backbone under the stage stored in `path`."""
    from lightning_fa.backbones import build_from_spec
    from lightning_fa.backbones.base import check_fit
    from lightning_fa.systems.finetune import StableAlignmentModule
    from lightning_fa.temporal import build_temporal_stage

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"the shipped dlib stage {path} is missing (an install without package data?); "
            "reinstall lightning-fa, or pass a fine-tuned --checkpoint"
        )
    contents = read_stage_file(path)
    stage = build_temporal_stage(contents["temporal_stage"], contents["temporal_config"], path)
    check_fit(stage, contents["state_dict"], path)
    stage.load_state_dict(contents["state_dict"], strict=True)
    backbone = build_from_spec(contents["backbone_reference"], source=path)
    try:
        module = StableAlignmentModule(backbone=backbone, temporal=stage, **contents["decoder"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: cannot rebuild the module: {err}") from err
    recorded, model = contents["dlib_model"], _dlib_model(module)
    # Comparing sizes is free; hashing the 100 MB model on every start is not.
    if model.name != recorded.get("file") or model.stat().st_size != recorded.get("bytes"):
        warnings.warn(
            f"{path} was trained for the dlib model {recorded.get('file')} "
            f"(sha256 {recorded.get('sha256')}), but {model} differs; its smoothing may not fit",
            stacklevel=2,
        )
    return module.eval()


# --------------------------------------------------------------------------- how it is trained

# The unlabelled route the stage is trained with (`lightning_fa.commands.ship_weights`;
# `lightning-fa unlabelled-experiment` uses the same configs and clips), run from the repository
# root: the face-level motion stage (unlabelled.yaml alone trains the landmark-wise one).
UNLABELLED_CONFIGS = (
    "experiments/base.yaml",
    "experiments/unlabelled.yaml",
    "experiments/unlabelled-face-motion.yaml",
)
VIDEO_DIR = Path("../shared/data/videos")
CLIP_NAMES = ("WDA_KatieHill_000.mp4", "liveportrait_d0.mp4", "liveportrait_d3.mp4")
