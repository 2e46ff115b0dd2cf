"""``python -m bench.bench_walk``: one contender runs alone, the denormal setting is recorded; subnormal counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).parents[2]


def test_sparse_alone_runs_and_records_the_denormal_setting(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-m", "bench.bench_walk", "--methods", "sparse", "--grids", "256x192",
                           "--work", str(tmp_path), "--edge", "0.9999"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(r["method"], r["done"]) for r in rows] == [("sparse", 1)]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"method"')))
    assert result["denormals"] == "flush" and result["threads"] == 1
    assert result["subnormal_share_weights"] > 0  # a saturated boundary: (1 - 0.9999)^10 is subnormal
    assert "labels differing" not in proc.stdout  # no dense result to compare with, and no crash for it


def test_subnormal_share_counts_only_subnormals() -> None:
    from bench.bench_walk import subnormal_share

    torch.set_flush_denormal(False)
    t = torch.tensor([0.0, 1e-40, -1e-41, 1e-30, 1.0], dtype=torch.float32)
    assert subnormal_share(t) == 2 / 5
