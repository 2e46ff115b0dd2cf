"""Sharding helpers over 2 spawned gloo ranks: disjoint shares that cover the list, rank 0's list on every
rank, counts in rank order, and a user error on rank 0 raised on every rank (no rank left waiting)."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from vwl_lightning.errors import DataError
from vwl_lightning.utils import distributed


def _worker(rank: int, world: int, folder: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        items = [f"img{k}" for k in range(7)]
        listed = distributed.on_zero(lambda: [i for i in items if i != "img3"] if rank == 0 else ["wrong"])
        mine = distributed.shard(listed)
        counts = distributed.gather_counts(len(mine))

        def refuse() -> None:
            raise DataError("/data/x.png: refused on rank 0")

        try:
            distributed.on_zero(refuse)
            error = None
        except DataError as exc:
            error = str(exc)
        record = {"rank_world": distributed.rank_and_world(), "main": distributed.is_main(),
                  "sharded": distributed.is_sharded(), "mine": mine, "counts": counts, "error": error}
        Path(folder, f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def test_without_a_process_group_everything_is_one_share() -> None:
    assert distributed.rank_and_world() == (0, 1) and distributed.is_main() and not distributed.is_sharded()
    assert distributed.shard([3, 1, 2]) == [3, 1, 2]
    assert distributed.gather_counts(5) == [5]
    assert distributed.on_zero(lambda: "x") == "x"
    assert str(distributed.collective_device()) == "cpu"


@pytest.mark.integration  # not in the unit tier: 2 spawned processes
def test_two_ranks_share_rank_zeros_list_and_raise_its_error(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_worker, args=(r, 2, str(tmp_path))) for r in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)  # spawned ranks import torch: slow on a loaded machine
        assert proc.exitcode == 0, f"rank exit code {proc.exitcode} (None: still running after 300 s)"
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rank_world"] for r in records] == [[0, 2], [1, 2]]
    assert [r["main"] for r in records] == [True, False] and all(r["sharded"] for r in records)
    # rank 0's list (img3 left out), strided: disjoint, together exactly that list
    assert records[0]["mine"] == ["img0", "img2", "img5"] and records[1]["mine"] == ["img1", "img4", "img6"]
    assert records[0]["counts"] == records[1]["counts"] == [3, 3]
    assert records[0]["error"] == records[1]["error"] == "/data/x.png: refused on rank 0"
