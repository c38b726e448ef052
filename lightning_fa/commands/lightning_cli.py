"""The Lightning commands `fit` / `validate` / `test` / `predict` (LightningCLI): the data's landmark
count linked into the backbone, one-line errors naming the config file or key, `--ckpt_path` that
may set plain values only. `lightning_fa.commands.cli.main` dispatches here.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
import itertools
import re
from argparse import ArgumentError
from pathlib import Path
from typing import Any

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI

from lightning_fa.errors import (
    USER_ERRORS,
    innermost_cause,
    load_yaml_file,
    one_line,
    run_command,
)


class FaceAlignmentCLI(LightningCLI):
    """Links the data's landmark count into the backbone and the model's backbone into the
    unlabelled route's labeller, so configs cannot disagree; a bad config or value becomes one
    ValueError naming the key (see `run_lightning_cli`)."""

    def init_parser(self, **kwargs: Any):
        # Raise parse errors instead of printing the ~75-line usage and exiting: the command
        # reports them in one line.
        return super().init_parser(exit_on_error=False, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        # A name that configs interpolate into output paths (`runs/${run_name}`).
        parser.add_argument("--run_name", type=str, default="finetune")
        parser.link_arguments(
            "data.num_landmarks",
            "model.init_args.backbone.init_args.num_landmarks",
            apply_on="instantiate",
        )

    def parse_arguments(self, parser, args) -> None:
        # Not super(): it warns on every call that `args` and sys.argv are both given, and
        # main() always passes the real command line as `args`.
        try:
            self.config = parser.parse_args(args)
        except ArgumentError as error:
            raise ValueError(describe_parse_error(str(error), parser, args)) from error
        # `--ckpt_path` is data: its hyper-parameters, which LightningCLI merges into the config
        # next, may choose no class, and the Trainer reads it with weights_only=True explicitly
        # (torch's default can be switched off by TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD).
        config = self.config.get(self.config.get("subcommand") or "")
        if config is None:
            return
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and Path(ckpt_path).is_file():
            from lightning_fa.commands.checkpoint_guard import check_ckpt_path

            check_ckpt_path(ckpt_path)
        if "weights_only" in config and config["weights_only"] is None:
            config["weights_only"] = True

    def before_instantiate_classes(self) -> None:
        # jsonargparse drops the empty link target when it re-reads the config resolved by
        # "omegaconf+", and then skips the link ("target not found"): put the slot back.
        config = self.config[self.subcommand] if self.subcommand else self.config
        link_labeller_backbone(config)
        backbone = config.get("model.init_args.backbone")
        if backbone is not None and "num_landmarks" not in backbone.get("init_args", {}):
            backbone["init_args.num_landmarks"] = None
        # A frozen backbone's random init is replaced by its checkpoint: build it without drawing
        # from the global RNG, so the trainable stage's initial weights depend on the seed alone,
        # not on which backbone was built before it (and `lightning-fa fit` starts the embedded
        # stage where the demo does: tests/test_embedded_config.py).
        from jsonargparse import add_instantiator

        from lightning_fa.backbones import Backbone

        add_instantiator(_build_without_rng, Backbone, subclasses=True)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:
            # jsonargparse wraps a constructor's ValueError in pages of Union / Namespace dumps.
            cause = innermost_cause(error)
            if cause is error or not isinstance(cause, USER_ERRORS):
                raise
            group = next((g for g, base in _GROUPS if base in str(error)), None)
            raise ValueError(f"{group}: {one_line(cause)}" if group else one_line(cause)) from error


# What a constructor error's message names (jsonargparse lists the expected base class).
_GROUPS = (("data", ".LightningDataModule'"), ("model", ".LightningModule'"))
# Parse errors about a key that does not exist: (group the key belongs to, the key).
_UNKNOWN_KEY = re.compile(
    r"(?:Group '(?P<group>[\w.]+)' does not accept option |Option |"
    r"[Ss]ubcommand '\w+' does not accept option |unrecognized arguments: --)'?(?P<key>[\w.]+)"
)
_NOISE = re.compile(
    r"Does not validate against any|Subtypes:|Errors:|Given value|Expected a <class 'NoneType'>"
)


def config_files(argv: list[str]) -> list[Path]:
    """The files of every `--config X` / `--config=X` / `-c X` in `argv`."""
    files = [Path(b) for a, b in itertools.pairwise(argv) if a in ("--config", "-c")]
    return files + [Path(a.split("=", 1)[1]) for a in argv if a.startswith("--config=")]


def check_config_files(argv: list[str]) -> None:
    """Name a missing, empty or malformed config file before the parser hides it in its usage."""
    for path in config_files(argv):
        content = load_yaml_file(path, "config file")
        if content is None:
            raise ValueError(f"{path}: the config file is empty (expected keys such as trainer:)")
        if not isinstance(content, dict):
            raise ValueError(
                f"{path}: a config file is a mapping of keys, got a {type(content).__name__}"
            )


def _flat_keys(tree: Any, prefix: str = "") -> list[str]:
    if not isinstance(tree, dict):
        return []
    keys = [f"{prefix}{k}" for k in tree]
    return keys + [k for key, v in tree.items() for k in _flat_keys(v, f"{prefix}{key}.")]


def _parameters(class_path: str) -> list[str]:
    """The constructor parameters of `class_path` (nothing if it cannot be imported)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        parameters = inspect.signature(cls).parameters.values()
    except (ImportError, AttributeError, TypeError, ValueError):
        return []
    return [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _parser_keys(parser) -> list[str]:
    """Every key the subcommand's parser accepts (`trainer.max_epochs`, `model`, ...)."""
    action = getattr(parser, "_subcommands_action", None)
    parsers = list(action._name_parser_map.values()) if action is not None else [parser]
    return [a.dest for p in parsers for a in p._actions if a.dest not in ("help", "config")]


def describe_parse_error(message: str, parser, argv: list[str]) -> str:
    """One line for a jsonargparse error: the key and the problem; for an unknown key, also the
    config file that sets it and the nearest valid key."""
    # Nested `Parser key` lines come only from the init_args of classes given by class_path.
    path = ".init_args.".join(re.findall(r'Parser key "([^"]+)"', message))
    class_paths = re.findall(r"class_path '([^']+)'", message)
    unknown = _UNKNOWN_KEY.search(message)
    if unknown is None:
        lines = [line.strip(" -") for line in message.splitlines()]
        lines = [x for x in lines if x and not _NOISE.search(x) and not x.startswith("Parser key")]
        problem = re.sub(r"Expected a <class '(\w+)'>", r"expected \1", lines[-1] if lines else "")
        given = re.findall(r"Given value: (.*)", message)
        if problem.startswith("expected") and given and len(given[-1]) <= 60:
            problem += f", got {given[-1]!r}"
        return f"{path}: {problem}" if path else problem or message.strip()
    name = unknown.group("key")
    if class_paths:  # an init_args key of the innermost class
        key = f"{path}.init_args.{name}" if path else name
        nearest = difflib.get_close_matches(name, _parameters(class_paths[-1]), n=1)
        suggestion = key.removesuffix(name) + nearest[0] if nearest else None
    else:
        key = f"{unknown.group('group')}.{name}" if unknown.group("group") else name
        nearest = difflib.get_close_matches(key, _parser_keys(parser), n=1)
        suggestion = nearest[0] if nearest else None
    files = config_files(argv)
    setting = [f for f in files if key in _flat_keys(load_yaml_file(f, "config file"))]
    where = f"{setting[-1]}: " if setting else ""
    hint = f"; did you mean {suggestion!r}?" if suggestion else ""
    return f"{where}unknown key {key!r}{hint}"


def link_labeller_backbone(config: Any) -> None:
    """The unlabelled route's pseudo labels come from the backbone being stabilised: the data's
    labeller gets the model's backbone config (with the data's landmark count) and checkpoint,
    replacing any of its own (a saved config.yaml holds the copy this made).

    By hand, not `link_arguments(apply_on="parse")`: jsonargparse drops a parse-time link's value
    when it re-reads the config resolved by "omegaconf+", and an instantiation link cannot run
    from the model to the data, which is built first (its landmark count goes to the model).
    """
    labeller = config.get("data.init_args.labeller")
    if labeller is None or "init_args" not in labeller:
        return
    backbone = copy.deepcopy(config.get("model.init_args.backbone"))
    if backbone is not None:
        backbone["init_args.num_landmarks"] = config.get("data.init_args.num_landmarks")
    labeller["init_args.backbone"] = backbone
    labeller["init_args.backbone_checkpoint"] = config.get("model.init_args.backbone_checkpoint")


def run_lightning_cli(argv: list[str]) -> None:
    """`fit` / `validate` / `test` / `predict`. A bad config file, key or value ends the command
    with one line, `lightning-fa <command>: <file or key>: <problem>`, and exit status 2
    (SystemExit); `--debug` shows the full traceback instead."""
    code = run_command(f"lightning-fa {argv[0]}", _lightning_cli, argv)
    if code:
        raise SystemExit(code)


def _build_without_rng(class_type: type, *args: Any, **kwargs: Any) -> Any:
    import torch

    with torch.random.fork_rng(devices=[]):
        return class_type(*args, **kwargs)


def _lightning_cli(argv: list[str]) -> None:
    build_cli(argv)


def build_cli(argv: list[str], run: bool = True) -> FaceAlignmentCLI:
    """The Lightning CLI of `argv`; with ``run=False`` (`argv` without a subcommand) it only builds
    the model, data and trainer of the config (the demo fine-tunes through it)."""
    check_config_files(argv)
    # "omegaconf+" resolves `${...}` once, on the merged config, so later configs and command-line
    # overrides (`--run_name`, a swept `pdc_threshold`) reach the keys that interpolate them; plain
    # "omegaconf" resolves each file on its own. Absolute paths (`${trainer.x}`) are kept working.
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    return FaceAlignmentCLI(
        args=argv,
        run=run,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf+"},
        # A rerun into the same directory must not crash on the config saved by the first run.
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
