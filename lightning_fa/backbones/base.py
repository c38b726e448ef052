"""The backbone protocol, the name registry and safe checkpoint loading.

A backbone maps images (B, 3, H, W) to heatmaps (B, L, H / stride, W / stride). It owns its input
normalisation (`preprocess`), so datasets can deliver uint8 RGB and stay model-agnostic.

Files are data, never code: checkpoints are read with `torch.load(weights_only=True)`, and a
backbone spec read from a file is built only from the classes allowed in code
(`allow_checkpoint_class`, `register_backbone`), looked up by their class-path string.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import pickle
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_fa.checks import check_ints

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MAX_LISTED_KEYS = 10


class Backbone(nn.Module):
    """Base class of heatmap backbones.

    Attributes:
        num_landmarks: heatmap channels L.
        stride: input pixels per heatmap pixel.
        input_size: the (H, W) the model was designed / trained for.
        input_mean, input_std: per channel, in [0, 1] units, in `channel_order`.
        channel_order: "RGB" or "BGR", what `forward` expects.
    """

    spec: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Record how the most-derived class was built, so a fine-tuned checkpoint can rebuild its
        # backbone without the training config (`StableAlignmentModule.from_checkpoint`).
        super().__init_subclass__(**kwargs)
        original = cls.__dict__.get("__init__")
        if original is None:
            return
        signature = inspect.signature(original)

        @functools.wraps(original)
        def recording_init(self: Backbone, *args: Any, **kw: Any) -> None:
            original(self, *args, **kw)
            if type(self) is cls:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                self.spec = {"class_path": f"{cls.__module__}.{cls.__qualname__}"}
                try:
                    self.spec["init_args"] = {
                        k: _plain(v) for k, v in bound.arguments.items() if k != "self"
                    }
                except TypeError:
                    pass  # built from objects (a wrapped module, a callable): not rebuildable

        cls.__init__ = recording_init

    def __init__(
        self,
        num_landmarks: int,
        stride: int,
        input_size: tuple[int, int] = (256, 256),
        input_mean: tuple[float, float, float] = IMAGENET_MEAN,
        input_std: tuple[float, float, float] = IMAGENET_STD,
        channel_order: str = "RGB",
    ) -> None:
        super().__init__()
        check_ints(need="an integer >= 1", num_landmarks=num_landmarks, stride=stride)
        if channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
        if len(input_mean) != 3 or len(input_std) != 3:
            raise ValueError(
                f"input_mean and input_std need 3 values, got {input_mean!r} and {input_std!r}"
            )
        if any(s <= 0 for s in input_std):
            raise ValueError(f"input_std must be positive, got {input_std!r}")
        self.num_landmarks = int(num_landmarks)
        self.stride = int(stride)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.input_mean = tuple(float(m) for m in input_mean)
        self.input_std = tuple(float(s) for s in input_std)
        self.channel_order = channel_order
        # Not persistent: official checkpoints carry no normalisation entries.
        self.register_buffer(
            "pixel_mean", torch.tensor(self.input_mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(self.input_std).view(1, 3, 1, 1), persistent=False
        )

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """(h, w) of the heatmaps for an input of `input_size`."""
        return self.input_size[0] // self.stride, self.input_size[1] // self.stride

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 or float-in-[0, 1] RGB (B, 3, H, W) -> normalised input, on the images' device."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) RGB, got shape {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            x = images.float() / 255.0
        elif images.is_floating_point():
            x = images
        else:
            raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {images.dtype}")
        if self.channel_order == "BGR":
            x = x.flip(1)
        mean = self.pixel_mean.to(device=x.device, dtype=x.dtype)
        std = self.pixel_std.to(device=x.device, dtype=x.dtype)
        return (x - mean) / std

    def forward_all(self, x: Tensor) -> list[Tensor]:
        """Heatmaps of every stack / stage, last one final (for intermediate supervision)."""
        return [self(x)]


def init_heatmap_head(conv: nn.Conv2d) -> None:
    """Start a heatmap-predicting conv near zero: the first loss is then that of the targets
    alone instead of being dominated by large random maps."""
    nn.init.normal_(conv.weight, std=1e-3)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _plain(value: Any) -> Any:
    """`value` as plain data (dataclass configs as dicts, paths as strings), since checkpoints
    are read with weights_only=True; TypeError for anything else (modules, callables)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    raise TypeError(f"not plain data: {type(value).__name__}")


