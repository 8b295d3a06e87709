"""Worker for the 2-process data-parallel equivalence test (run by torch.multiprocessing)."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from adamshap_core import InRunScorer, build_model

ESTS = ("adam2", "adam-loo", "adam", "sgd")


def global_batches(steps: int, n: int, T: int, vocab: int):
    g = torch.Generator().manual_seed(123)
    out = []
    for _ in range(steps):
        ids = torch.randint(0, vocab, (n, T), generator=g)
        attn = torch.ones(n, T, dtype=torch.long)
        lens = torch.randint(T // 2, T + 1, (n,), generator=g)
        for i, L in enumerate(lens.tolist()):
            attn[i, L:] = 0
        out.append({"input_ids": ids, "attention_mask": attn})
    return out


def shard(batch: dict, rank: int, world: int) -> dict:
    return {k: v.chunk(world)[rank] for k, v in batch.items()}


def run(rank: int, world: int, steps: int, out_path: str | None) -> dict:
    """Scored training on shards (world > 1) or on the whole global batch (world == 1)."""
    torch.manual_seed(0)
    model = build_model("tiny", 61, 32, seed=0).double()  # fp64: compare maths, not reduction order
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    val = global_batches(1, 6, 16, 61)[0]
    batches = global_batches(steps, 8, 16, 61)
    if world > 1:
        val = shard(val, rank, world)
    sc = InRunScorer(model, opt, val, estimators=ESTS, max_grad_norm=0.5)
    values = {e: [] for e in ESTS}
    losses = []
    for b in batches:
        o = sc.step(shard(b, rank, world) if world > 1 else b)
        for e in ESTS:
            values[e].append(o.values[e])
        losses.append(o.loss)
    result = {
        "values": {e: torch.stack(v) for e, v in values.items()},
        "losses": losses,
        "params": [p.detach().clone() for p in model.parameters()],
    }
    if out_path:
        torch.save(result, out_path)
    return result


def main() -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    run(rank, world, int(sys.argv[1]), sys.argv[2].format(rank=rank))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
