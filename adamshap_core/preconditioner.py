"""Adam's fixed-state preconditioner and the batch-independent part of the step (docs/method.md §2).

Everything is read from a live `torch.optim.Adam`/`AdamW` *before* its `step()`, with the
(already clipped) batch gradient sitting in `.grad`, and nothing in the optimizer is modified.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GroupHyper:
    """Hyper-parameters of one param group as the next `step()` will use them."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    decoupled: bool


def check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Raise a clear error unless the optimizer is a plain Adam/AdamW we can model exactly."""
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        raise TypeError(
            f"InRunScorer needs torch.optim.Adam or AdamW, got {type(optimizer).__name__}"
        )
    for i, g in enumerate(optimizer.param_groups):
        for flag in ("amsgrad", "maximize", "capturable", "differentiable"):
            if g.get(flag, False):
                raise ValueError(f"param group {i}: {flag}=True is not supported by the scorer")


def group_hyper(optimizer: torch.optim.Optimizer, group: dict) -> GroupHyper:
    """Read lr, betas, eps and weight decay of a group (so schedulers are honoured)."""
    lr = group["lr"]
    lr = float(lr.item()) if torch.is_tensor(lr) else float(lr)
    b1, b2 = (float(b.item()) if torch.is_tensor(b) else float(b) for b in group["betas"])
    decoupled = isinstance(optimizer, torch.optim.AdamW) or bool(
        group.get("decoupled_weight_decay", False)
    )
    return GroupHyper(lr, b1, b2, float(group["eps"]), float(group["weight_decay"]), decoupled)


def _step_count(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> int:
    st = optimizer.state.get(p, {})
    s = st.get("step", 0)
    return int(s.item()) if torch.is_tensor(s) else int(s)


def _moments(optimizer: torch.optim.Optimizer, p: torch.Tensor):
    st = optimizer.state.get(p, {})
    m = st.get("exp_avg")
    v = st.get("exp_avg_sq")
    if m is None:
        m = torch.zeros_like(p, memory_format=torch.preserve_format)
        v = torch.zeros_like(p, memory_format=torch.preserve_format)
    return m, v


def _effective_grad(p: torch.Tensor, h: GroupHyper) -> torch.Tensor:
    g = p.grad
    if h.weight_decay and not h.decoupled:
        g = g + h.weight_decay * p.detach()  # Adam's L2 term enters the moments
    return g


@dataclass
class _StepState:
    """One parameter's Adam quantities for the coming step, computed without touching the state."""

    h: GroupHyper
    m: torch.Tensor  # m_{t-1}
    g: torch.Tensor  # effective (clipped, + L2 for Adam) gradient
    bc1: float  # 1 - β1^t
    bc2: float  # 1 - β2^t
    s: torch.Tensor  # sqrt(v̂_t)

    @property
    def denom(self) -> torch.Tensor:
        return self.s + self.h.eps


def _states(optimizer: torch.optim.Optimizer):
    """Yield (param, _StepState) for every parameter that has a gradient."""
    for group in optimizer.param_groups:
        h = group_hyper(optimizer, group)
        for p in group["params"]:
            if p.grad is None:
                continue
            t = _step_count(optimizer, p) + 1
            m, v = _moments(optimizer, p)
            g = _effective_grad(p, h)
            bc1, bc2 = 1 - h.beta1**t, 1 - h.beta2**t
            yield p, _StepState(h, m, g, bc1, bc2, _sqrt_v_hat(v, g, h.beta2, bc2))


def _sqrt_v_hat(v: torch.Tensor, g: torch.Tensor, beta2: float, bc2: float) -> torch.Tensor:
    """sqrt(β2·v + (1-β2)·g·g) / sqrt(1-β2^t), in one fresh tensor plus one temporary.

    The same elementwise operations in the same order as the plain expression
    `(v * β2 + (1 - β2) * g * g).sqrt() / bc2**0.5`, so bit for bit the same result, but done
    in place: a parameter-sized allocation (a page-faulted one for large tensors on CPU) costs
    about as much as the arithmetic, and the plain form makes five of them per parameter.
    """
    gg = torch.mul(g, 1 - beta2)
    gg.mul_(g)
    s = torch.mul(v, beta2)
    s.add_(gg)
    del gg
    return s.sqrt_().div_(bc2**0.5)


def preconditioner(optimizer: torch.optim.Optimizer, kappa: float) -> dict[int, torch.Tensor]:
    """Return, per parameter id, lr·P with P = c1_t κ / (sqrt(v̂_t) + ε) under the fixed state.

    Formed in place in the sqrt(v̂_t) tensor: `c / x` on a tensor is `x.reciprocal() * c` in
    torch, so `reciprocal_().mul_(c)` gives the identical values without two more allocations.
    """
    out: dict[int, torch.Tensor] = {}
    for p, st in _states(optimizer):
        c = st.h.lr * (1 - st.h.beta1) / st.bc1 * kappa
        out[id(p)] = st.s.add_(st.h.eps).reciprocal_().mul_(c)
    return out


def lr_scale(optimizer: torch.optim.Optimizer) -> dict[int, float]:
    """Per parameter id, the lr of its group (the SGD-style estimator's step size)."""
    out: dict[int, float] = {}
    for group in optimizer.param_groups:
        h = group_hyper(optimizer, group)
        for p in group["params"]:
            out[id(p)] = h.lr
    return out


@torch.no_grad()
def shared_step_params(optimizer: torch.optim.Optimizer) -> dict[int, torch.Tensor]:
    """Return w_t + Δ_0: the step with this batch's gradient removed, state held fixed."""
    out: dict[int, torch.Tensor] = {}
    for p, st in _states(optimizer):
        h = st.h
        m_shared = h.beta1 * st.m
        w = p.detach().clone()
        if h.weight_decay:
            if h.decoupled:
                w.mul_(1 - h.lr * h.weight_decay)
            else:
                m_shared = m_shared + (1 - h.beta1) * h.weight_decay * p.detach()
        w.add_(-(h.lr / st.bc1) * m_shared / st.denom)
        out[id(p)] = w
    return out


def loo_preconditioner(optimizer: torch.optim.Optimizer, kappa: float) -> dict[int, torch.Tensor]:
    """lr·κ·∂(Adam step)/∂ĝ elementwise, with the second moment linearised too (not held fixed).

    Removing example i changes the clipped gradient ĝ by dĝ; the step changes through m_t *and*
    v_t: d step = -lr·[c1/(s+ε) − c2·m̂·ĝ/(s·(s+ε)²)] ⊙ dĝ, with s = sqrt(v̂_t),
    c1 = (1−β1)/(1−β1^t), c2 = (1−β2)/(1−β2^t), m̂ = m_t/(1−β1^t).
    """
    out: dict[int, torch.Tensor] = {}
    for p, st in _states(optimizer):
        h, s, se = st.h, st.s, st.denom
        m_hat = (st.m * h.beta1 + (1 - h.beta1) * st.g) / st.bc1
        c1, c2 = (1 - h.beta1) / st.bc1, (1 - h.beta2) / st.bc2
        v_term = torch.where(s > 0, c2 * m_hat * st.g / (s.clamp(min=1e-38) * se * se), 0.0)
        out[id(p)] = (h.lr * kappa) * (c1 / se - v_term)
    return out
