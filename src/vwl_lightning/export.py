"""``python -m vwl_lightning.export``: the segmenter and the classifier's CAM head to TorchScript and ONNX
(thin CLI over :mod:`vwl_lightning.inference.export`).

    python -m vwl_lightning.export runs/synthetic_vwl_l --out exported/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vwl_lightning.errors import VWLError


def parser() -> argparse.ArgumentParser:
    from vwl_lightning.inference.export import FORMATS, MODELS

    p = argparse.ArgumentParser(
        prog="python -m vwl_lightning.export",
        description="Export to TorchScript (.pt) and ONNX (.onnx), each checked against PyTorch on the same "
                    "input (max |diff| printed and stored); the input normalisation is in the file's metadata.")
    p.add_argument("source", type=Path, help="run folder (runs/<name>), stage folder, or checkpoint file")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    p.add_argument("--trace-size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    p.add_argument("--check-size", type=int, nargs=2, default=(72, 56), metavar=("H", "W"),
                   help="input size of the PyTorch-vs-export check (differs from the trace size on purpose)")
    p.add_argument("--opset", type=int, default=17)
    return p


def main(argv: list[str] | None = None) -> int:
    from vwl_lightning.inference.export import export
    from vwl_lightning.utils.noise import filter_third_party_noise

    filter_third_party_noise()
    args = parser().parse_args(argv)
    models = args.models
    try:
        if args.source.is_file():  # a checkpoint file: export only the model it holds
            models = [m for m in models if m in args.source.name] or models[:1]
        report = export(args.source, args.out, models, args.formats, args.trace_size, args.check_size, args.opset)
    except VWLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path, row in report["files"].items():
        print(f"{path}: max |exported - PyTorch| = {row['max_abs_diff']:.3g} at {row['check_size']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
