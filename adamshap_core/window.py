"""A window of a live run, steps t..t+K: what the K-step truths and their first-order form replay."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ReplayWindow:
    """The model and optimizer before step t, the batches of steps t..t+K and the target batch.

    `max_grad_norm`: clipping as `clip_grad_norm_` does it (None: off); `lrs`: each step's lr
    (all groups) where a schedule moves it (None: the optimizer's own). K = len(batches) - 1.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: Sequence[Mapping[str, torch.Tensor]]
    val_batch: Mapping[str, torch.Tensor]
    max_grad_norm: float | None = None
    lrs: Sequence[float] | None = None
