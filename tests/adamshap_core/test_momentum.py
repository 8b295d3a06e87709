"""Momentum-propagated values against independent oracles, and K-step leave-one-out truth.

Oracle for the carry-over: torch.func per-example gradients of step t, and every later step's
real AdamW state (from deep copies) giving the push that step t's gradient still makes through
`m`: η_s β1^k (1-β1)/(1-β1^s) κ_t / (sqrt(v̂_s)+ε), against that step's target gradient.
Truth: real AdamW replays of K+1 steps without example i (leave_one_out_window).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from oracle import contract, per_example_grads, real_step_copy, val_grad

from adamshap_core import (
    InRunScorer,
    ReplayWindow,
    leave_one_out,
    leave_one_out_carry,
    leave_one_out_window,
    plain_step,
    warmup_cosine,
)
from adamshap_core.batch import per_example_loss, prepare_batch

from .conftest import make_batch

B1, B2, EPS = 0.9, 0.95, 1e-8
V = 53


def _opt(model, kind="adamw", wd=0.1, lr=3e-3):
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=lr, betas=(B1, B2), eps=EPS, weight_decay=wd)


def _step_sides(model, opt, batch, val, clip):
    """One step's real state (copies): push factor D_s = η_s c1_s/(sqrt(v̂_s)+ε) and target grads."""
    names = [k for k, _ in model.named_parameters()]
    lr = opt.param_groups[0]["lr"]
    m_after, opt_after, kappa = real_step_copy(model, opt, batch, clip)
    D = {}
    for k, p in m_after.named_parameters():
        st = opt_after.state[p]
        t = int(st["step"])
        vhat = st["exp_avg_sq"] / (1 - B2**t)
        D[k] = lr * (1 - B1) / (1 - B1**t) / (vhat.sqrt() + EPS)
    start, end = val_grad(model, val), val_grad(m_after, val)
    pe = per_example_grads(model, batch)
    g_sum = {k: pe[k].sum(0) for k in names}
    m_mid = copy.deepcopy(m_after)
    with torch.no_grad():
        for k, p in m_mid.named_parameters():
            p.add_(kappa * D[k] * g_sum[k])  # undo this batch's own push: w_s + Δ_0
    mid = val_grad(m_mid, val)
    grads = {"start": start, "end": end, "mid": {k: 0.5 * (mid[k] + end[k]) for k in names}}
    return dict(D=D, kappa=kappa, lr=lr, grads=grads, pe=pe, g_sum=g_sum, names=names)


GRAD_OF = {"adam": "start", "adam-loo": "end", "adam2": "mid", "sgd": "start"}


def _own(side, e, clipped_lin):
    """Step t's own value (DESIGN §2.2) from explicit per-example gradients."""
    names, g = side["names"], side["grads"][GRAD_OF[e]]
    if e == "sgd":
        u = {k: side["lr"] * g[k] for k in names}
    else:
        u = {k: side["kappa"] * side["D"][k] * g[k] for k in names}
    if clipped_lin and e == "adam-loo":
        gs = side["g_sum"]
        ug = sum((u[k] * gs[k]).sum() for k in names)
        gg = sum((gs[k] ** 2).sum() for k in names)
        u = {k: u[k] - (ug / gg) * gs[k] for k in names}
    return contract(side["pe"], u, names)


def _carry(side_t, side_s, k, e, clipped_lin=False):
    """Carry of step t's examples at step s = t+k: the push through m against step s's gradient.

    With clipping linearised (adam-loo on a clipped step t), removing g_i also moves κ_t, which
    scales the whole batch gradient in m: the push is along g_i − (g·g_i/‖g‖²) g.
    """
    names, g = side_t["names"], side_s["grads"][GRAD_OF[e]]
    if e == "sgd":  # heavy-ball: lr_s β1^k ⟨∇l_val(w_s), g_i⟩
        u = {n: side_s["lr"] * B1**k * g[n] for n in names}
    else:
        u = {n: B1**k * side_t["kappa"] * side_s["D"][n] * g[n] for n in names}
    if clipped_lin and e == "adam-loo":
        gs = side_t["g_sum"]
        ug = sum((u[n] * gs[n]).sum() for n in names)
        gg = sum((gs[n] ** 2).sum() for n in names)
        u = {n: u[n] - (ug / gg) * gs[n] for n in names}
    return contract(side_t["pe"], u, names)


