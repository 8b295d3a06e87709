"""Unrolled K-step values: first-order K-step leave-one-out through the replayed AdamW steps.

`leave_one_out_window` (ground_truth.py) removes example i from step t (its gradient dropped,
the batch normaliser 1/n kept) and replays steps t+1..t+K with real AdamW. Its value is a
function of the step-t batch gradient G = Σ_j g_j (g_j = ∇l_j / n) alone: removing i moves G
by -g_i. To first order,

    value_i = l_val(w_{t+K+1}; G - g_i) - l_val(w_{t+K+1}; G) ≈ -⟨u_t, g_i⟩,
    u_t = ∂ l_val(w_{t+K+1}) / ∂G,

where w_{t+K+1} is reached from the live state by AdamW steps written with differentiable torch
ops: step t's clip and update (m, v, bias corrections, weight decay) as functions of G, then K
replayed steps whose batch gradients are taken with `create_graph`, so the reverse pass holds
the later batches' reaction to the moved weights (one Hessian-vector product per replayed step)
as well as i's share of m and v. One reverse pass gives the parameter-sized u_t; ⟨u_t, g_i⟩ for
every i is then one ghost contraction of step t's layer records (ghost.py), the same
contraction that values an ordinary step: no per-example gradient is formed.

Cost per valued step: K+1 batch forward/backward passes with a kept graph, one target pass,
and a reverse pass through all of them (K double-backward passes, i.e. K Hessian-vector
products); memory of K steps' graphs. Meant as a ground-truth-quality estimator for
benchmarks and small runs (docs/method.md §12), not for the scored training loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from .batch import per_example_loss, per_example_loss_from_logits, prepare_batch
from .ghost import GhostCapture
from .preconditioner import check_optimizer, group_hyper
from .window import ReplayWindow


@dataclass(frozen=True)
class AdamHyper:
    """One parameter's AdamW/Adam hyper-parameters for one step."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    decoupled: bool  # AdamW (decay applied to the weights) vs Adam (L2 term in the gradient)


@dataclass
class AdamState:
    """Weights and Adam moments as plain tensors, one entry per optimizer parameter."""

    w: list[torch.Tensor]
    m: list[torch.Tensor]
    v: list[torch.Tensor]
    steps: list[int]  # steps taken so far (torch's state["step"])


@dataclass
class UnrolledWindow:
    """First-order K-step leave-one-out values of the examples of step t."""

    values: np.ndarray  # [n]: ≈ l_val without i − with i after step t+K (positive = i helped)
    u: dict[str, torch.Tensor]  # parameter name -> ∂ l_val(w_{t+K+1}) / ∂G, G the step-t gradient
    loss_full: float  # l_val(w_{t+K+1}) with the whole batch (the replay's reference loss)
    K: int


def read_state(optimizer: torch.optim.Optimizer) -> AdamState:
    """The live weights and moments (zeros and step 0 where the optimizer has no state yet)."""
    w, m, v, steps = [], [], [], []
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            w.append(p.detach().clone())
            m.append(st["exp_avg"].detach().clone() if "exp_avg" in st else torch.zeros_like(p))
            v.append(
                st["exp_avg_sq"].detach().clone() if "exp_avg_sq" in st else torch.zeros_like(p)
            )
            s = st.get("step", 0)
            steps.append(int(s.item()) if torch.is_tensor(s) else int(s))
    return AdamState(w, m, v, steps)


def hypers(optimizer: torch.optim.Optimizer, lr: float | None = None) -> list[AdamHyper]:
    """Per optimizer parameter, the hyper-parameters of its group (`lr` overrides every group's)."""
    out = []
    for group in optimizer.param_groups:
        h = group_hyper(optimizer, group)
        hp = AdamHyper(
            h.lr if lr is None else float(lr), h.beta1, h.beta2, h.eps, h.weight_decay, h.decoupled
        )
        out += [hp] * len(group["params"])
    return out


def clip_by_norm(grads: list[torch.Tensor], max_norm: float | None) -> list[torch.Tensor]:
    """`clip_grad_norm_` as a differentiable function: grads · min(1, c / (‖grads‖ + 1e-6))."""
    if max_norm is None:
        return grads
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return [g * coef for g in grads]


