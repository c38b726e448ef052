"""`lightning-fa`: LightningCLI for fit / validate / test / predict, plus the project's tools.

    lightning-fa fit --config experiments/base.yaml --config experiments/backbone/hrnet.yaml ...
    lightning-fa predict CKPT --data DATA.yaml      (no training config: rebuilt from the checkpoint)
    lightning-fa <tool> --help                      (report, track, evaluate-video, bench, ...)

Configs are parsed with OmegaConf, so experiment YAMLs can interpolate (`${...}`).
"""

from __future__ import annotations

import importlib
import sys

from lightning_fa.errors import DEBUG_FLAG, run_command

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

# name -> ("module:function(argv) -> int", one-line description); imported only when called, so
# `--help` stays fast.
TOOLS: dict[str, tuple[str, str]] = {
    "track": ("lightning_fa.commands.track:main", "stable landmarks on a video file or camera"),
    "evaluate-video": (
        "lightning_fa.commands.evaluate_video:main",
        "stability of raw, filtered and fine-tuned tracks on unlabelled videos",
    ),
    "export": ("lightning_fa.commands.export:main", "export a checkpoint's streaming step to ONNX"),
    "predict-ckpt": (
        "lightning_fa.commands.predict:main",
        "predictions from a checkpoint alone (`predict CKPT --data DATA.yaml`)",
    ),
    "report": (
        "lightning_fa.commands.report:main",
        "tables, figures and overlay video of a run folder",
    ),
    "demo": (
        "lightning_fa.commands.embedded.run:main",
        "the embedded end-to-end benchmark (`make finetune`)",
    ),
    "bench": (
        "lightning_fa.commands.bench.harness:main",
        "speed and memory figures side by side, as JSON",
    ),
    "sweep-local": (
        "lightning_fa.commands.sweep:main",
        "run a W&B sweep grid here, one point after another",
    ),
    "unlabelled-experiment": (
        "lightning_fa.commands.unlabelled_experiment:main",
        "leave-one-out training on unlabelled real clips",
    ),
}
LIGHTNING_DESCRIPTIONS = {
    "fit": "fine-tune through the Lightning CLI (`--config ...`)",
    "validate": "validate a checkpoint through the Lightning CLI",
    "test": "test a checkpoint through the Lightning CLI",
    "predict": "predict through the Lightning CLI (or `predict CKPT --data DATA.yaml`)",
}


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
        # Imported here: Lightning takes seconds to import, and `--help` / the tools need none of it.
        from lightning_fa.commands.lightning_cli import run_lightning_cli

        run_lightning_cli(argv)
        return 0
    print(f"lightning-fa: unknown command {argv[0]!r}; try --help", file=sys.stderr)
    return 2