@pytest.mark.parametrize(
    "model_name,kind,wd,clip",
    [("gpt2", "adamw", 0.1, None), ("tinylm", "adamw", 0.1, 1e-3), ("gpt2", "adam", 0.05, 0.5)],
)
def test_propagated_values_match_oracle(request, model_name, kind, wd, clip):
    """Own value + Σ_k carry equals the oracle over a 3-step window, lr scheduled, float64."""
    model = request.getfixturevalue(model_name)
    opt = _opt(model, kind, wd)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=12)
    for s in range(3):
        plain_step(model, opt, make_batch(6, 12, seed=100 + s), clip)
        sched.step()
    K = 3
    val = make_batch(4, 12, seed=7, pad_lengths=[12, 8, 12, 5])
    batches = [make_batch(5, 12, seed=40 + j, pad_lengths=[12, 4, 9, 12, 7]) for j in range(K + 1)]
    sc = InRunScorer(model, opt, val, max_grad_norm=clip, momentum_window=K)
    sides, outs = [], []
    for b in batches:
        sides.append(_step_sides(model, opt, b, val, clip))
        outs.append(sc.step(b))
        sched.step()
    sc.close()
    assert all(not o.propagated for o in outs[:K])
    (got,) = outs[K].propagated
    assert got.step == 0 and got.steps_covered == K
    lin = sides[0]["kappa"] < 1
    if clip == 1e-3:
        assert lin  # the clipping ratio κ_t/κ_s is exercised
    for e in ("sgd", "adam", "adam2", "adam-loo"):
        own = _own(sides[0], e, lin)
        carry = sum(_carry(sides[0], sides[k], k, e, lin) for k in range(1, K + 1))
        want = own + carry
        scale = float(want.abs().max())
        assert float((got.values[e] - want).abs().max()) < 1e-6 * scale, e
        assert float((got.carry[e] - carry).abs().max()) < 1e-6 * float(carry.abs().max()), e
        assert torch.allclose(got.values[e] - got.carry[e], outs[0].values[e], atol=1e-12 * scale)


def test_flush_closes_open_windows_with_the_steps_seen(gpt2):
    """A window cut short by the end of training equals the window of the steps that happened."""
    val = make_batch(3, 12, seed=1)
    batches = [make_batch(4, 12, seed=10 + j) for j in range(3)]
    runs = {}
    for K in (2, 5):
        model = copy.deepcopy(gpt2)
        opt = _opt(model)
        sc = InRunScorer(model, opt, val, estimators=("adam", "sgd"), momentum_window=K)
        closed = [p for b in batches for p in sc.step(b).propagated]
        closed += sc.flush_momentum()
        runs[K] = {p.step: p for p in closed}
        assert sorted(runs[K]) == [0, 1, 2]
        assert sc.flush_momentum() == []
        sc.close()
    assert runs[5][0].steps_covered == 2 and runs[5][2].steps_covered == 0
    for e in ("adam", "sgd"):
        assert torch.allclose(runs[5][0].values[e], runs[2][0].values[e], rtol=1e-12, atol=0)
        assert torch.equal(runs[5][2].carry[e], torch.zeros(4, dtype=torch.float64))


def test_training_is_unchanged_by_the_momentum_window(gpt2):
    ref = copy.deepcopy(gpt2)
    opt_s, opt_p = _opt(gpt2), _opt(ref)
    sc = InRunScorer(gpt2, opt_s, make_batch(3, 12, seed=1), max_grad_norm=0.5, momentum_window=2)
    for s in range(5):
        batch = make_batch(5, 12, seed=50 + s)
        sc.step(batch)
        plain_step(ref, opt_p, batch, 0.5)
    for p, q in zip(gpt2.parameters(), ref.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-12)
    assert len(sc.momentum.pending) == 2  # only K steps' records are held


def test_rejects_negative_window(gpt2):
    with pytest.raises(ValueError, match="momentum_window"):
        InRunScorer(gpt2, _opt(gpt2), make_batch(2, 8), momentum_window=-1)


