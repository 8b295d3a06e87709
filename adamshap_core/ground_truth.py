"""Ground truth for one step: leave-one-out and Monte-Carlo Shapley with real optimizer steps.

Both start from the live model/optimizer *before* the step (docs/method.md §7). Every trial rebuilds an
optimizer of the same class from a deep copy of the saved state (`load_state_dict` keeps
references to what it is given), applies the subset gradient `Σ_{i∈S} g_i` with clipping
recomputed as `clip_grad_norm_` would, takes a real `step()`, and measures the target loss.
The model and optimizer are left exactly as they were.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .batch import per_example_loss, prepare_batch


@dataclass
class ShapleyTruth:
    """Monte-Carlo Shapley values of one step, with their standard errors."""

    values: np.ndarray  # [n]
    stderr: np.ndarray  # [n]
    n_permutations: int
    u_full: float  # U(B)
    u_empty: float  # U(∅) (momentum + weight decay only)


class _Trial:
    """Takes real optimizer steps from a frozen (model, optimizer) state."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        batch: Mapping[str, torch.Tensor],
        val_batch: Mapping[str, torch.Tensor],
        max_grad_norm: float | None,
    ):
        self.model = model
        self.optimizer = optimizer
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        dev = self.params[0].device
        self.batch = prepare_batch(batch, dev)
        self.val_batch = prepare_batch(val_batch, dev)
        self.max_grad_norm = max_grad_norm
        self.saved_params = [p.detach().clone() for p in self.params]
        self.saved_state = copy.deepcopy(optimizer.state_dict())
        self.groups = [
            {k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups
        ]
        self.grads = self._example_grads()
        self.val_before = self.val_loss()

    def _example_grads(self) -> torch.Tensor:
        """Per-example gradients g_i = (1/n) ∇l_i, flattened: [n, D]."""
        n = self.batch["input_ids"].shape[0]
        rows = []
        losses = per_example_loss(self.model, self.batch)
        for i in range(n):
            gi = torch.autograd.grad(
                losses[i] / n, self.params, allow_unused=True, retain_graph=i < n - 1
            )
            rows.append(
                torch.cat(
                    [
                        (g if g is not None else torch.zeros_like(p)).reshape(-1)
                        for p, g in zip(self.params, gi)
                    ]
                ).detach()
            )
        return torch.stack(rows)

    @torch.no_grad()
    def val_loss(self) -> float:
        return float(per_example_loss(self.model, self.val_batch).mean().double())

    def loss_after(self, grad: torch.Tensor) -> float:
        """Target loss after one real optimizer step with flattened gradient `grad`."""
        opt = type(self.optimizer)(self._param_groups())
        opt.load_state_dict(copy.deepcopy(self.saved_state))
        off = 0
        for p in self.params:
            k = p.numel()
            p.grad = grad[off : off + k].view_as(p).clone()
            off += k
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        opt.step()
        loss = self.val_loss()
        self.restore()
        return loss

    def _param_groups(self) -> list[dict]:
        out, i = [], 0
        for g, live in zip(self.groups, self.optimizer.param_groups):
            n = len(live["params"])
            out.append({**g, "params": self.params[i : i + n]})
            i += n
        return out

    @torch.no_grad()
    def restore(self) -> None:
        for p, s in zip(self.params, self.saved_params):
            p.copy_(s)
            p.grad = None


def leave_one_out(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Mapping[str, torch.Tensor],
    val_batch: Mapping[str, torch.Tensor],
    max_grad_norm: float | None = None,
) -> np.ndarray:
    """LOO value of each example: l_val(w_{t+1}(B∖i)) − l_val(w_{t+1}(B)), real steps."""
    tr = _Trial(model, optimizer, batch, val_batch, max_grad_norm)
    full = tr.grads.sum(0)
    l_full = tr.loss_after(full)
    return np.array([tr.loss_after(full - tr.grads[i]) - l_full for i in range(len(tr.grads))])


def monte_carlo_shapley(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Mapping[str, torch.Tensor],
    val_batch: Mapping[str, torch.Tensor],
    max_grad_norm: float | None = None,
    n_permutations: int = 40,
    seed: int = 0,
) -> ShapleyTruth:
    """Shapley values of U_t(S) = l_val(w_t) − l_val(w̃_{t+1}(S)) from antithetic permutations."""
    tr = _Trial(model, optimizer, batch, val_batch, max_grad_norm)
    n = len(tr.grads)
    rng = np.random.default_rng(seed)
    l_empty = tr.loss_after(torch.zeros_like(tr.grads[0]))
    l_full = tr.loss_after(tr.grads.sum(0))
    pairs = max(1, math.ceil(n_permutations / 2))
    samples = np.zeros((pairs, n))
    for k in range(pairs):
        perm = rng.permutation(n)
        pair = np.zeros(n)
        for order in (perm, perm[::-1]):
            running = torch.zeros_like(tr.grads[0])
            prev = l_empty
            for j, i in enumerate(order):
                running = running + tr.grads[i]
                cur = l_full if j == n - 1 else tr.loss_after(running)
                pair[i] += 0.5 * (prev - cur)
                prev = cur
        samples[k] = pair
    values = samples.mean(0)
    stderr = samples.std(0, ddof=1) / math.sqrt(pairs) if pairs > 1 else np.full(n, np.nan)
    return ShapleyTruth(
        values=values,
        stderr=stderr,
        n_permutations=2 * pairs,
        u_full=tr.val_before - l_full,
        u_empty=tr.val_before - l_empty,
    )
