"""``python -m bench.gpu_check``: with no GPU it says so and exits 0; ``--smoke`` runs every section on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


def run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``python -m bench.gpu_check`` from the repository root, as BENCHMARKS.md runs it."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(tmp_path / "out.json"),
                           "--work", str(tmp_path / "work"), *args],
                          capture_output=True, text=True, env=env, timeout=1800, cwd=REPO)


def test_without_a_gpu_it_says_so_and_exits_0(tmp_path: Path) -> None:
    proc = run(tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no CUDA device on this machine" in proc.stdout
    assert not (tmp_path / "out.json").exists()  # nothing was measured


@pytest.mark.slow
def test_smoke_runs_every_section_on_the_cpu(tmp_path: Path) -> None:
    """All sections at toy sizes on the CPU (the 'GPU' is the CPU, so every agreement check must pass)."""
    proc = run("--smoke", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "out.json").read_text())
    keys = " ".join(report["times"])
    for part in ("classifier step 32-true", "CAM stage auto", "CAM stage 32-true", "segmenter step 32-true",
                 "segmenter predict"):  # bf16 training is timed on the GPU only
        assert part in keys
    assert all(value > 0 for value in report["times"].values())
    assert report["checks"] and all(c["ok"] for c in report["checks"].values())
    assert report["checks"]["classifier fp32 loss GPU vs CPU (relative)"]["value"] == 0.0
