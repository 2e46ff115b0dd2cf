"""Sharding the post-CAM stages over DDP ranks (seeds, confident seeds, CRF, IRN walk; spec §10.12).

Under DDP every rank runs these stages (Lightning has already set up the process group for the classifier's
trainer); each rank takes the strided share ``items[rank::world]`` of the images, writes its own files, and the
confusion matrices are summed once over ranks by torchmetrics' own synchronisation.  Without a process group
(one process, or a stage run alone) the share is everything and every collective here is a no-op.

torch is imported only when already loaded (a process that has not loaded torch cannot be in a process
group), so the CRF's pool workers, which import the pseudo-label stage, start without it.

The list being sharded must be the same on every rank: a stage computes it on rank 0 and broadcasts it
(:func:`broadcast_from_zero`) before any rank writes, so that files written meanwhile cannot change it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from vwl_lightning.errors import VWLError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


def _group() -> ModuleType | None:
    """``torch.distributed`` when a process group is initialised, else None (torch left unloaded)."""
    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def start_ranks(trainer: Mapping[str, Any]) -> None:
    """Start the run's DDP ranks now, once, if ``trainer`` (the ``trainer:`` config) asks for several processes
    and none are running yet: Lightning Fabric's launcher re-runs the command for the other local ranks (or,
    under SLURM / torchrun, joins the processes they started) and sets up the process group, which every
    later Lightning trainer of the run reuses.  So a stage run alone (``stage=pseudo``) shards as well as
    one that follows the classifier.  A one-process trainer config does nothing here.
    """
    if "ddp" not in str(trainer.get("strategy", "auto")) or _group() is not None:
        return
    from lightning_fabric import Fabric

    fabric = Fabric(accelerator=str(trainer.get("accelerator", "auto")), devices=trainer.get("devices", "auto"),
                    num_nodes=int(trainer.get("num_nodes", 1)), strategy=str(trainer["strategy"]))
    if fabric.world_size > 1:
        fabric.launch()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, or ``(0, 1)`` without one."""
    dist = _group()
    return (dist.get_rank(), dist.get_world_size()) if dist is not None else (0, 1)


def is_sharded() -> bool:
    """True when more than one rank takes part."""
    return rank_and_world()[1] > 1


def is_main() -> bool:
    """True on rank 0 (the rank that writes reports and manifests)."""
    return rank_and_world()[0] == 0


def shard(items: Sequence[T]) -> list[T]:
    """This rank's strided share ``items[rank::world]`` (disjoint, together exactly ``items``)."""
    rank, world = rank_and_world()
    return list(items[rank::world])


def barrier() -> None:
    """Wait until every rank gets here (no-op without a process group)."""
    dist = _group()
    if dist is not None and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_from_zero(value: T) -> T:
    """Rank 0's ``value`` on every rank (picklable objects; no-op without a process group)."""
    if not is_sharded():
        return value
    box: list[Any] = [value]
    _group().broadcast_object_list(box, src=0, device=collective_device())  # type: ignore[union-attr]
    return box[0]


def on_zero(work: Callable[[], T]) -> T:
    """Run ``work`` on rank 0 only and give its result to every rank.

    A user error (:class:`~vwl_lightning.errors.VWLError`) raised there is raised on every rank with the
    same one-line message, so that no rank is left waiting for a result that will not come.
    """
    if not is_sharded():
        return work()
    outcome: tuple[str, Any] = ("ok", None)
    if is_main():
        try:
            outcome = ("ok", work())
        except VWLError as exc:
            outcome = ("error", (type(exc), str(exc)))
    kind, payload = broadcast_from_zero(outcome)
    if kind == "error":
        error_type, message = payload
        raise error_type(message)
    return payload


def gather_counts(count: int) -> list[int]:
    """``count`` of every rank, in rank order (``[count]`` without a process group)."""
    if not is_sharded():
        return [int(count)]
    counts: list[Any] = [None] * rank_and_world()[1]
    _group().all_gather_object(counts, int(count))  # type: ignore[union-attr]
    return [int(c) for c in counts]


def collective_device() -> torch.device:
    """Where tensors must live for the backend's collectives: the rank's GPU under NCCL, else the CPU."""
    import torch

    dist = _group()
    if dist is not None and dist.get_world_size() > 1 and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
