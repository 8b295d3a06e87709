"""Gradient sketches vs torch.func per-example gradients projected by the same matrices."""

from __future__ import annotations

import pytest
import torch
from oracle import per_example_grads

from adamshap_core import build_model
from adamshap_core.gram import rank1_factors
from adamshap_core.sketch import GradientSketch, adam_sqrt_preconditioner
from adamshap_core.training import plain_step

from .conftest import TinyLM, V, make_batch


def _trained(model, steps: int = 3):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    for s in range(steps):
        plain_step(model, opt, make_batch(4, 12, seed=10 + s), max_grad_norm=1.0)
    return opt


def _oracle_sketch(sk: GradientSketch, model, batch, sqrt_p) -> torch.Tensor:
    """The sketch formed from explicit per-example gradients and the sketcher's own matrices."""
    n = batch["input_ids"].shape[0]
    pe = {k: v * n for k, v in per_example_grads(model, batch).items()}  # ∇l_i
    by_id = {id(p): name for name, p in model.named_parameters()}
    out = torch.zeros(n, sk.dim, dtype=torch.float64)
    for pid, sl in sk.slices.items():
        p = dict(model.named_parameters())[by_id[pid]]
        g = pe[by_id[pid]]
        if p.dim() == 2:
            if sqrt_p is not None:
                r, c = rank1_factors(sqrt_p[pid] ** 2)
                g = g * r.sqrt()[None, :, None] * c.sqrt()[None, None, :]
            r0 = sk._gauss(p, 0, p.shape[0], sk.k)
            r1 = sk._gauss(p, 1, p.shape[1], sk.k)
            out[:, sl] = torch.einsum("ak,nab,bl->nkl", r0, g, r1).reshape(n, -1)
        else:
            if sqrt_p is not None:
                g = g * sqrt_p[pid]
            if g.shape[1] > sk.k * sk.k:
                g = g @ sk._gauss(p, 0, g.shape[1], sk.k * sk.k)
            out[:, sl] = g
    return out


@pytest.mark.parametrize("precondition", [False, True])
@pytest.mark.parametrize("kind", ["gpt2", "tinylm"])
def test_sketch_equals_projected_per_example_gradients(kind, precondition):
    torch.manual_seed(0)
    model = build_model("tiny", V, 32, seed=0).double() if kind == "gpt2" else TinyLM().double()
    opt = _trained(model)
    sqrt_p = adam_sqrt_preconditioner(opt) if precondition else None
    batch = make_batch(3, 12, pad_lengths=[12, 7, 9], seed=3)
    with GradientSketch(model, k=4, seed=1, dtype=torch.float64) as sk:
        got, losses = sk.sketch(batch, sqrt_p)
    want = _oracle_sketch(sk, model, batch, sqrt_p)
    assert got.shape == (3, sk.dim) and losses.shape == (3,)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_sketch_inner_products_approximate_preconditioned_gradient_products():
    torch.manual_seed(0)
    model = TinyLM(d=8).double()
    opt = _trained(model)
    sqrt_p = adam_sqrt_preconditioner(opt)
    batch = make_batch(8, 10, seed=4)
    n = 8
    pe = {k: v * n for k, v in per_example_grads(model, batch).items()}
    exact = torch.zeros(n, n, dtype=torch.float64)
    for name, p in model.named_parameters():
        P = sqrt_p[id(p)] ** 2
        if p.dim() == 2:
            r, c = rank1_factors(P)
            P = r[:, None] * c[None, :]
        g = pe[name].flatten(1)
        exact += (g * P.flatten()[None]) @ g.T
    with GradientSketch(model, k=48, seed=0, dtype=torch.float64) as sk:
        s, _ = sk.sketch(batch, sqrt_p)
    approx = s @ s.T
    iu = torch.triu_indices(n, n)
    r = torch.corrcoef(torch.stack([exact[iu[0], iu[1]], approx[iu[0], iu[1]]]))[0, 1]
    assert r > 0.95


def test_sketch_leaves_grads_and_weights_untouched():
    model = TinyLM().double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    with GradientSketch(model, k=3) as sk:
        sk.sketch(make_batch(2, 8, seed=1))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.all(p.grad == 0.5) for p in model.parameters())


def test_skip_drops_a_parameter_from_the_sketch():
    model = TinyLM().double()
    with GradientSketch(model, k=3) as full, GradientSketch(model, k=3, skip=("wte",)) as part:
        assert part.dim == full.dim - 9
        names = {id(p): n for n, p in model.named_parameters()}
        assert "wte.weight" not in {names[i] for i in part.slices}
