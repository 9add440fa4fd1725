"""`python -m musicgen.training.export SRC DST [--fp32]`: strip a training checkpoint for shipping.

Drops optimizer, scheduler and RNG state and stores the weights in fp16 (half the size; generation and
evaluation cast them back to fp32), keeping the model config, vocabulary, training config and step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import report_user_errors
from ..inference.checkpoint import export_inference_checkpoint


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m musicgen.training.export", description=__doc__.split("\n")[0])
    parser.add_argument("src", type=Path, help="training checkpoint (e.g. outputs/.../checkpoints/best.pt)")
    parser.add_argument("dst", type=Path, help="where to write the inference checkpoint")
    parser.add_argument("--fp32", action="store_true", help="keep fp32 weights")
    args = parser.parse_args(argv)
    out = export_inference_checkpoint(args.src, args.dst, half=not args.fp32)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB)")


if __name__ == "__main__":
    sys.exit(main())