# --------------------------------------------------------------------------- K-step LOO truth
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


def test_window_truths_with_no_later_steps_are_one_step_loo(trained):
    model, opt = trained
    batch, val = bigram_batch(5, seed=3), bigram_batch(4, seed=4)
    a = leave_one_out(model, opt, batch, val, 1.0)
    b = leave_one_out_window(ReplayWindow(model, opt, [batch], val, 1.0))
    c = leave_one_out_carry(ReplayWindow(model, opt, [batch], val, 1.0))
    assert np.allclose(a, b, rtol=1e-6, atol=1e-12)
    assert np.allclose(a, c, rtol=1e-6, atol=1e-12)


def test_in_run_truth_of_a_later_step_matches_a_hand_made_step(trained):
    """K = 1: step t's LOO plus a real step t+1 from the realised state with i's share of m, v removed."""
    model, opt = trained
    batches, val = [bigram_batch(5, seed=60), bigram_batch(5, seed=61)], bigram_batch(4, seed=62)
    got = leave_one_out_carry(ReplayWindow(model, opt, batches, val, 1.0))
    one = leave_one_out(model, opt, batches[0], val, 1.0)
    m1 = copy.deepcopy(model)
    o1 = torch.optim.AdamW(m1.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    o1.load_state_dict(copy.deepcopy(opt.state_dict()))
    pe = per_example_grads(model, batches[0])
    names = list(pe)
    g = {k: pe[k].sum(0) for k in names}

    def clip(d):
        norm = torch.sqrt(sum((v**2).sum() for v in d.values()))
        return {k: v * min(1.0, 1.0 / (float(norm) + 1e-6)) for k, v in d.items()}

    plain_step(m1, o1, batches[0], 1.0)  # realised step t
    state = copy.deepcopy(o1.state_dict())
    w1 = copy.deepcopy(m1.state_dict())

    def loss_step1(i):
        m = copy.deepcopy(m1)
        m.load_state_dict(w1)
        o = torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
        o.load_state_dict(copy.deepcopy(state))
        if i is not None:
            full, red = clip(g), clip({k: g[k] - pe[k][i] for k in names})
            for k, p in m.named_parameters():
                o.state[p]["exp_avg"].sub_(0.1 * (full[k] - red[k]))
                o.state[p]["exp_avg_sq"].sub_(0.05 * (full[k] ** 2 - red[k] ** 2))
        plain_step(m, o, batches[1], 1.0)
        with torch.no_grad():
            return float(per_example_loss(m, prepare_batch(val)).mean())

    base = loss_step1(None)
    want = one + np.array([loss_step1(i) - base for i in range(5)])
    assert np.allclose(got, want, rtol=1e-6, atol=1e-9 * np.abs(want).max())


def test_window_truth_matches_hand_made_replay_and_leaves_state(trained):
    """Example 2 removed from step t, then two full steps (lr scheduled): done by hand."""
    model, opt = trained
    before_p = copy.deepcopy(model.state_dict())
    before_o = copy.deepcopy(opt.state_dict())
    batches = [bigram_batch(5, seed=20 + j) for j in range(3)]
    val, lrs = bigram_batch(4, seed=9), [1e-3, 8e-4, 5e-4]
    got = leave_one_out_window(ReplayWindow(model, opt, batches, val, 1.0, lrs))

    def run(drop):
        m = copy.deepcopy(model)
        o = torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
        o.load_state_dict(copy.deepcopy(opt.state_dict()))
        for j, b in enumerate(batches):
            o.param_groups[0]["lr"] = lrs[j]
            o.zero_grad()
            ls = per_example_loss(m, prepare_batch(b))
            loss = ls.mean() if j or drop is None else (ls.sum() - ls[drop]) / len(ls)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            o.step()
        with torch.no_grad():
            return float(per_example_loss(m, prepare_batch(val)).mean())

    assert got[2] == pytest.approx(run(2) - run(None), rel=1e-6, abs=1e-12)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before_p[k]), k
    for pid, st in before_o["state"].items():
        assert torch.equal(st["exp_avg"], opt.state_dict()["state"][pid]["exp_avg"])


def _r(a, b):
    return float(np.corrcoef(np.asarray(a), np.asarray(b))[0, 1])


