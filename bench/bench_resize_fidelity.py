"""How close each multi-scale rescaling rule comes to PIL's bicubic resize on real photos (spec §5.1).

For the photos shipped by scikit-image (astronaut, chelsea, coffee) and imgaug (quokka) and each CAM scale
(0.5, 1.5, 2.0), the max |difference| in grey levels from ``PIL.Image.resize(BICUBIC)`` of the uint8 image, and
the share of values that differ at all, for:

* ``tensor_bicubic`` (our former rule): ``F.interpolate(bicubic)`` on the float image, no antialiasing, no
  rounding (the CAM stage resized the normalised image; normalisation is affine, so grey levels compare);
* torch antialiased bicubic, one pass, rounded and clipped to uint8;
* the same in two separable passes (width, then height) with round-half-up and clipping between them, as
  PIL's two-pass resampler does;
* ``pil_bicubic`` (the CAM stage's default): PIL itself in the loader (0 by construction; listed for
  completeness and checked by tests/cam/test_cam_inputs.py after normalisation).

Also the time of each rule for a batch of 16 copies of coffee (400×600) at scale 2 (one thread).

Usage: ``python -m bench.bench_resize_fidelity``.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

SCALES = (0.5, 1.5, 2.0)


def photos() -> dict[str, np.ndarray]:
    out = {name: getattr(skimage.data, name)() for name in ("astronaut", "chelsea", "coffee")}
    spec = importlib.util.find_spec("imgaug")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "quokka.jpg"
        out["quokka"] = np.asarray(Image.open(path).convert("RGB"))
    return out


def tensor_bicubic(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False)


def torch_aa_one_pass(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).round().clamp(0, 255)


def torch_aa_two_pass(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = x.shape[-2:]
    if size[1] != w:
        x = F.interpolate(x, size=(h, size[1]), mode="bicubic", antialias=True, align_corners=False)
        x = x.add(0.5).floor().clamp(0, 255)
    if size[0] != h:
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
        x = x.add(0.5).floor().clamp(0, 255)
    return x


def pil(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BICUBIC))


RULES = {"tensor_bicubic (former)": tensor_bicubic, "torch antialias, 1 pass, rounded": torch_aa_one_pass,
         "torch antialias, 2 passes, rounded between": torch_aa_two_pass}


def main() -> None:
    torch.set_num_threads(1)
    images = photos()
    print("max |difference| from PIL bicubic in grey levels (share of values that differ)\n")
    print("| rule | " + " | ".join(f"scale {s}" for s in SCALES) + " |")
    print("|---|" + "---|" * len(SCALES))
    for name, rule in RULES.items():
        cells = []
        for s in SCALES:
            worst, share = 0.0, []
            for image in images.values():
                h, w = image.shape[:2]
                size = (max(1, round(h * s)), max(1, round(w * s)))
                x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
                diff = np.abs(rule(x, size)[0].permute(1, 2, 0).numpy() - pil(image, size).astype(np.float32))
                worst = max(worst, float(diff.max()))
                share.append(float((diff > 0.5).mean()))
            cells.append(f"{worst:.0f} ({100 * np.mean(share):.2f} %)")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| pil_bicubic (default: PIL in the loader) | 0 | 0 | 0 |")

    coffee = images["coffee"]
    size = (coffee.shape[0] * 2, coffee.shape[1] * 2)
    batch = torch.from_numpy(coffee).permute(2, 0, 1)[None].float().repeat(16, 1, 1, 1)
    print("\ntime for 16 × coffee (400×600) at scale 2, one thread:")
    for name, rule in RULES.items():
        rule(batch, size)
        start = time.perf_counter()
        rule(batch, size)
        print(f"  {name}: {time.perf_counter() - start:.3f} s")
    start = time.perf_counter()
    for _ in range(16):
        pil(coffee, size)
    print(f"  PIL, 16 images one by one: {time.perf_counter() - start:.3f} s")


if __name__ == "__main__":
    main()
