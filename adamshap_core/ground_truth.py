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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .batch import per_example_loss, prepare_batch
from .window import ReplayWindow


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


def _copy_live(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[nn.Module, torch.optim.Optimizer, list[dict]]:
    """Deep copies of a live model and its optimizer (state included); the copy's param groups."""
    m = copy.deepcopy(model)
    pmap = {id(p): q for p, q in zip(model.parameters(), m.parameters())}
    groups = [
        {
            **{k: v for k, v in g.items() if k != "params"},
            "params": [pmap[id(p)] for p in g["params"]],
        }
        for g in optimizer.param_groups
    ]
    opt = type(optimizer)(groups)
    opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    return m, opt, groups


def _set_lr(opt: torch.optim.Optimizer, lrs: Sequence[float] | None, j: int) -> None:
    """Step j's learning rate in every group, where a schedule (`lrs`) moves it."""
    if lrs is not None:
        for g in opt.param_groups:
            g["lr"] = float(lrs[j])


def _replay(w: ReplayWindow, drop: int | None, weight: float = 1.0) -> float:
    """Target loss after real optimizer steps on `batches` from deep copies of the live state."""
    m, opt, _ = _copy_live(w.model, w.optimizer)
    dev = next(m.parameters()).device
    for j, raw in enumerate(w.batches):
        b = prepare_batch(raw, dev)
        _set_lr(opt, w.lrs, j)
        opt.zero_grad(set_to_none=True)
        losses = per_example_loss(m, b)
        n = losses.shape[0]
        if j == 0 and drop is not None:  # drop g_i with the normaliser 1/n unchanged
            keep = torch.ones(n, dtype=losses.dtype, device=losses.device)
            keep[drop] = 1 - weight
            loss = (losses * keep).sum() / n
        else:
            loss = losses.mean()
        loss.backward()
        if w.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(m.parameters(), w.max_grad_norm)
        opt.step()
    with torch.no_grad():
        return float(per_example_loss(m, prepare_batch(w.val_batch, dev)).mean().double())


def leave_one_out_window(window: ReplayWindow, removal_weight: float = 1.0) -> np.ndarray:
    """K-step LOO of each example of `batches[0]`: l_val after K+1 real steps without it minus with it.

    `window.batches` are steps t, t+1, ..., t+K (K = len(batches) - 1); example i is removed
    from step t only (its gradient dropped, normaliser unchanged) and the same later batches
    are replayed with real optimizer steps from deep copies of the live state, so the change
    includes momentum carry-over and the later gradients' reaction to the moved weights. `lrs` sets each
    step's lr (all groups) where a schedule moves it. K = 0 is `leave_one_out`.
    `removal_weight` ε < 1 removes only ε·g_i (a scaled removal, to check first-order
    estimators where dropping a whole example is beyond first order); the result is not rescaled.
    """
    n = prepare_batch(window.batches[0])["input_ids"].shape[0]
    full = _replay(window, None)
    return np.array([_replay(window, i, removal_weight) - full for i in range(n)])


def leave_one_out_carry(window: ReplayWindow) -> np.ndarray:
    """In-run K-step LOO: Σ_s of each step's real-step target-loss change when i's share is removed.

    The truth of the momentum-propagated values. The run follows its real trajectory over
    `batches` (steps t..t+K); at each step s, from the saved state before s, a real optimizer
    step is taken with example i's share of Adam's state removed: at s = t its gradient (clip
    recomputed); at s > t its clipped contribution to `m_{s-1}` (weight β1^(s-t-1)(1-β1)) and to
    `v_{s-1}` (weight β2^(s-t-1)(1-β2)). The value is Σ_s [l_val(w_{s+1} without i's share) −
    l_val(w_{s+1})]: per-step utilities on the realised trajectory (DESIGN §2.2), so, unlike
    `leave_one_out_window`, the later batches' reaction to the moved weights is not in it.
    """
    rep = _CarryReplay(window)
    ex_grads = rep.record(window.batches)
    return np.array([rep.value(gi, len(window.batches)) for gi in ex_grads])


class _CarryReplay:
    """A copy of the model and optimizer that records the real trajectory over K+1 batches and
    replays each step from its saved state with one example's share removed."""

    def __init__(self, w: ReplayWindow) -> None:
        self.dev = next(w.model.parameters()).device
        self.opt_type = type(w.optimizer)
        self.max_grad_norm, self.lrs = w.max_grad_norm, w.lrs
        self.m, self.opt, self.groups = _copy_live(w.model, w.optimizer)
        self.mp = [p for g in self.groups for p in g["params"]]
        self.vb = prepare_batch(w.val_batch, self.dev)
        # the real trajectory: state before each step, raw batch gradients, loss after each step
        self.snaps: list = []
        self.raw: list[list[torch.Tensor]] = []
        self.after: list[float] = []

    def val_loss(self) -> float:
        with torch.no_grad():
            return float(per_example_loss(self.m, self.vb).mean().double())

    def clipped(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.max_grad_norm is None:
            return grads
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        coef = torch.clamp(self.max_grad_norm / (norm + 1e-6), max=1.0)
        return [g * coef for g in grads]

    def _dense(self, grads) -> list[torch.Tensor]:
        return [g if g is not None else torch.zeros_like(p) for p, g in zip(self.mp, grads)]

    def record(self, batches) -> list[list[torch.Tensor]]:
        """Take the real steps; return each step-t example's gradient share (loss_i / n)."""
        mp, opt, ex_grads = self.mp, self.opt, []
        for j, rb in enumerate(batches):
            b = prepare_batch(rb, self.dev)
            _set_lr(opt, self.lrs, j)
            self.snaps.append(([p.detach().clone() for p in mp], copy.deepcopy(opt.state_dict())))
            opt.zero_grad(set_to_none=True)
            losses = per_example_loss(self.m, b)
            n = losses.shape[0]
            if j == 0:
                ex_grads = [
                    self._dense(
                        torch.autograd.grad(losses[i] / n, mp, retain_graph=True, allow_unused=True)
                    )
                    for i in range(n)
                ]
            grads = torch.autograd.grad(losses.mean(), mp, allow_unused=True)
            self.raw.append(self._dense(grads))
            for p, g in zip(mp, self.clipped(self.raw[-1])):
                p.grad = g.clone()
            opt.step()
            self.after.append(self.val_loss())
        return ex_grads

    def step_from(self, j: int, grads, dm=None, dv=None) -> float:
        """Target loss after step j taken from its saved state with `grads` (and m, v less dm, dv)."""
        w, st = self.snaps[j]
        with torch.no_grad():
            for p, s in zip(self.mp, w):
                p.copy_(s)
        o = self.opt_type(self.groups)
        o.load_state_dict(copy.deepcopy(st))
        _set_lr(o, self.lrs, j)
        if dm is not None:
            for p, a, c in zip(self.mp, dm, dv):
                o.state[p]["exp_avg"].sub_(a)
                o.state[p]["exp_avg_sq"].sub_(c).clamp_(min=0)
        for p, g in zip(self.mp, grads):
            p.grad = g.clone()
        o.step()
        return self.val_loss()

    def value(self, gi: list[torch.Tensor], n_steps: int) -> float:
        """Σ_s of the target-loss change when the example with gradient share `gi` is removed."""
        mp, raw = self.mp, self.raw
        b1 = {id(p): float(g["betas"][0]) for g in self.opt.param_groups for p in g["params"]}
        b2 = {id(p): float(g["betas"][1]) for g in self.opt.param_groups for p in g["params"]}
        full0 = self.clipped(raw[0])
        red = self.clipped([g - e for g, e in zip(raw[0], gi)])
        total = self.step_from(0, red) - self.after[0]
        d1 = [a - r for a, r in zip(full0, red)]  # i's share of the clipped step-t gradient
        d2 = [a * a - r * r for a, r in zip(full0, red)]
        for j in range(1, n_steps):
            k = j - 1
            dm = [(b1[id(p)] ** k) * (1 - b1[id(p)]) * d for p, d in zip(mp, d1)]
            dv = [(b2[id(p)] ** k) * (1 - b2[id(p)]) * d for p, d in zip(mp, d2)]
            total += self.step_from(j, self.clipped(raw[j]), dm, dv) - self.after[j]
        return total
