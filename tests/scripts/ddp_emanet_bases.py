"""Two gloo processes on CPU: each feeds its own batch of bases to EMANet.update_bases and saves its ``mu``.

Run as ``python ddp_emanet_bases.py OUT_DIR PORT``; writes ``mu_rank{0,1}.pt`` and each rank's batch of μ⁽ᵀ⁾.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vwl_lightning.models.emanet import EMANet


def run(rank: int, out_dir: str, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)  # the same initial model on both ranks
    model = EMANet(torch.nn.Identity(), 4, 3, mid_channels=6, head_channels=4, bases=5)
    initial = model.emau.mu.clone()
    batch = torch.rand(3, 6, 5, generator=torch.Generator().manual_seed(100 + rank))  # rank-specific
    model.update_bases(batch)
    torch.save({"initial": initial, "batch": batch, "mu": model.emau.mu.clone()}, Path(out_dir) / f"mu_rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1], sys.argv[2]), nprocs=2, join=True)
