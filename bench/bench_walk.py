"""IRN random walk: the sparse walk (pseudo/random_walk.py) against IRN's dense walk (spec §10.6, §10.9).

Grids: the stride-4 grids of a 500×375 image (94×125, n = 11,750) and a 512×512 image (128×128, n = 16,384),
K = 3 classes, β = 10, exp_times = 8 (256 steps), radius 5, float32 on the CPU. The inputs are the same
synthetic scene for both contenders: K Voronoi regions, boundary 0.9 on region borders and small noise
elsewhere, CAMs = blurred region indicators plus noise, max-normalised per class.

* **dense** (IRN's algorithm, written lean): the n×n affinity matrix ``A`` (scattered from the same pair
  affinities), ``S = A^∘β`` in place, ``T = S·diag(d)⁻¹``, ``T`` squared ``exp_times`` times, ``X₀·T^256``.
  By default only the first squaring is timed and the time of the 8 squarings is that ×8 (``--full-dense``
  runs all 8); the peak memory is reached in the first squaring already (two n×n buffers alive). The labels
  of the dense operator then come from 256 products ``x ← x·T`` with the same dense ``T`` (the same operator
  by associativity; ``--full-dense`` uses ``X₀·T^256`` from the squarings).
* **sparse**: :func:`random_walk` (69 weight planes, 256 shifted multiply-add steps).

Each contender runs in a fresh child process; peak memory = the process's peak RSS (``ru_maxrss``) minus
its peak just before the walk (inputs, imports and a warm-up walk of a 64×64 image excluded, so torch's
one-time start-up is not counted). Time = wall seconds of the walk; CPU seconds (all threads) are printed
too. Labels = ``walk_to_labels`` (bilinear ×4,
crop, global max, 0.25 background plane) of each result, compared pixel by pixel.

Usage: ``python -m bench.bench_walk [--full-dense] [--threads 2] [--grids 500x375 512x512] [--methods sparse dense]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

MODULE = "bench.bench_walk"  # run as ``python -m bench.bench_walk``
GRIDS = {"500x375": (375, 500), "512x512": (512, 512)}
K, BETA, EXP_TIMES, RADIUS = 3, 10.0, 8, 5


def scene(height: int, width: int, seed: int = 0):
    """Boundary ``(h, w)`` and CAMs ``(K, h, w)`` (float32) on the stride-4 grid of an H×W image."""
    import numpy as np
    from scipy import ndimage

    h, w = -(-height // 4), -(-width // 4)
    rng = np.random.default_rng(seed)
    centres = rng.random((K + 1, 2)) * [h, w]
    yy, xx = np.mgrid[0:h, 0:w]
    region = np.argmin([(yy - cy) ** 2 + (xx - cx) ** 2 for cy, cx in centres], axis=0)
    edge = (ndimage.maximum_filter(region, 3) != ndimage.minimum_filter(region, 3))
    boundary = np.where(edge, 0.9, 0.05 * rng.random((h, w))).astype(np.float32)
    cams = []
    for c in range(1, K + 1):  # region 0 is background
        m = ndimage.gaussian_filter((region == c).astype(np.float64), 2.0) + 0.1 * rng.random((h, w))
        m *= 0.6 + 0.4 * rng.random((h, w)) * (region == c)
        cams.append(m / (m.max() + 1e-5))
    return boundary, np.stack(cams).astype(np.float32)


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def dense_walk(cams, boundary, full: bool) -> tuple[Any, float, float]:
    """IRN's dense walk; returns (result (K,h,w), seconds for build + 8 squarings, seconds per squaring)."""
    import torch

    from vwl_lightning.pseudo.affinity import half_disc_offsets
    from vwl_lightning.pseudo.random_walk import pair_weights

    k, h, w = cams.shape
    n = h * w
    start = time.perf_counter()
    aff = pair_weights(boundary[None], 1.0, RADIUS)[0]  # (34, h, w): affinities, 0 for out-of-image pairs
    a = torch.eye(n, dtype=torch.float32)
    index = torch.arange(n).reshape(h, w)
    for j, (dy, dx) in enumerate(half_disc_offsets(RADIUS)):
        y1, x0, x1 = h - dy, max(0, -dx), min(w, w - dx)
        src = index[:y1, x0:x1].reshape(-1)
        dst = index[dy:dy + y1, x0 + dx:x1 + dx].reshape(-1)
        vals = aff[j, :y1, x0:x1].reshape(-1)
        a[src, dst] = vals
        a[dst, src] = vals
    s = a.pow_(BETA)
    t = s / s.sum(0, keepdim=True)
    del a, s
    build = time.perf_counter() - start
    square_start = time.perf_counter()
    t2 = t @ t
    per_square = time.perf_counter() - square_start
    x0 = (cams * (1 - boundary)[None]).reshape(k, n)
    if full:
        t = t2
        del t2
        for _ in range(EXP_TIMES - 1):
            t = t @ t
        total = time.perf_counter() - start
        result = x0 @ t
    else:
        del t2
        total = build + EXP_TIMES * per_square
        result = x0
        for _ in range(2 ** EXP_TIMES):
            result = result @ t
    return result.reshape(k, h, w), total, per_square


