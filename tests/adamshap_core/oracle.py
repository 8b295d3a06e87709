"""Independent oracles for the core tests: torch.func per-example gradients and real optimizer steps."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from adamshap_core.batch import per_example_loss, per_example_loss_from_logits, prepare_batch


def per_example_grads(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    """g_i = (1/n) ∇ l_i for every named parameter, via torch.func.vmap over single examples."""
    b = prepare_batch(batch, next(model.parameters()).device)
    n = b["input_ids"].shape[0]
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p, ids, attn, lmask, pos):
        one = {
            "input_ids": ids[None],
            "attention_mask": attn[None],
            "loss_mask": lmask[None],
            "position_ids": pos[None],
        }

        out = functional_call(
            model,
            p,
            (),
            {
                "input_ids": one["input_ids"],
                "attention_mask": one["attention_mask"],
                "position_ids": one["position_ids"],
            },
            tie_weights=True,
        )
        logits = out.logits if hasattr(out, "logits") else out
        return per_example_loss_from_logits(logits, one)[0] / n

    keys = ("input_ids", "attention_mask", "loss_mask", "position_ids")
    try:
        return vmap(grad(loss_one), in_dims=(None, 0, 0, 0, 0))(params, *(b[k] for k in keys))
    except RuntimeError:
        # HF attention-mask code branches on data, which vmap cannot trace: loop over examples.
        rows = [grad(loss_one)(params, *(b[k][i] for k in keys)) for i in range(n)]
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def val_grad(model: nn.Module, val_batch: dict) -> dict[str, torch.Tensor]:
    """Gradient of the mean target loss w.r.t. every named parameter."""
    b = prepare_batch(val_batch, next(model.parameters()).device)
    names = [k for k, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    loss = per_example_loss(model, b).mean()
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return {k: (g if g is not None else torch.zeros_like(p)) for k, g, p in zip(names, gs, params)}


def real_step_copy(model, optimizer, batch, max_grad_norm=None):
    """Take a real step on deep copies; return (model copy after, optimizer copy after, kappa)."""
    m2 = copy.deepcopy(model)
    d = optimizer.defaults
    opt2 = type(optimizer)(
        m2.parameters(), lr=d["lr"], betas=d["betas"], eps=d["eps"], weight_decay=d["weight_decay"]
    )
    opt2.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    b = prepare_batch(batch, next(m2.parameters()).device)
    opt2.zero_grad()
    per_example_loss(m2, b).mean().backward()
    kappa = 1.0
    if max_grad_norm is not None:
        norm = float(torch.nn.utils.clip_grad_norm_(m2.parameters(), max_grad_norm))
        kappa = min(1.0, max_grad_norm / (norm + 1e-6))
    opt2.step()
    return m2, opt2, kappa


def adam_P(model_after, opt_after, lr, beta1, beta2, eps, kappa) -> dict[str, torch.Tensor]:
    """P = c1 κ / (sqrt(v̂_t)+ε), read from the real optimizer's state after its step."""
    out = {}
    for name, p in model_after.named_parameters():
        st = opt_after.state[p]
        t = int(st["step"])
        vhat = st["exp_avg_sq"] / (1 - beta2**t)
        c1 = (1 - beta1) / (1 - beta1**t)
        out[name] = c1 * kappa / (vhat.sqrt() + eps)
    return out


def contract(pe: dict[str, torch.Tensor], G: dict[str, torch.Tensor], names=None) -> torch.Tensor:
    """Σ_params <G, g_i> for each example i, with explicit per-example gradients."""
    names = names or list(G)
    total = None
    for k in names:
        part = (pe[k].flatten(1) * G[k].flatten()[None]).sum(1)
        total = part if total is None else total + part
    return total
