"""IRN random walk: the sparse walk (pseudo/random_walk.py) against IRN's dense walk (spec §10.6, §10.9).

Grids: the stride-4 grids of a 500×375 image (94×125, n = 11,750) and a 512×512 image (128×128, n = 16,384),
K = 3 classes, β = 10, exp_times = 8 (256 steps), radius 5, float32 on the CPU, one torch thread by default
(``--threads``). The inputs are the same synthetic scene for both contenders: K Voronoi regions, boundary
0.9 on region borders (``--edge``; 0.9999 mimics a saturated trained IRNet) and small noise elsewhere,
CAMs = blurred region indicators plus noise, max-normalised per class.

* **dense** (IRN's algorithm, written lean): the n×n affinity matrix ``A`` (scattered from the same pair
  affinities), ``S = A^∘β`` in place, ``T = S·diag(d)⁻¹``, ``T`` squared ``exp_times`` times, ``X₀·T^256``.
  ``--dense-squarings k`` (default 1) times the first k squarings; the remaining ``8 − k`` are counted at the
  time of the last one timed (``squarings_timed`` in the result; 8 = all measured, nothing extrapolated).
  The labels of the dense operator come from ``X₀·T^256`` when all 8 ran, else from 256 products
  ``x ← x·T`` with the dense ``T`` (the same operator by associativity). Peak memory: two n×n buffers.
* **sparse**: :func:`random_walk` (69 weight planes, 256 shifted multiply-add steps).

**Denormals.** Later squarings of ``T`` (and, on real boundary maps, walk weights ``(1 − B)^β`` of saturated
boundaries) hold float32 subnormals, on which x86 arithmetic is one to two orders of magnitude slower.
``--denormals flush`` (default) sets ``torch.set_flush_denormal(True)`` in every child (flush-to-zero and
denormals-are-zero), ``keep`` leaves them (IEEE, torch's default); the same setting for both contenders,
recorded in each result, with the share of subnormal entries in ``T²ᵏ`` after each timed squaring (dense)
or in the weight planes (built with IEEE subnormals) and the final state (sparse).

Each run of a contender is a fresh child process with a time limit (``--timeout``); ``--repeats r`` runs
the chosen contenders interleaved (sparse, dense, sparse, dense, …), each result with the load average
before and after it and ``others_cpu_share`` (the share of the machine's CPU time other processes used
meanwhile). Peak memory = the process's peak RSS (``ru_maxrss``) minus its peak before the walk (inputs,
imports and a warm-up walk on a 64×64 image excluded). Time = wall seconds of the walk (median over the
repeats in the table). Labels = ``walk_to_labels`` (bilinear ×4, crop, global max, 0.25 background plane)
of each result, compared pixel by pixel when both contenders have run with the same denormal setting
and edge (in this run or an earlier one saved under ``--work``); a contender runs alone fine.

Usage: ``python -m bench.bench_walk [--methods sparse dense] [--grids 500x375 512x512] [--denormals flush|keep]
[--dense-squarings 1] [--repeats 1] [--threads 1] [--timeout 600]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

MODULE = "bench.bench_walk"  # run as ``python -m bench.bench_walk``
GRIDS = {"500x375": (375, 500), "512x512": (512, 512), "256x192": (192, 256)}
K, BETA, EXP_TIMES, RADIUS = 3, 10.0, 8, 5
FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32


def scene(height: int, width: int, seed: int = 0, edge: float = 0.9):
    """Boundary ``(h, w)`` and CAMs ``(K, h, w)`` (float32) on the stride-4 grid of an H×W image; ``edge``: B on
    the region borders (0.9; a trained IRNet saturates, e.g. 0.9999 gives ``(1 − B)^10 = 1e-40``, subnormal)."""
    import numpy as np
    from scipy import ndimage

    h, w = -(-height // 4), -(-width // 4)
    rng = np.random.default_rng(seed)
    centres = rng.random((K + 1, 2)) * [h, w]
    yy, xx = np.mgrid[0:h, 0:w]
    region = np.argmin([(yy - cy) ** 2 + (xx - cx) ** 2 for cy, cx in centres], axis=0)
    border = (ndimage.maximum_filter(region, 3) != ndimage.minimum_filter(region, 3))
    boundary = np.where(border, edge, 0.05 * rng.random((h, w))).astype(np.float32)
    cams = []
    for c in range(1, K + 1):  # region 0 is background
        m = ndimage.gaussian_filter((region == c).astype(np.float64), 2.0) + 0.1 * rng.random((h, w))
        m *= 0.6 + 0.4 * rng.random((h, w)) * (region == c)
        cams.append(m / (m.max() + 1e-5))
    return boundary, np.stack(cams).astype(np.float32)


def subnormal_share(t) -> float:
    """Share of the entries of a float32 tensor that are subnormal (non-zero, below the smallest normal);
    counted in chunks of 2^22 entries, so an n×n matrix needs no n×n temporary."""
    flat = t.reshape(-1)
    count = 0
    for start in range(0, flat.numel(), 1 << 22):
        a = flat[start:start + (1 << 22)].abs()
        count += int(((a > 0) & (a < FLOAT32_TINY)).sum())
    return count / max(1, flat.numel())


def dense_walk(cams, boundary, squarings: int) -> tuple[Any, dict[str, Any]]:
    """IRN's dense walk; returns (result (K,h,w), timings: build, each timed squaring, total incl. extrapolation)."""
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
    t = a.pow_(BETA)
    t.div_(t.sum(0, keepdim=True))  # T = S·diag(d)⁻¹ in place: one n×n buffer
    build = time.perf_counter() - start
    x0 = (cams * (1 - boundary)[None]).reshape(k, n)
    times, shares = [], []
    power = t
    for _ in range(squarings):
        s0 = time.perf_counter()
        nxt = power @ power
        times.append(time.perf_counter() - s0)
        shares.append(subnormal_share(nxt))  # the next squaring's input
        if power is not t:
            del power
        power = nxt
    total = build + sum(times) + (EXP_TIMES - squarings) * times[-1]
    info = {"build_s": build, "squaring_s": times, "squarings_timed": squarings,
            "subnormal_share_after_each": shares}
    if squarings == EXP_TIMES:
        result = x0 @ power
    else:
        del power
        result = x0
        for _ in range(2 ** EXP_TIMES):
            result = result @ t
    return result.reshape(k, h, w), {"seconds": total, **info}


