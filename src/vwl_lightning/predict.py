"""``python -m vwl_lightning.predict``: a trained model on your own images (thin CLI over
:mod:`vwl_lightning.inference.predict`).

    python -m vwl_lightning.predict runs/synthetic_vwl_l photos/ --out predictions/
    python -m vwl_lightning.predict runs/synthetic_vwl_l photos/ --out cams/ --cams [--labels cat dog]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vwl_lightning.errors import VWLError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vwl_lightning.predict",
        description="Segment images with a trained segmenter (palette mask, overlay with legend, optional "
                    "probabilities), or with --cams write classifier CAMs (our .npz, overlays with class names, "
                    "seed mask). An unreadable image is reported and skipped.")
    p.add_argument("source", type=Path, help="run folder (runs/<name>), stage folder, or checkpoint file")
    p.add_argument("images", nargs="+", type=Path, help="image files, folders of images, or .txt lists of paths")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--cams", action="store_true", help="CAMs of the classifier instead of segmenter masks")
    p.add_argument("--scales", type=float, nargs="+", default=None,
                   help="test-time scales (default: 1.0 for masks, 1.0 0.5 1.5 2.0 for CAMs)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="add mirrored images (default: off for masks, on for CAMs)")
    p.add_argument("--fusion", default="max", choices=("max", "mean"), help="masks: fusion of scales/flips")
    p.add_argument("--crf", default=None, metavar="PRESET",
                   help="masks: refine with the dense CRF preset (e.g. deeplab_test, the segmenter's)")
    p.add_argument("--probs", action="store_true", help="masks: also write <stem>_probs.npz (float16)")
    p.add_argument("--labels", nargs="+", default=None,
                   help="CAMs: class names of every image, or one .json {stem: [names]}; default: predicted")
    p.add_argument("--label-threshold", type=float, default=0.5, help="CAMs: sigmoid score to predict a class")
    p.add_argument("--bg-score", type=float, default=0.13, help="CAMs: background score of the seed (spec §5)")
    p.add_argument("--flip-fusion", default="max", choices=("max", "sum"), help="CAMs: flip fusion")
    p.add_argument("--batch-size", type=int, default=4, help="images of one size per forward pass")
    p.add_argument("--device", default="auto", help="auto (GPU when present) | cpu | cuda | cuda:1 ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run; exit status 0 when every image was written, 1 when some failed, 2 on bad input."""
    from vwl_lightning.inference.predict import CamSettings, MaskSettings, crf_settings, predict_cams, predict_masks
    from vwl_lightning.utils.noise import filter_third_party_noise

    filter_third_party_noise()
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.cams:
            labels = args.labels
            if labels and len(labels) == 1 and labels[0].endswith(".json"):
                labels = labels[0]
            settings = CamSettings(scales=tuple(args.scales or (1.0, 0.5, 1.5, 2.0)),
                                   flip=True if args.flip is None else args.flip, flip_fusion=args.flip_fusion,
                                   bg_score=args.bg_score, label_threshold=args.label_threshold,
                                   batch_size=args.batch_size)
            outcome = predict_cams(args.source, args.images, args.out, settings, labels=labels, device=args.device,
                                   progress=not args.no_progress)
        else:
            settings = MaskSettings(scales=tuple(args.scales or (1.0,)), flip=bool(args.flip),
                                    fusion=args.fusion, crf=crf_settings(args.crf), batch_size=args.batch_size,
                                    save_probs=args.probs)
            outcome = predict_masks(args.source, args.images, args.out, settings, device=args.device,
                                    progress=not args.no_progress)
    except VWLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(outcome.written)} images -> {args.out}" +
          (f"; {len(outcome.failed)} failed (see {args.out / 'manifest.json'})" if outcome.failed else ""))
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
