"""VWL-M under DDP: after several steps on 2 gloo ranks with different data, both hold the same bank."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "scripts" / "ddp_memory_bank.py"


@pytest.mark.integration  # not in the unit tier: 2 DDP processes
def test_memory_bank_is_identical_on_two_ddp_ranks(tmp_path: Path, cache_dir: Path) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), str(cache_dir)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "bank_rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "bank_rank1.pt", weights_only=True)
    assert rank0["world_size"] == 2 and rank0["steps"] == 6  # 48 images / global batch 8 (4 per rank)
    assert rank0["initialised"] and rank1["initialised"]
    torch.testing.assert_close(rank0["bank"], rank1["bank"], rtol=0, atol=0)
