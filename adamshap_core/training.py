"""The plain AdamW training step that scoring must reproduce, and a warmup+cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from .batch import (
    Batch,
    logits_of,
    per_example_loss,
    per_example_loss_from_logits,
    prepare_batch,
)


def plain_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    max_grad_norm: float | None = None,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """One ordinary training step on the mean per-example loss; returns the loss."""
    device = next(model.parameters()).device
    b = prepare_batch(batch, device)
    optimizer.zero_grad(set_to_none=True)
    if amp_dtype is None:
        loss = per_example_loss(model, b).mean()
    else:  # the forward under autocast, as InRunScorer(amp_dtype=...) runs it
        with torch.autocast(device_type=device.type, dtype=amp_dtype):
            logits = logits_of(model, b)
        loss = per_example_loss_from_logits(logits, b).mean()
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then cosine decay to `min_ratio` of the base lr over `total_steps`."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        prog = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * prog))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