def test_propagated_values_track_k_step_loo(trained):
    """On a trained tiny GPT-2 (float64, lr 1e-3, clip 1.0): propagated values vs in-run K-step LOO.

    The bar is median R >= 0.98 for the LOO-targeted `adam-loo` (and `adam`, `adam2`); the
    one-step values on the same truth are lower, as they leave out the push that arrives
    through m after step t. (Against the replay truth, which also holds the later batches'
    reaction to the moved weights, both are far lower: benchmarks/results/lds.md.)
    """
    model, opt = trained
    K, windows = 10, 3
    val = bigram_batch(8, seed=12)
    batches = [bigram_batch(12, seed=300 + j) for j in range(windows + K)]
    sc = InRunScorer(model, opt, val, max_grad_norm=1.0, momentum_window=K)
    truths, own, prop = [], {}, {}
    for j, b in enumerate(batches):
        if j < windows:
            loo = leave_one_out_carry(ReplayWindow(model, opt, batches[j : j + K + 1], val, 1.0))
            truths.append(loo)  # l_val without i minus with i: positive = i lowered it
        out = sc.step(b)
        if j < windows:
            own[j] = out.values
        for p in out.propagated:
            prop[p.step] = p.values
    sc.close()
    r = {
        e: [_r(prop[j][e], truths[j]) for j in range(windows)]
        for e in ("adam-loo", "adam", "adam2", "sgd")
    }
    r_one = {e: [_r(own[j][e], truths[j]) for j in range(windows)] for e in r}
    med = {e: float(np.median(v)) for e, v in r.items()}
    med_one = {e: float(np.median(v)) for e, v in r_one.items()}
    print("propagated", med, "one-step", med_one)
    for e in ("adam-loo", "adam", "adam2"):
        assert med[e] >= 0.98, (e, med, med_one)
        assert med[e] > med_one[e], (e, med, med_one)


@pytest.mark.parametrize("clip", [None, 0.05])
def test_open_windows_survive_a_checkpoint(gpt2, tmp_path, clip):
    """Stop after 2 of 5 steps, save model + optimizer + scorer state, resume in fresh objects:
    the propagated values (windows open across the checkpoint included) equal an unbroken run."""
    val = make_batch(3, 12, seed=1)
    batches = [make_batch(4, 12, seed=30 + j) for j in range(5)]
    kw = dict(estimators=("adam", "adam-loo", "sgd"), max_grad_norm=clip, momentum_window=3)

    def run(model, opt, steps, state=None):
        sc = InRunScorer(model, opt, val, **kw)
        if state is not None:
            sc.load_state_dict(state)
        closed = [p for b in steps for p in sc.step(b).propagated]
        return sc, closed

    init = copy.deepcopy(gpt2)
    sc, ref = run(gpt2, _opt(gpt2), batches)
    ref += sc.flush_momentum()
    sc.close()

    model = copy.deepcopy(init)
    opt = _opt(model)
    sc, first = run(model, opt, batches[:2])
    assert first == [] and len(sc.momentum.pending) == 2
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sc": sc.state_dict()}, path)
    sc.close()
    ck = torch.load(path, weights_only=True)  # as the scoring run loads its checkpoints
    model = copy.deepcopy(init)
    model.load_state_dict(ck["model"])
    opt = _opt(model)
    opt.load_state_dict(ck["opt"])
    sc, rest = run(model, opt, batches[2:], ck["sc"])
    rest += sc.flush_momentum()
    sc.close()

    assert [p.step for p in rest] == [p.step for p in ref] == [0, 1, 2, 3, 4]
    assert [p.steps_covered for p in rest] == [p.steps_covered for p in ref] == [3, 3, 2, 1, 0]
    for got, want in zip(rest, ref):
        for e in kw["estimators"]:
            scale = float(want.values[e].abs().max())
            assert float((got.values[e] - want.values[e]).abs().max()) <= 1e-9 * scale, e
            assert float((got.carry[e] - want.carry[e]).abs().max()) <= 1e-9 * scale, e
    # without the windows in the state, the resumed run would lose steps 0 and 1 entirely
    assert {0, 1} <= {p.step for p in rest}
