"""Batch normalisation and the per-example loss every estimator and every truth shares."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

Batch = Mapping[str, torch.Tensor]


def prepare_batch(
    batch: Batch, device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """Return a batch with `attention_mask`, `loss_mask` and per-example `position_ids` filled in."""
    if "input_ids" not in batch:
        raise KeyError("batch needs an 'input_ids' tensor of shape [n, T]")
    ids = batch["input_ids"]
    if ids.dim() != 2:
        raise ValueError(f"input_ids must be [n, T], got shape {tuple(ids.shape)}")
    if device is not None:
        ids = ids.to(device)
    attn = batch.get("attention_mask")
    attn = torch.ones_like(ids) if attn is None else attn.to(ids.device).long()
    lmask = batch.get("loss_mask")
    lmask = torch.ones_like(ids) if lmask is None else lmask.to(ids.device).long()
    # Positions count real tokens only, so left- and right-padded rows see the same positions.
    pos = (attn.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": lmask, "position_ids": pos}


def target_mask(batch: Batch) -> torch.Tensor:
    """Float mask [n, T-1]: 1 where predicting token t (t >= 1) counts towards the loss."""
    return (batch["attention_mask"][:, 1:] * batch["loss_mask"][:, 1:]).float()


def logits_of(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Forward a prepared batch and return logits [n, T, V]."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
    )
    return out.logits if hasattr(out, "logits") else out


def per_example_loss_from_logits(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over each example's counted target tokens (0 if none)."""
    mask = target_mask(batch)
    lg = logits[:, :-1]
    if lg.dtype not in (torch.float32, torch.float64):
        lg = lg.float()  # half-precision logits: take the cross-entropy in fp32
    ce = F.cross_entropy(
        lg.reshape(-1, logits.size(-1)),
        batch["input_ids"][:, 1:].reshape(-1),
        reduction="none",
    ).view_as(mask)
    return (ce * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def per_example_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Per-example loss l_i [n] of a prepared batch."""
    return per_example_loss_from_logits(logits_of(model, batch), batch)


def n_target_tokens(batch: Batch) -> torch.Tensor:
    """Number of counted target tokens per example [n]."""
    return target_mask(batch).sum(dim=1)
