"""`lightning-fa`: LightningCLI for fit / validate / test / predict, plus the project's tools.

    lightning-fa fit --config experiments/base.yaml --config experiments/backbone/hrnet.yaml ...
    lightning-fa predict CKPT --data DATA.yaml      (no training config: rebuilt from the checkpoint)
    lightning-fa <tool> --help                      (report, track, evaluate-video, bench, ...)

Configs are parsed with OmegaConf, so experiment YAMLs can interpolate (`${...}`).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI

from lightning_fa.errors import DEBUG_FLAG, run_command

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

# name -> ("module:function(argv) -> int", one-line description); imported only when called, so
# `--help` stays fast.
TOOLS: dict[str, tuple[str, str]] = {
    "track": ("lightning_fa.tracking:main", "stable landmarks on a video file or camera"),
    "evaluate-video": (
        "lightning_fa.video_eval:main",
        "stability of raw, filtered and fine-tuned tracks on unlabelled videos",
    ),
    "export": ("lightning_fa.export:main", "export a checkpoint's streaming step to ONNX"),
    "predict-ckpt": (
        "lightning_fa.predict:main",
        "predictions from a checkpoint alone (`predict CKPT --data DATA.yaml`)",
    ),
    "report": ("lightning_fa.report:main", "tables, figures and overlay video of a run folder"),
    "demo": ("lightning_fa.pipeline:main", "the embedded end-to-end benchmark (`make finetune`)"),
    "bench": ("lightning_fa.bench:main", "speed and memory figures side by side, as JSON"),
    "sweep-local": (
        "lightning_fa.sweep:main",
        "run a W&B sweep grid here, one point after another",
    ),
    "unlabelled-experiment": (
        "lightning_fa.unlabelled_experiment:main",
        "leave-one-out training on unlabelled real clips",
    ),
}
LIGHTNING_DESCRIPTIONS = {
    "fit": "fine-tune through the Lightning CLI (`--config ...`)",
    "validate": "validate a checkpoint through the Lightning CLI",
    "test": "test a checkpoint through the Lightning CLI",
    "predict": "predict through the Lightning CLI (or `predict CKPT --data DATA.yaml`)",
}


class FaceAlignmentCLI(LightningCLI):
    """Links the data's landmark count into the backbone, so configs cannot disagree."""

    def add_arguments_to_parser(self, parser) -> None:
        # A name that configs interpolate into output paths (`runs/${run_name}`).
        parser.add_argument("--run_name", type=str, default="finetune")
        parser.link_arguments(
            "data.num_landmarks",
            "model.init_args.backbone.init_args.num_landmarks",
            apply_on="instantiate",
        )

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        # `--ckpt_path` is data: its hyper-parameters, which LightningCLI merges into the config
        # next, may choose no class, and the Trainer reads it with weights_only=True explicitly
        # (torch's default can be switched off by TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD).
        config = self.config.get(self.config.get("subcommand") or "")
        if config is None:
            return
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and Path(ckpt_path).is_file():
            from lightning_fa.checkpoint_guard import check_ckpt_path

            check_ckpt_path(ckpt_path)
        if "weights_only" in config and config["weights_only"] is None:
            config["weights_only"] = True

    def before_instantiate_classes(self) -> None:
        # jsonargparse drops the empty link target when it re-reads the config resolved by
        # "omegaconf+", and then skips the link ("target not found"): put the slot back.
        config = self.config[self.subcommand] if self.subcommand else self.config
        backbone = config.get("model.init_args.backbone")
        if backbone is not None and "num_landmarks" not in backbone.get("init_args", {}):
            backbone["init_args.num_landmarks"] = None


def run_lightning_cli(argv: list[str]) -> None:
    # "omegaconf+" resolves `${...}` once, on the merged config, so later configs and command-line
    # overrides (`--run_name`, a swept `pdc_threshold`) reach the keys that interpolate them; plain
    # "omegaconf" resolves each file on its own. Absolute paths (`${trainer.x}`) are kept working.
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    FaceAlignmentCLI(
        args=argv,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf+"},
        # A rerun into the same directory must not crash on the config saved by the first run.
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def _is_checkpoint_predict(argv: list[str]) -> bool:
    """`predict CKPT ...` without a model config is the checkpoint-only route."""
    return (
        len(argv) >= 2
        and argv[0] == "predict"
        and not argv[1].startswith("-")
        and not any(a.startswith(("--config", "--model")) for a in argv)
    )


def usage() -> str:
    rows = {**LIGHTNING_DESCRIPTIONS, **{name: text for name, (_, text) in TOOLS.items()}}
    rows.pop("predict-ckpt")
    width = max(map(len, rows))
    lines = [f"  {name:<{width}}  {text}" for name, text in rows.items()]
    return "\n".join(
        [__doc__.strip(), "", "commands:", *lines, "", f"Add {DEBUG_FLAG} for full tracebacks."]
    )


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if _is_checkpoint_predict(argv):
        argv = ["predict-ckpt", *argv[1:]]
    if argv[0] in TOOLS:
        target, _ = TOOLS[argv[0]]
        module_name, function_name = target.split(":")
        prog = "lightning-fa " + argv[0].removesuffix("-ckpt")
        body = getattr(importlib.import_module(module_name), function_name)
        return run_command(prog, body, argv[1:])
    if argv[0] in LIGHTNING_COMMANDS:
        run_lightning_cli(argv)
        return 0
    print(f"lightning-fa: unknown command {argv[0]!r}; try --help", file=sys.stderr)
    return 2