def require_plain_data(value: Any, where: str) -> None:
    """ValueError unless `value` is plain data: None, bool, int, float, str, and lists, tuples
    and str-keyed dicts of those. For constructor arguments read from a file."""
    if value is None or isinstance(value, bool | int | float | str):
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            require_plain_data(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has a key that is not a string: {key!r}")
            require_plain_data(item, f"{where}.{key}")
        return
    raise ValueError(f"{where} is {type(value).__name__}, not plain data")


def _class_path(cls: type) -> str:
    # The form `Backbone` records in `spec["class_path"]`.
    return f"{cls.__module__}.{cls.__qualname__}"


# Backbone classes that a spec read from a file may name, by class-path string. Filled in code
# only: by `register_backbone` and `allow_checkpoint_class`.
_CHECKPOINT_CLASSES: dict[str, type[Backbone]] = {}


def allow_checkpoint_class(cls: type[Backbone]) -> type[Backbone]:
    """Let checkpoints rebuild backbones of class `cls` (usable as a class decorator).

    `StableAlignmentModule.from_checkpoint` builds the backbone a checkpoint names only if its
    class was allowed in code: every class given to `register_backbone` (and the class a
    registered factory is annotated to return) is; call this for any other class you trust.
    `TorchScriptBackbone` and `ModuleBackbone` are not allowed by default: the wrapped module of
    a `ModuleBackbone` is no constructor argument, and a TorchScript path stored in a checkpoint
    would make the checkpoint load another file; allow `TorchScriptBackbone` yourself if you
    trust the checkpoints you load.
    """
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):
        raise TypeError(f"allow_checkpoint_class needs a Backbone subclass, got {cls!r}")
    _CHECKPOINT_CLASSES[_class_path(cls)] = cls
    return cls


def build_from_spec(spec: Mapping[str, Any], source: str | Path | None = None) -> Backbone:
    """Rebuild a backbone from its recorded `spec` (class path + constructor arguments).

    The class is looked up by its class-path string among the allowed classes
    (`allow_checkpoint_class`): nothing named in the spec is imported or called before that.
    `source` is the file the spec was read from, named in every error.
    """
    where = f"checkpoint {source}" if source is not None else "backbone spec"
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: the backbone spec is {type(spec).__name__}, not a mapping")
    class_path = spec.get("class_path")
    if not isinstance(class_path, str):
        raise ValueError(f"{where}: the backbone spec has no class_path string")
    _load_builtin_backbones()
    cls = _CHECKPOINT_CLASSES.get(class_path)
    if cls is None:
        raise ValueError(
            f"{where} asks to build {class_path!r}, which is not an allowed backbone class; "
            "only registered backbones are built from a file. If you trust this checkpoint, allow "
            "the class in code first: lightning_fa.backbones.allow_checkpoint_class(TheClass) (or "
            "register it with register_backbone)"
        )
    init_args = spec.get("init_args")
    if not isinstance(init_args, dict):
        raise ValueError(f"{where}: the init_args of {class_path} are not a mapping")
    require_plain_data(init_args, f"{where}: init_args of {class_path}")
    try:
        return cls(**init_args)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: cannot build {class_path} from its init_args: {err}") from err


# --------------------------------------------------------------------------- registry

BackboneFactory = Callable[..., Backbone]
_REGISTRY: dict[str, BackboneFactory] = {}


