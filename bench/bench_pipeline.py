"""Per-stage wall time and peak memory of the default pipeline (issue: segmenter stage and pipeline).

Each stage runs as its own ``python -m vwl_lightning stage=<name>`` process in one run directory, exactly as
the pipeline would run it, with the default configuration (the embedded benchmark, W&B offline); a sampling
thread records the peak resident memory of the process and its children (DataLoader / CRF workers).

    python -m bench.bench_pipeline [--run-dir /tmp/vwl_bench_pipeline] [--cache-dir DIR] [-- overrides]

Prints a markdown table: seconds and peak MiB per stage, and the total.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from bench.common import machine, machine_line

STAGES = ("classifier", "cams", "seeds", "pseudo", "segmenter")


def run_stage(stage: str, run_dir: Path, extra: list[str]) -> tuple[float, float]:
    """(wall seconds, peak MiB of the process tree) of one stage."""
    command = [sys.executable, "-m", "vwl_lightning", f"stage={stage}", f"run_dir={run_dir}",
               f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        parent = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                total = parent.memory_info().rss + sum(c.memory_info().rss for c in parent.children(recursive=True))
                peak = max(peak, total)
            except psutil.Error:
                pass
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"stage {stage} failed:\n{err[-3000:]}")
    return time.perf_counter() - start, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/vwl_bench_pipeline"))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    shutil.rmtree(args.run_dir, ignore_errors=True)
    extra = [*([f"paths.cache_dir={args.cache_dir}"] if args.cache_dir else []), *args.overrides]
    print(machine_line(machine()))
    rows = []
    for stage in STAGES:
        seconds, peak = run_stage(stage, args.run_dir, extra)
        rows.append((stage, seconds, peak))
        print(f"{stage}: {seconds:.1f} s, peak {peak:.0f} MiB", flush=True)
    results = json.loads((args.run_dir / "results.json").read_text()) if (args.run_dir / "results.json").is_file() \
        else {}
    print("\n| stage | wall s (incl. start-up) | peak RSS MiB (process tree) |\n|---|---|---|")
    for stage, seconds, peak in rows:
        print(f"| {stage} | {seconds:.1f} | {peak:.0f} |")
    print(f"| **total** | **{sum(r[1] for r in rows):.1f}** | {max(r[2] for r in rows):.0f} (max) |")
    if results:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