def child(method: str, grid: str, full: bool, out: Path, threads: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from bench.common import PeakMemory
    from vwl_lightning.pseudo.random_walk import random_walk, walk_to_labels

    torch.set_num_threads(threads)
    height, width = GRIDS[grid]
    b_np, c_np = scene(height, width)
    boundary, cams = torch.from_numpy(b_np), torch.from_numpy(c_np)
    # warm-up on a 64x64 image: torch's one-time start-up (thread pool, kernels) is not the walk's memory
    wb, wc = (torch.from_numpy(a) for a in scene(64, 64))
    if method == "dense":
        dense_walk(wc, wb, full)
    else:
        random_walk(wc[None], wb[None], BETA, EXP_TIMES, RADIUS)
    before = max(rss_mib(), PeakMemory.peak_self_mib())
    extra: dict[str, Any] = {}
    cpu_start = time.process_time()
    if method == "dense":
        result, seconds, per_square = dense_walk(cams, boundary, full)
        extra = {"seconds_per_squaring": per_square, "squarings_timed": EXP_TIMES if full else 1}
    else:
        start = time.perf_counter()
        result = random_walk(cams[None], boundary[None], BETA, EXP_TIMES, RADIUS)[0]
        seconds = time.perf_counter() - start
    extra["cpu_seconds_all_threads"] = time.process_time() - cpu_start
    peak = PeakMemory.peak_self_mib() - before
    labels = walk_to_labels(result, np.array([3, 8, 12]), (height, width))
    np.save(out, labels)
    up = torch.nn.functional.interpolate(result[None], scale_factor=4, mode="bilinear",
                                         align_corners=False)[0, :, :height, :width]
    np.save(out.with_suffix(".scores.npy"), (up / up.max()).numpy())
    return {"method": method, "grid": grid, "n": int(b_np.size), "seconds": seconds, "peak_extra_mib": peak, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-dense", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vwl_bench_walk"))
    parser.add_argument("--grids", nargs="+", default=list(GRIDS))
    parser.add_argument("--methods", nargs="+", default=["sparse", "dense"],
                        help="run only these; a contender not run is read from <work>/<grid>_<method>.json "
                             "(+ .npy) of an earlier run")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "GRID", "OUT"))
    args = parser.parse_args()
    if args.child:
        from bench.common import emit

        method, grid, out = args.child
        emit(child(method, grid, args.full_dense, Path(out), args.threads))
        return

    import numpy as np

    from bench.common import machine, machine_line, run_child

    args.work.mkdir(parents=True, exist_ok=True)
    print(machine_line(machine()))
    rows = []
    for grid in args.grids:
        results = {}
        for method in ("sparse", "dense"):
            out = args.work / f"{grid}_{method}.npy"
            saved = args.work / f"{grid}_{method}.json"
            if method not in args.methods:
                results[method] = {**json.loads(saved.read_text()), "from_earlier_run": str(saved)}
                print(json.dumps(results[method]), flush=True)
                continue
            flags = [*(["--full-dense"] if args.full_dense else []), "--threads", str(args.threads)]
            results[method] = run_child(MODULE, [*flags, "--child", method, grid, str(out)], timeout=4 * 3600)
            saved.write_text(json.dumps(results[method]))
            print(json.dumps(results[method]), flush=True)
        sparse_l, dense_l = (np.load(args.work / f"{grid}_{m}.npy") for m in ("sparse", "dense"))
        scores = np.load(args.work / f"{grid}_dense.scores.npy")
        differ = sparse_l != dense_l
        top2 = np.sort(np.concatenate([np.full_like(scores[:1], 0.25), scores]), axis=0)[-2:]
        margin = top2[1] - top2[0]
        rows.append({
            "grid": grid, "n": results["sparse"]["n"],
            "dense_s": results["dense"]["seconds"], "sparse_s": results["sparse"]["seconds"],
            "dense_mib": results["dense"]["peak_extra_mib"], "sparse_mib": results["sparse"]["peak_extra_mib"],
            "labels_differ": int(differ.sum()), "pixels": int(differ.size),
            "max_margin_where_differ": float(margin[differ].max()) if differ.any() else None,
            "others_cpu_share": max(r["others_cpu_share"] for r in results.values()),
        })
    print("\n| grid (image) | n | dense s | sparse s | speed-up | dense peak MiB | sparse peak MiB | memory ratio "
          "| labels differing | other processes' CPU share |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        margin = r["max_margin_where_differ"]
        note = "" if margin is None else f" (max margin {margin:.1e})"
        print(f"| {r['grid']} | {r['n']} | {r['dense_s']:.1f} | {r['sparse_s']:.2f} | "
              f"{r['dense_s'] / r['sparse_s']:.0f}x | {r['dense_mib']:.0f} | {r['sparse_mib']:.1f} | "
              f"{r['dense_mib'] / max(r['sparse_mib'], 0.1):.0f}x | {r['labels_differ']} / {r['pixels']}{note} "
              f"| {r['others_cpu_share']:.2f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