def child(method: str, grid: str, squarings: int, out: Path, threads: int, denormals: str,
          edge: float) -> dict[str, Any]:
    import numpy as np
    import torch

    from bench.common import PeakMemory
    from vwl_lightning.pseudo.random_walk import random_walk, transition_weights, walk_to_labels

    torch.set_num_threads(threads)
    flushed = torch.set_flush_denormal(denormals == "flush")  # random_walk sets it for itself, to the same
    height, width = GRIDS[grid]
    b_np, c_np = scene(height, width, edge=edge)
    boundary, cams = torch.from_numpy(b_np), torch.from_numpy(c_np)
    # warm-up on a 64x64 image: torch's one-time start-up (thread pool, kernels) is not the walk's memory
    wb, wc = (torch.from_numpy(a) for a in scene(64, 64))
    if method == "dense":
        dense_walk(wc, wb, 1)
    else:
        random_walk(wc[None], wb[None], BETA, EXP_TIMES, RADIUS, flush_denormal=denormals == "flush")
    before = max(rss_mib(), PeakMemory.peak_self_mib())
    load_before = os.getloadavg()[0]
    cpu_start = time.process_time()
    if method == "dense":
        result, extra = dense_walk(cams, boundary, squarings)
    else:
        start = time.perf_counter()
        result = random_walk(cams[None], boundary[None], BETA, EXP_TIMES, RADIUS,
                             flush_denormal=denormals == "flush")[0]
        extra = {"seconds": time.perf_counter() - start}
    extra["cpu_seconds_all_threads"] = time.process_time() - cpu_start
    peak = PeakMemory.peak_self_mib() - before
    if method == "sparse":  # after the peak: the count's own buffers are not the walk's
        torch.set_flush_denormal(False)  # count what IEEE arithmetic would hold
        extra["subnormal_share_weights"] = subnormal_share(transition_weights(boundary[None], BETA, RADIUS))
        extra["subnormal_share_state"] = subnormal_share(result)
    labels = walk_to_labels(result, np.array([3, 8, 12]), (height, width))
    np.save(out, labels)
    up = torch.nn.functional.interpolate(result[None], scale_factor=4, mode="bilinear",
                                         align_corners=False)[0, :, :height, :width]
    np.save(out.with_suffix(".scores.npy"), (up / up.max()).numpy())
    return {"method": method, "grid": grid, "n": int(b_np.size), "denormals": denormals, "edge": edge,
            "flush_denormal_supported": bool(flushed), "threads": threads, "peak_extra_mib": peak,
            "load_avg_1min_start": round(load_before, 2), "load_avg_1min_end": round(os.getloadavg()[0], 2),
            **extra}


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def compare(work: Path, grid: str, tag: str) -> dict[str, Any] | None:
    """Pixel comparison of the two contenders' saved labels for ``grid`` (None unless both exist)."""
    import numpy as np

    paths = {m: work / f"{grid}_{tag}_{m}.npy" for m in ("sparse", "dense")}
    if not all(p.is_file() for p in paths.values()):
        return None
    sparse_l, dense_l = (np.load(p) for p in paths.values())
    scores = np.load(paths["dense"].with_suffix(".scores.npy"))
    differ = sparse_l != dense_l
    top2 = np.sort(np.concatenate([np.full_like(scores[:1], 0.25), scores]), axis=0)[-2:]
    margin = top2[1] - top2[0]
    return {"labels_differ": int(differ.sum()), "pixels": int(differ.size),
            "max_margin_where_differ": float(margin[differ].max()) if differ.any() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["sparse", "dense"], choices=["sparse", "dense"])
    parser.add_argument("--grids", nargs="+", default=["500x375", "512x512"], choices=list(GRIDS))
    parser.add_argument("--denormals", choices=["flush", "keep"], default="flush",
                        help="flush: torch.set_flush_denormal(True) in every child; keep: IEEE subnormals")
    parser.add_argument("--dense-squarings", type=int, default=1, choices=range(1, EXP_TIMES + 1),
                        help="squarings timed; the rest counted at the last one's time")
    parser.add_argument("--edge", type=float, default=0.9, help="boundary value on region borders")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs of each contender")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per child (1: on shared cores the sparse walk's 17,664 small "
                             "kernels per image spin-wait for a descheduled second thread)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per child run")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vwl_bench_walk"))
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "GRID", "OUT"))
    args = parser.parse_args()
    if args.child:
        from bench.common import emit

        method, grid, out = args.child
        emit(child(method, grid, args.dense_squarings, Path(out), args.threads, args.denormals, args.edge))
        return

    from bench.common import machine, machine_line, run_child

    args.work.mkdir(parents=True, exist_ok=True)
    print(machine_line(machine()))
    print(f"denormals: {args.denormals}; threads {args.threads}; dense squarings timed {args.dense_squarings}; "
          f"edge {args.edge}")
    rows = []
    tag = f"{args.denormals}_edge{args.edge}"  # saved labels of one setting, compared across runs
    for grid in args.grids:
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
        for _ in range(args.repeats):
            for method in args.methods:  # interleaved: the machine's load changes between runs
                out = args.work / f"{grid}_{tag}_{method}.npy"
                flags = ["--dense-squarings", str(args.dense_squarings), "--threads", str(args.threads),
                         "--denormals", args.denormals, "--edge", str(args.edge)]
                try:
                    result = run_child(MODULE, [*flags, "--child", method, grid, str(out)], timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    result = {"method": method, "grid": grid, "timed_out_after_s": args.timeout}
                runs[method].append(result)
                print(json.dumps(result), flush=True)
        for method, results in runs.items():
            done = [r for r in results if "seconds" in r]
            rows.append({"grid": grid, "method": method, "runs": len(results), "done": len(done),
                         "seconds": [round(r["seconds"], 3) for r in done],
                         "median_s": statistics.median(r["seconds"] for r in done) if done else None,
                         "peak_mib": max((r["peak_extra_mib"] for r in done), default=None),
                         "load": [(r["load_avg_1min_start"], r["load_avg_1min_end"]) for r in done],
                         "others_cpu_share": [round(r["others_cpu_share"], 2) for r in done]})
        same = compare(args.work, grid, tag)
        if same is not None:
            print(f"{grid}: labels differing (sparse vs dense, denormals {args.denormals}): "
                  f"{same['labels_differ']} / {same['pixels']}"
                  + ("" if same["max_margin_where_differ"] is None
                     else f" (max margin {same['max_margin_where_differ']:.1e})"), flush=True)
    print("\n| grid | contender | denormals | runs | median s | each run s | peak MiB | load (1-min, start→end) "
          "| others' CPU share |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        median = "timed out" if r["median_s"] is None else f"{r['median_s']:.2f}"
        peak = "" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        load = ", ".join(f"{a}→{b}" for a, b in r["load"])
        print(f"| {r['grid']} | {r['method']} | {args.denormals} | {r['done']}/{r['runs']} | {median} | "
              f"{', '.join(map(str, r['seconds']))} | {peak} | {load} | {r['others_cpu_share']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
