"""Unrolled K-step values (unrolled.py) against real AdamW, the replay truth and torch.func.

Float64 tiny GPT-2. The unrolled value is the first-order term of `leave_one_out_window` in
the removal, so it must match a scaled-removal replay (ε·g_i removed, divided by ε) almost
exactly, track the whole-example removal closely, and reduce at K = 0 to the one-step
`adam-loo` value with the second moment linearised.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from oracle import per_example_grads

from adamshap_core import InRunScorer, ReplayWindow, leave_one_out_window, plain_step
from adamshap_core.batch import per_example_loss, prepare_batch
from adamshap_core.ground_truth import _replay
from adamshap_core.unrolled import (
    adam_update,
    batch_grad,
    clip_by_norm,
    hypers,
    param_names,
    read_state,
    unrolled_window_values,
)

from .conftest import make_batch
from .test_momentum import bigram_batch


def _r(a, b) -> float:
    return float(np.corrcoef(np.asarray(a), np.asarray(b))[0, 1])


@pytest.fixture
def trained(gpt2):
    opt = torch.optim.AdamW(gpt2.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    for s in range(25):
        plain_step(gpt2, opt, bigram_batch(12, seed=100 + s), 1.0)
    return gpt2, opt


@pytest.mark.parametrize("kind", ["adamw", "adam"])
@pytest.mark.parametrize("clip", [None, 0.05])
def test_functional_update_equals_torch_optimizer(gpt2, kind, clip):
    """Four real steps from an empty state (lr moved each step) and the functional update fed
    the same raw gradients: same weights, m, v and step counts as torch after every step.

    The gradients are shared because GPT-2's attention key bias has a zero true gradient: Adam
    normalises its float rounding to lr-sized steps, so two gradient computations that differ
    only in rounding part there. `batch_grad` itself is checked against backward() at the
    start of every step."""
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    opt = cls(gpt2.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    names = param_names(gpt2, opt)
    params = [p for g in opt.param_groups for p in g["params"]]
    st = read_state(opt)
    clipped = []
    for j, lr in enumerate([3e-3, 2e-3, 1e-3, 5e-4]):
        b = prepare_batch(make_batch(4, 12, seed=10 + j))
        mine = batch_grad(gpt2, names, [p.detach() for p in params], b)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        per_example_loss(gpt2, b).mean().backward()
        raw = [p.grad.detach().clone() for p in params]
        for name, got, want in zip(names, mine, raw):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14, msg=name)
        if clip is not None:
            clipped.append(float(torch.nn.utils.clip_grad_norm_(params, clip)) > clip)
        opt.step()
        st = adam_update(st, clip_by_norm(raw, clip), hypers(opt, lr))
        real = read_state(opt)
        assert st.steps == real.steps == [j + 1] * len(names)
        for name, *pairs in zip(names, zip(st.w, real.w), zip(st.m, real.m), zip(st.v, real.v)):
            for got, want in pairs:
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-15, msg=name)
    assert clip is None or all(clipped)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_unrolled_values_are_the_first_order_replay_truth(trained, clip):
    """K = 4 from a trained state: the scaled-removal replay (ε·g_i) matches to first order, the
    whole-example removal tracks it (its second-order part is what is left), and the full-batch
    replay loss is the one the unrolled forward reaches."""
    model, opt = trained
    K, eps = 4, 1e-3
    batches = [bigram_batch(8, seed=300 + j) for j in range(K + 1)]
    val = bigram_batch(6, seed=12)
    lrs = [1e-3, 9e-4, 8e-4, 7e-4, 6e-4]
    before = copy.deepcopy(model.state_dict())
    window = ReplayWindow(model, opt, batches, val, clip, lrs)
    un = unrolled_window_values(window)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert un.K == K
    full = _replay(window, None)
    assert un.loss_full == pytest.approx(full, rel=1e-12)
    scaled = leave_one_out_window(window, removal_weight=eps) / eps
    rel = np.linalg.norm(un.values - scaled) / np.linalg.norm(scaled)
    assert _r(un.values, scaled) > 0.9999 and rel < 1e-2, (_r(un.values, scaled), rel)
    whole = leave_one_out_window(window)
    assert _r(un.values, whole) > 0.95, _r(un.values, whole)


def test_ghost_contraction_equals_per_example_gradients(trained):
    """The values are -⟨u_t, g_i⟩ contracted from step t's layer records; torch.func agrees."""
    model, opt = trained
    batch = make_batch(5, 12, pad_lengths=[12, 9, 12, 5, 11], seed=7)
    batches = [batch] + [bigram_batch(6, seed=40 + j) for j in range(2)]
    un = unrolled_window_values(ReplayWindow(model, opt, batches, bigram_batch(4, seed=2), 1.0))
    pe = per_example_grads(model, batch)
    want = -sum((pe[k].flatten(1) * u.flatten()[None]).sum(1) for k, u in un.u.items())
    want = want.detach().numpy()
    assert np.abs(want).max() > 0
    assert np.allclose(un.values, want, rtol=0, atol=1e-9 * np.abs(want).max())


def test_no_later_steps_is_one_step_adam_loo_with_second_moment(trained):
    """K = 0 (clip active): -⟨∂l_val(w_{t+1})/∂G, g_i⟩ is the one-step `adam-loo` value with
    Adam's second moment and the clip coefficient linearised (scorer.py)."""
    model, opt = trained
    batch, val = bigram_batch(6, seed=77), bigram_batch(4, seed=78)
    un = unrolled_window_values(ReplayWindow(model, opt, [batch], val, 0.05))
    sc = InRunScorer(
        model, opt, val, estimators=("adam-loo",), max_grad_norm=0.05, loo_second_moment=True
    )
    out = sc.step(batch)
    sc.close()
    assert out.clipped
    want = out.values["adam-loo"].numpy()
    assert np.allclose(un.values, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_rejects_other_optimizers(gpt2):
    opt = torch.optim.SGD(gpt2.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="Adam"):
        unrolled_window_values(ReplayWindow(gpt2, opt, [make_batch(2, 8)], make_batch(2, 8)))
