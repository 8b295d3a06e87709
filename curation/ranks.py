"""Data-parallel scoring runs under `torchrun`: which process this is and the few collectives.

Every rank reads the inputs and takes the same optimizer steps; rank 0 alone writes the run's
shared files (run.json, tokenizer, examples, checkpoints, final model, aggregates) and every rank
writes its own ledger parts (`part-<step>-rank<r>.parquet`), which the aggregation reads together.
Outside torchrun (`WORLD_SIZE` unset or 1) everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes the shared files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether more than one process takes part."""
        return self.world > 1

    @property
    def suffix(self) -> str:
        """Ledger part suffix: '' alone, '-rank<r>' under torchrun."""
        return f"-rank{self.rank}" if self.active else ""

    def barrier(self) -> None:
        """Wait for every rank (no-op alone)."""
        if self.active:
            dist.barrier()

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This rank's share of a global batch: every world-th index from its rank."""
        return np.asarray(idx)[self.rank :: self.world]

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any rank (for a Ctrl-C seen by one)."""
        if not self.active:
            return flag
        on_gpu = dist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
        t = torch.tensor([1.0 if flag else 0.0], device="cuda" if on_gpu else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)


def ranks_from_env(device: str) -> tuple[Ranks, str]:
    """Join the torchrun process group if there is one; return (ranks, this rank's device).

    gloo on CPU, NCCL on CUDA (each rank on cuda:<LOCAL_RANK>).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(), device
    cuda = device.startswith("cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return Ranks(dist.get_rank(), dist.get_world_size()), device