def _sqrt(v: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero derivative where v == 0 (an entry no gradient has reached yet)."""
    tiny = torch.finfo(v.dtype).tiny
    return torch.where(v > 0, v.clamp(min=tiny).sqrt(), torch.zeros_like(v))


def adam_update(state: AdamState, grads: list[torch.Tensor], hp: list[AdamHyper]) -> AdamState:
    """One torch.optim.Adam/AdamW step (non-amsgrad) with out-of-place, differentiable ops."""
    w2, m2, v2, s2 = [], [], [], []
    for w, m, v, s, g, h in zip(state.w, state.m, state.v, state.steps, grads, hp, strict=True):
        s = s + 1
        if h.weight_decay:
            if h.decoupled:
                w = w * (1 - h.lr * h.weight_decay)
            else:
                g = g + h.weight_decay * w
        m = m + (1 - h.beta1) * (g - m)
        v = v * h.beta2 + (1 - h.beta2) * g * g
        denom = _sqrt(v) / math.sqrt(1 - h.beta2**s) + h.eps
        w = w - (h.lr / (1 - h.beta1**s)) * m / denom
        w2.append(w)
        m2.append(m)
        v2.append(v)
        s2.append(s)
    return AdamState(w2, m2, v2, s2)


def param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The model's name of each optimizer parameter, in optimizer order."""
    name = {id(p): k for k, p in model.named_parameters()}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    missing = [i for i, p in enumerate(params) if id(p) not in name]
    if missing:
        raise ValueError(f"optimizer parameters {missing[:5]} are not parameters of the model")
    return [name[id(p)] for p in params]


def example_losses(
    model: nn.Module, names: list[str], ws: list[torch.Tensor], batch: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Per-example losses [n] of a prepared batch with the model's weights replaced by `ws`."""
    out = functional_call(
        model,
        dict(zip(names, ws, strict=True)),
        (),
        {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "position_ids": batch["position_ids"],
        },
        tie_weights=True,
    )
    logits = out.logits if hasattr(out, "logits") else out
    return per_example_loss_from_logits(logits, batch)


def batch_grad(
    model: nn.Module,
    names: list[str],
    ws: list[torch.Tensor],
    batch: Mapping[str, torch.Tensor],
    create_graph: bool = False,
) -> list[torch.Tensor]:
    """Gradient of the mean per-example loss at weights `ws` (zeros for unreached parameters)."""
    with torch.enable_grad():
        ws_g = [w if w.requires_grad else w.detach().requires_grad_() for w in ws]
        loss = example_losses(model, names, ws_g, batch).mean()
        gs = torch.autograd.grad(loss, ws_g, create_graph=create_graph, allow_unused=True)
    return [g if g is not None else torch.zeros_like(w) for g, w in zip(gs, ws)]


def unrolled_window_values(window: ReplayWindow) -> UnrolledWindow:
    """First-order `leave_one_out_window`: -⟨∂l_val(w_{t+K+1})/∂G, g_i⟩ for each example of step t.

    Same window and conventions as `leave_one_out_window` (`batches` = steps t..t+K from the
    live, pre-step-t state; `lrs` per step; clipping as `clip_grad_norm_` does it). The model
    and optimizer are left untouched. Attention runs on the math kernel of scaled dot-product
    attention, which supports the double backward.
    """
    model, optimizer, batches = window.model, window.optimizer, window.batches
    lrs, max_grad_norm = window.lrs, window.max_grad_norm
    check_optimizer(optimizer)
    if not batches:
        raise ValueError("batches must hold step t and the K steps after it")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    names = param_names(model, optimizer)
    dev = params[0].device
    hp = [hypers(optimizer, None if lrs is None else lrs[j]) for j in range(len(batches))]
    b0 = prepare_batch(batches[0], dev)
    n = b0["input_ids"].shape[0]

    # Step t on the live model: the batch gradient G and the layer records of its backward.
    capture = GhostCapture(model)
    capture.active = True
    try:
        with torch.enable_grad():
            loss = per_example_loss(model, b0).mean()
            G = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        capture.active = False
    records = capture.take_records()
    capture.remove()
    G = [
        (g if g is not None else torch.zeros_like(p)).detach().requires_grad_()
        for g, p in zip(G, params)
    ]

    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        st = adam_update(read_state(optimizer), clip_by_norm(G, max_grad_norm), hp[0])
        for j in range(1, len(batches)):
            gj = batch_grad(model, names, st.w, prepare_batch(batches[j], dev), create_graph=True)
            st = adam_update(st, clip_by_norm(gj, max_grad_norm), hp[j])
        l_val = example_losses(model, names, st.w, prepare_batch(window.val_batch, dev)).mean()
        u = torch.autograd.grad(l_val, G, allow_unused=True)
    u = [(x if x is not None else torch.zeros_like(g)).detach() for x, g in zip(u, G)]

    side = {id(p): -x.unsqueeze(0) for p, x in zip(params, u)}
    C = capture.contract(side, n, dtype=torch.float64, records=records)
    return UnrolledWindow(
        values=C[:, 0].cpu().numpy(),
        u=dict(zip(names, u, strict=True)),
        loss_full=float(l_val.detach().double()),
        K=len(batches) - 1,
    )
