"""`lightning-fa export CKPT --out model.onnx`: a fine-tuned checkpoint's streaming step as ONNX."""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_fa.inference.onnx import DEFAULT_OPSET, check_opset, export_onnx
from lightning_fa.outputs import atomic_output, claim_outputs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lightning-fa export",
        description="Export a fine-tuned checkpoint's streaming step to ONNX.",
    )
    parser.add_argument("checkpoint", type=Path, help="a StableAlignmentModule checkpoint")
    parser.add_argument("--out", type=Path, default=Path("model.onnx"))
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    args = parser.parse_args(argv)
    from lightning_fa.systems.finetune import StableAlignmentModule

    check_opset(args.opset, "--opset")
    with claim_outputs([(args.out, "--out")]):
        module = StableAlignmentModule.from_checkpoint(args.checkpoint)
        try:
            with atomic_output(args.out) as partial:
                export_onnx(module, partial, args.opset)
        except OSError as error:  # a full disk: name the output, not the temporary file
            raise ValueError(f"cannot write --out {args.out}: {error.strerror or error}") from error
    print(f"wrote {args.out}")
    return 0
