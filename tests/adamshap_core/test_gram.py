"""Gram (T x T) contraction with a rank-1 preconditioner, against torch.func per-example grads."""

from __future__ import annotations

import pytest
import torch
from oracle import adam_P, contract, per_example_grads, real_step_copy, val_grad
from transformers.pytorch_utils import Conv1D

from adamshap_core import InRunScorer, plain_step
from adamshap_core.gram import rank1_factors

from .conftest import make_batch

LR, B1, B2, EPS = 3e-3, 0.9, 0.95, 1e-8


def make_opt(model):
    return torch.optim.AdamW(model.parameters(), lr=LR, betas=(B1, B2), eps=EPS, weight_decay=0.1)


def warm(model, opt, steps=3):
    for s in range(steps):
        plain_step(model, opt, make_batch(6, 12, seed=100 + s), None)


def conv1d_weights(model) -> set[str]:
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, Conv1D)}


def test_rank1_factors_exact_for_rank_one_and_adafactor_otherwise():
    r, c = torch.rand(5, dtype=torch.float64) + 0.1, torch.rand(7, dtype=torch.float64) + 0.1
    P = torch.outer(r, c)
    fr, fc = rank1_factors(P)
    assert torch.allclose(torch.outer(fr, fc), P, rtol=1e-12)
    Q = torch.rand(5, 7, dtype=torch.float64) + 0.1
    fr, fc = rank1_factors(Q)
    approx = torch.outer(fr, fc)
    assert torch.allclose(approx.sum(0), Q.sum(0)) and torch.allclose(approx.sum(1), Q.sum(1))


@pytest.mark.parametrize("chunk", [None, 2])
def test_gram_sgd_equals_the_oracle(gpt2, chunk):
    """sgd's P is the constant lr, so the Gram form is exact: it must match per-example grads."""
    opt = make_opt(gpt2)
    warm(gpt2, opt)
    val = make_batch(3, 12, seed=7, pad_lengths=[12, 8, 5])
    batch = make_batch(5, 12, seed=8, pad_lengths=[12, 3, 9, 12, 7])
    names = [k for k, _ in gpt2.named_parameters()]
    pe, g_val = per_example_grads(gpt2, batch), val_grad(gpt2, val)
    want = contract(pe, {k: LR * g_val[k] for k in names}, names)
    sc = InRunScorer(gpt2, opt, val, estimators=("sgd",), contraction="gram", target_chunk=chunk)
    assert sc._gram_now(), "no layer took the Gram form"
    got = sc.step(batch).values["sgd"]
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12 * want.abs().max())


def test_gram_adam_equals_the_oracle_with_a_rank1_preconditioner(gpt2):
    """adam in Gram form = exact contraction with each Conv1D weight's P replaced by r cᵀ."""
    opt = make_opt(gpt2)
    warm(gpt2, opt)
    val = make_batch(4, 12, seed=7, pad_lengths=[12, 8, 5, 11])
    batch = make_batch(5, 12, seed=8, pad_lengths=[12, 3, 9, 12, 7])
    names = [k for k, _ in gpt2.named_parameters()]
    pe, g_val = per_example_grads(gpt2, batch), val_grad(gpt2, val)
    m_after, opt_after, kappa = real_step_copy(gpt2, opt, batch, None)
    P = adam_P(m_after, opt_after, LR, B1, B2, EPS, kappa)
    grams = conv1d_weights(gpt2)
    side = {}
    for k in names:
        Pk = P[k]
        if k in grams:  # HF Conv1D stores [d_in, d_out]
            r, c = rank1_factors(Pk)
            Pk = torch.outer(r, c)
        side[k] = LR * Pk * g_val[k]
    want = contract(pe, side, names)
    exact = contract(pe, {k: LR * P[k] * g_val[k] for k in names}, names)
    sc = InRunScorer(gpt2, opt, val, estimators=("adam",), contraction="gram")
    assert {id(m) for m in sc._gram_now().values()} == {
        id(m) for m in gpt2.modules() if isinstance(m, Conv1D)
    }
    got = sc.step(batch).values["adam"]
    assert torch.allclose(got, want, rtol=1e-8, atol=1e-10 * want.abs().max())
    assert not torch.allclose(got, exact, rtol=1e-3)  # the rank-1 P is an approximation


def test_gram_rejects_estimators_that_need_later_target_gradients(gpt2):
    with pytest.raises(ValueError, match="gram"):
        InRunScorer(
            gpt2, make_opt(gpt2), make_batch(3, 12), estimators=("adam2",), contraction="gram"
        )


def test_auto_takes_gram_only_where_it_pays(gpt2):
    """tiny GPT-2 (d=128): a 6-token target pays for the Gram form (cheaper than rank 8 too),
    64 rows of 12 do not, and neither does an estimator set that includes adam2."""
    opt = make_opt(gpt2)
    few = InRunScorer(gpt2, opt, make_batch(1, 6), estimators=("adam",), contraction="auto")
    many = InRunScorer(gpt2, opt, make_batch(64, 12), estimators=("adam",), contraction="auto")
    both = InRunScorer(
        gpt2, opt, make_batch(1, 6), estimators=("adam", "adam2"), contraction="auto"
    )
    assert few._gram_now() and not many._gram_now() and not both._gram_now()