def _built_class(factory: BackboneFactory) -> type[Backbone] | None:
    """The Backbone class `factory` is (or is annotated to return), else None."""
    if isinstance(factory, type):
        return factory if issubclass(factory, Backbone) else None
    try:
        returned = typing.get_type_hints(factory).get("return")
    except Exception:  # unresolvable annotations: the user allows the class explicitly
        return None
    return returned if isinstance(returned, type) and issubclass(returned, Backbone) else None


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: make a Backbone class (or factory `f(num_landmarks, **kw)`) creatable by name.

    The class (for a factory: its annotated return class) may also be rebuilt from checkpoints
    (`allow_checkpoint_class`).
    """

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"backbone name {name!r} is already registered")
        _REGISTRY[name] = factory
        built = _built_class(factory)
        if built is not None:
            allow_checkpoint_class(built)
        return factory

    return decorate


def _load_builtin_backbones() -> None:
    # The package __init__ imports every built-in module, which registers its names.
    importlib.import_module("lightning_fa.backbones")


def list_backbones() -> list[str]:
    """Names accepted by `create_backbone`."""
    _load_builtin_backbones()
    return sorted(_REGISTRY)


def _resolve_factory(name: str) -> BackboneFactory:
    _load_builtin_backbones()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if "." in name:  # a class path such as "my_pkg.models.MyNet"
        module_name, _, attr = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import backbone class path {name!r}: {err}") from err
    raise ValueError(
        f"unknown backbone {name!r}; known names: {', '.join(sorted(_REGISTRY))} "
        "(or give a class path such as 'package.module.Class')"
    )


def create_backbone(
    name: str, num_landmarks: int, checkpoint: str | Path | None = None, **kwargs: Any
) -> Backbone:
    """Build a backbone by registered name (or class path); load `checkpoint` strictly if given."""
    try:
        check_ints(need="an integer >= 1", num_landmarks=num_landmarks)
    except ValueError as error:
        raise ValueError(f"create_backbone({name!r}): {error}") from None
    model = _resolve_factory(name)(num_landmarks=num_landmarks, **kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


# --------------------------------------------------------------------------- checkpoints


def _unpickling_reason(err: Exception) -> str:
    """The informative line of torch's long weights_only error (e.g. the blocked GLOBAL)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "Unsupported" in line or "invalid load key" in line:
            return line
    return lines[-1] if lines else type(err).__name__


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(path, map_location, weights_only=True)` with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} is not a plain tensor checkpoint (or it is corrupt): torch.load(weights_only="
            f"True) refused it: {_unpickling_reason(err)}. weights_only matters because a full "
            "unpickle can run arbitrary code stored in the file; re-save the weights in a trusted "
            "environment with torch.save(model.state_dict(), path)."
        ) from err
    # A file torch cannot parse fails with whatever the parser hit (text: IndexError, KeyError
    # "101", struct.error; truncated: EOFError, RuntimeError): all mean the same to the user.
    except Exception as err:
        detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise ValueError(
            f"cannot read checkpoint {path}: corrupt or not a torch file ({detail})"
        ) from err


def _extract_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # {"state_dict": ...} wrapping, Lightning checkpoints
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(
            f"checkpoint {path} holds {type(obj).__name__}, expected a non-empty state_dict "
            "(a mapping of parameter names to tensors) or {'state_dict': ...}"
        )
    require_tensors(obj, path)
    return dict(obj)


def require_tensors(state: Mapping[Any, Any], path: str | Path) -> None:
    """ValueError naming `path` and the entries of `state` that are not tensors."""
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise ValueError(
            f"checkpoint {path}: entries that are not tensors: {_truncate(map(str, not_tensors))}"
        )


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _match_prefixes(state: dict[str, Tensor], model_keys: set[str]) -> dict[str, Tensor]:
    """Pick the reading of the keys that matches the model best: as is, without DataParallel's
    `module.`, or the `backbone.` part of a Lightning system of this project."""
    unwrapped = {k.removeprefix("module."): v for k, v in state.items()}
    candidates = [state, unwrapped]
    if any(k.startswith("backbone.") for k in unwrapped):
        backbone_part = _strip(unwrapped, "backbone.")
        candidates.append({k.removeprefix("module."): v for k, v in backbone_part.items()})
    return max(candidates, key=lambda c: len(model_keys & c.keys()))


def _truncate(items: Any) -> str:
    items = list(items)
    shown = ", ".join(items[:_MAX_LISTED_KEYS])
    more = len(items) - _MAX_LISTED_KEYS
    return f"{shown}, ... and {more} more" if more > 0 else shown


def load_checkpoint(
    module: nn.Module, path: str | Path, strict: bool = True, prefix: str | None = None
) -> tuple[list[str], list[str]]:
    """Load a plain-tensor checkpoint into `module`; returns (missing, unexpected) keys.

    Accepts a state_dict, `{"state_dict": ...}` (also this project's Lightning checkpoints: the
    `backbone.` entries are taken) and `module.` prefixes. `prefix` selects and strips an explicit
    prefix instead. Wrong shapes always raise; missing / unexpected keys raise when `strict`.
    """
    path = Path(path)
    state = _extract_state_dict(read_checkpoint(path), path)
    model_keys = set(module.state_dict())
    if prefix is not None:
        selected = _strip(state, prefix)
        if not selected:
            raise ValueError(
                f"checkpoint {path} has no keys starting with prefix {prefix!r}; "
                f"its keys start with: {_truncate(sorted(state))}"
            )
        state = selected
    else:
        state = _match_prefixes(state, model_keys)

    missing, unexpected = check_fit(module, state, path, strict)
    require_finite({k: v for k, v in state.items() if k in model_keys}, path)
    module.load_state_dict(state, strict=False)
    return missing, unexpected


def check_fit(
    module: nn.Module, state: Mapping[str, Tensor], path: str | Path, strict: bool = True
) -> tuple[list[str], list[str]]:
    """(missing, unexpected) keys of `state` for `module`; a ValueError naming `path` on wrong
    shapes, and on missing / unexpected keys when `strict`."""
    target = module.state_dict()
    missing = sorted(target.keys() - state.keys())
    unexpected = sorted(state.keys() - target.keys())
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(target.keys() & state.keys())
        if state[k].shape != target[k].shape
    ]
    if wrong_shape or (strict and (missing or unexpected)):
        problems = []
        if wrong_shape:
            problems.append(f"wrong shapes ({len(wrong_shape)}): {_truncate(wrong_shape)}")
        if strict and missing:
            problems.append(f"missing ({len(missing)}): {_truncate(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected ({len(unexpected)}): {_truncate(unexpected)}")
        raise ValueError(
            f"checkpoint {path} does not fit {type(module).__name__}: " + "; ".join(problems)
        )
    return missing, unexpected


def require_finite(state: Mapping[str, Tensor], path: str | Path) -> None:
    """ValueError naming `path` and the first keys whose tensors hold NaN or inf: such weights
    would only fail later, as NaN landmarks or an error deep inside the first frame."""
    bad = [
        key
        for key, value in state.items()
        if (value.is_floating_point() or value.is_complex()) and not torch.isfinite(value).all()
    ]
    if bad:
        raise ValueError(
            f"checkpoint {path} has non-finite (NaN or inf) weights in {len(bad)} "
            f"tensor(s): {_truncate(bad)}"
        )
