"""The speed options of InRunScorer: low-rank val side and a target gradient every k steps."""

from __future__ import annotations

import copy

import pytest
import torch

from adamshap_core import InRunScorer
from adamshap_core.batch import logits_of, per_example_loss_from_logits, prepare_batch
from adamshap_core.ghost import GhostCapture
from adamshap_core.lowrank import LowRank, randomized_lowrank, use_lowrank

from .conftest import make_batch


def make_opt(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)


def test_lowrank_contraction_equals_exact_with_exact_factors(gpt2):
    """Contracting through factors L R = G (R = identity) equals the exact contraction."""
    cap = GhostCapture(gpt2)
    b = prepare_batch(make_batch(3, 10, seed=3))
    cap.active = True
    per_example_loss_from_logits(logits_of(gpt2, b), b).sum().backward()
    cap.active = False
    g = torch.Generator().manual_seed(0)
    val_side = {
        id(p): torch.randn((2, *p.shape), generator=g, dtype=p.dtype) for p in gpt2.parameters()
    }
    exact = cap.contract(val_side, 3, dtype=torch.float64)
    low = {}
    for k in cap.matmul_weights():
        G = val_side[k]
        eye = torch.eye(G.shape[2], dtype=G.dtype).expand(2, -1, -1)
        low[k] = LowRank(G.clone(), eye.contiguous())
    assert low and any(w.shape[0] != w.shape[1] for w in cap.matmul_weights().values())
    got = cap.contract(val_side, 3, dtype=torch.float64, low=low)
    assert torch.allclose(got, exact, rtol=1e-10, atol=1e-12)
    cap.remove()


def test_randomized_lowrank_recovers_a_low_rank_matrix_deterministically():
    g = torch.Generator().manual_seed(1)
    G = torch.randn(2, 40, 3, generator=g, dtype=torch.float64) @ torch.randn(
        2, 3, 30, generator=g, dtype=torch.float64
    )
    f1 = randomized_lowrank(G, 3, torch.Generator().manual_seed(7))
    f2 = randomized_lowrank(G, 3, torch.Generator().manual_seed(7))
    assert f1.left.shape == (2, 40, 3) and f1.right.shape == (2, 3, 30)
    assert torch.allclose(f1.left @ f1.right, G, atol=1e-9)
    assert torch.equal(f1.left, f2.left) and torch.equal(f1.right, f2.right)


def test_use_lowrank_rules():
    assert not use_lowrank((256, 256), 8, "exact")
    assert use_lowrank((256, 256), 8, "auto") and use_lowrank((256, 256), 32, "lowrank")
    assert not use_lowrank((256, 256), 32, "auto")  # 512·32 is not < 256²/4
    assert not use_lowrank((256,), 8, "lowrank")


def test_lowrank_scorer_tracks_exact_and_is_seeded(gpt2):
    val, batch = make_batch(3, 12, seed=5), make_batch(6, 12, seed=6)
    runs = []
    for opts in (
        {},
        {"contraction": "lowrank", "rank": 16},
        {"contraction": "lowrank", "rank": 16},
    ):
        m = copy.deepcopy(gpt2)
        sc = InRunScorer(m, make_opt(m), val, estimators=("adam", "sgd"), **opts)
        runs.append(sc.step(batch).values)
        sc.close()
    exact, low1, low2 = runs
    for e in exact:
        assert torch.equal(low1[e], low2[e])
        r = torch.corrcoef(torch.stack([exact[e], low1[e]]))[0, 1]
        assert r > 0.9, (e, float(r))


def test_val_grad_every_reuses_the_target_gradient(gpt2, monkeypatch):
    val = make_batch(3, 12, seed=5)
    batches = [make_batch(4, 12, seed=10 + i) for i in range(4)]
    m_exact = copy.deepcopy(gpt2)
    exact = InRunScorer(m_exact, make_opt(m_exact), val, estimators=("adam",))
    sc = InRunScorer(gpt2, make_opt(gpt2), val, estimators=("adam",), val_grad_every=3)
    calls = []
    orig = sc._val_grad
    monkeypatch.setattr(sc, "_val_grad", lambda: calls.append(1) or orig())
    got = [sc.step(b).values["adam"] for b in batches]
    want = [exact.step(b).values["adam"] for b in batches]
    assert len(calls) == 2  # steps 0 and 3
    assert torch.allclose(got[0], want[0], rtol=1e-12)
    assert torch.allclose(got[3], want[3], rtol=1e-12)
    assert not torch.allclose(got[1], want[1], rtol=1e-6)  # stale gradient in between


def test_speed_options_resume_identically(gpt2):
    val = make_batch(3, 12, seed=5)
    batches = [make_batch(4, 12, seed=20 + i) for i in range(4)]
    opts = {"val_grad_every": 3, "contraction": "lowrank", "rank": 4}
    opt = make_opt(gpt2)
    sc = InRunScorer(gpt2, opt, val, estimators=("adam",), **opts)
    sc.step(batches[0])
    snap = (copy.deepcopy(gpt2.state_dict()), copy.deepcopy(opt.state_dict()), sc.state_dict())
    want = [sc.step(b).values["adam"] for b in batches[1:]]
    sc.close()
    gpt2.load_state_dict(snap[0])
    opt2 = make_opt(gpt2)
    opt2.load_state_dict(snap[1])
    sc2 = InRunScorer(gpt2, opt2, val, estimators=("adam",), **opts)
    sc2.load_state_dict(snap[2])
    got = [sc2.step(b).values["adam"] for b in batches[1:]]
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-10)


@pytest.mark.parametrize("opts", [{"contraction": "gram"}, {"val_grad_every": 0}, {"rank": 0}])
def test_bad_speed_options_raise(gpt2, opts):
    with pytest.raises(ValueError):
        InRunScorer(gpt2, make_opt(gpt2), make_batch(2, 8), **opts)
