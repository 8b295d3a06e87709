"""Ground truth: real optimizer steps from a saved state, efficiency, and agreement with the scorer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from adamshap_core import InRunScorer, leave_one_out, monte_carlo_shapley, plain_step

from .conftest import make_batch  # noqa: F401

V = 53


def bigram_batch(n, T=16, seed=0):
    """A learnable toy language: each token is a noisy function of the previous one."""
    g = torch.Generator().manual_seed(seed)
    x = [torch.randint(0, V, (n, 1), generator=g)]
    for _ in range(T - 1):
        x.append((x[-1] * 7 + 3 + torch.randint(0, 3, (n, 1), generator=g)) % V)
    return {"input_ids": torch.cat(x, 1)}


@pytest.fixture
def trained(gpt2):
    opt = torch.optim.AdamW(gpt2.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    for s in range(25):
        plain_step(gpt2, opt, bigram_batch(12, seed=100 + s), 1.0)
    return gpt2, opt


def test_truth_leaves_model_and_optimizer_untouched(trained):
    model, opt = trained
    before_p = copy.deepcopy(model.state_dict())
    before_o = copy.deepcopy(opt.state_dict())
    leave_one_out(model, opt, bigram_batch(6, seed=1), bigram_batch(4, seed=2), 1.0)
    monte_carlo_shapley(model, opt, bigram_batch(6, seed=1), bigram_batch(4, seed=2), 1.0, 4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before_p[k]), k
    after_o = opt.state_dict()
    for pid, st in before_o["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(st[key], after_o["state"][pid][key])


def test_loo_matches_a_hand_made_real_step(trained):
    """LOO of example 0 equals loss(step on B∖{0}) - loss(step on B) done by hand."""
    model, opt = trained
    batch, val = bigram_batch(5, seed=3), bigram_batch(4, seed=4)
    loo = leave_one_out(model, opt, batch, val, 1.0)

    def loss_after(b):
        m = copy.deepcopy(model)
        o = torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
        o.load_state_dict(copy.deepcopy(opt.state_dict()))
        from adamshap_core.batch import per_example_loss, prepare_batch

        pb = prepare_batch(b)
        o.zero_grad()
        # the per-example normaliser stays 1/n with example 0 removed
        (per_example_loss(m, pb)[1:].sum() / 5 if b is batch else None).backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        o.step()
        with torch.no_grad():
            return float(per_example_loss(m, prepare_batch(val)).mean())

    def loss_full():
        m = copy.deepcopy(model)
        o = torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
        o.load_state_dict(copy.deepcopy(opt.state_dict()))
        plain_step(m, o, batch, 1.0)
        from adamshap_core.batch import per_example_loss, prepare_batch

        with torch.no_grad():
            return float(per_example_loss(m, prepare_batch(val)).mean())

    assert loo[0] == pytest.approx(loss_after(batch) - loss_full(), rel=1e-6, abs=1e-12)


def test_shapley_efficiency_and_stderr(trained):
    model, opt = trained
    truth = monte_carlo_shapley(
        model, opt, bigram_batch(6, seed=5), bigram_batch(4, seed=6), 1.0, 8
    )
    assert truth.values.sum() == pytest.approx(truth.u_full - truth.u_empty, rel=1e-9, abs=1e-12)
    assert truth.n_permutations == 8
    assert np.all(np.isfinite(truth.stderr)) and np.all(truth.stderr >= 0)


def test_estimators_track_their_truths(trained):
    """On a trained tiny model at lr 1e-3: adam-loo tracks LOO, adam2 tracks Shapley."""
    model, opt = trained
    batch, val = bigram_batch(12, seed=11), bigram_batch(8, seed=12)
    loo = leave_one_out(model, opt, batch, val, 1.0)
    shap = monte_carlo_shapley(model, opt, batch, val, 1.0, n_permutations=16, seed=0)
    sc = InRunScorer(model, opt, val, max_grad_norm=1.0)
    out = sc.step(batch)
    r_loo = np.corrcoef(out.values["adam-loo"].numpy(), loo)[0, 1]
    r_shap = np.corrcoef(out.values["adam2"].numpy(), shap.values)[0, 1]
    assert r_loo > 0.98, r_loo
    assert r_shap > 0.98, r_shap
