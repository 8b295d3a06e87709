"""The in-place preconditioner gives bit for bit the values of the plain formula it replaced."""

from __future__ import annotations

import pytest
import torch

from adamshap_core.preconditioner import (
    group_hyper,
    loo_preconditioner,
    preconditioner,
    shared_step_params,
)

from .conftest import TinyLM, make_batch


def _plain(opt: torch.optim.Optimizer, kappa: float) -> dict[int, torch.Tensor]:
    """lr·P written as the plain expression (one allocation per operation)."""
    out = {}
    for group in opt.param_groups:
        h = group_hyper(opt, group)
        for p in group["params"]:
            if p.grad is None:
                continue
            st = opt.state.get(p, {})
            t = int(st.get("step", 0)) + 1
            v = st.get("exp_avg_sq", torch.zeros_like(p))
            g = p.grad if h.decoupled or not h.weight_decay else p.grad + h.weight_decay * p
            bc1, bc2 = 1 - h.beta1**t, 1 - h.beta2**t
            s = (v * h.beta2 + (1 - h.beta2) * g * g).sqrt() / (bc2**0.5)
            out[id(p)] = (h.lr * (1 - h.beta1) / bc1 * kappa) / (s + h.eps)
    return out


def _train_grad(model: torch.nn.Module, seed: int) -> None:
    b = make_batch(4, 10, seed=seed)
    pos = torch.arange(10).expand(4, 10)
    logits = model(b["input_ids"], position_ids=pos)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["input_ids"].flatten()).backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("adamw", [True, False])
def test_preconditioner_is_bitwise_the_plain_formula(dtype, adamw):
    torch.manual_seed(0)
    model = TinyLM().to(dtype)
    cls = torch.optim.AdamW if adamw else torch.optim.Adam
    opt = cls(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    for step in range(3):  # step 0: no optimizer state yet (v = 0)
        opt.zero_grad(set_to_none=True)
        _train_grad(model, seed=step)
        for kappa in (1.0, 0.37):
            ref, got = _plain(opt, kappa), preconditioner(opt, kappa)
            assert ref.keys() == got.keys()
            for k in ref:
                assert torch.equal(ref[k], got[k]), (step, kappa)
        opt.step()


def test_preconditioner_leaves_the_optimizer_and_gradients_untouched():
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    _train_grad(model, seed=0)
    opt.step()
    _train_grad(model, seed=1)
    before = {k: {n: t.clone() for n, t in s.items()} for k, s in opt.state.items()}
    grads = [p.grad.clone() for p in model.parameters()]
    preconditioner(opt, 1.0)
    loo_preconditioner(opt, 1.0)
    shared_step_params(opt)
    for p, s in opt.state.items():
        for n, t in s.items():
            assert torch.equal(t, before[p][n]), n
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)
