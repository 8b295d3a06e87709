"""InRunScorer against independent oracles: torch.func per-example gradients and real optimizer steps."""

from __future__ import annotations

import copy

import pytest
import torch
from oracle import adam_P, contract, per_example_grads, real_step_copy, val_grad

from adamshap_core import InRunScorer, plain_step, warmup_cosine

from .conftest import make_batch

LR, B1, B2, EPS = 3e-3, 0.9, 0.95, 1e-8


def make_opt(model, kind="adamw", wd=0.1, lr=LR):
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=lr, betas=(B1, B2), eps=EPS, weight_decay=wd)


def warm(model, opt, steps, clip=None, seed=100):
    for s in range(steps):
        plain_step(model, opt, make_batch(6, 12, seed=seed + s), clip)


def oracle_values(model, opt, batch, val, clip, linearise=("adam-loo",)):
    """Every estimator computed from explicit per-example grads and a real optimizer step."""
    names = [k for k, _ in model.named_parameters()]
    pe = per_example_grads(model, batch)
    g_start = val_grad(model, val)
    m_after, opt_after, kappa = real_step_copy(model, opt, batch, clip)
    P = adam_P(m_after, opt_after, LR, B1, B2, EPS, kappa)
    g_end = val_grad(m_after, val)
    g_sum = {k: pe[k].sum(0) for k in names}
    m_mid = copy.deepcopy(m_after)
    with torch.no_grad():
        for k, p in m_mid.named_parameters():
            p.add_(LR * P[k] * g_sum[k])  # undo this batch's own step: w_t + Δ_0
    g_mid = val_grad(m_mid, val)
    sides = {
        "sgd": {k: LR * g_start[k] for k in names},
        "adam": {k: LR * P[k] * g_start[k] for k in names},
        "adam-loo": {k: LR * P[k] * g_end[k] for k in names},
        "adam2": {k: LR * P[k] * 0.5 * (g_mid[k] + g_end[k]) for k in names},
    }
    clipped = kappa < 1
    out = {}
    for e, u in sides.items():
        if clipped and e in linearise:
            ug = sum((u[k] * g_sum[k]).sum() for k in names)
            gg = sum((g_sum[k] ** 2).sum() for k in names)
            u = {k: u[k] - (ug / gg) * g_sum[k] for k in names}
        out[e] = contract(pe, u, names)
    return out, clipped


def check_against_oracle(model, opt, batch, val, clip, linearise=("adam-loo",), target_chunk=8):
    want, clipped = oracle_values(model, opt, batch, val, clip, linearise)
    sc = InRunScorer(
        model, opt, val, max_grad_norm=clip, clip_linearised=linearise, target_chunk=target_chunk
    )
    got = sc.step(batch)
    sc.close()
    for e in want:
        err = (got.values[e] - want[e]).abs().max() / want[e].abs().max()
        assert err < 1e-5, (e, float(err))
    return clipped, got


@pytest.mark.parametrize("kind,wd", [("adamw", 0.1), ("adamw", 0.0), ("adam", 0.05)])
def test_all_estimators_match_oracle_mid_training(gpt2, kind, wd):
    opt = make_opt(gpt2, kind, wd)
    warm(gpt2, opt, 3)
    val = make_batch(5, 12, seed=7, pad_lengths=[12, 8, 12, 5, 10])
    batch = make_batch(6, 12, seed=8, pad_lengths=[12, 3, 9, 12, 7, 11])
    check_against_oracle(gpt2, opt, batch, val, clip=None)


@pytest.mark.parametrize("chunk", [1, 2, None])
def test_chunked_target_gradients_match_oracle(gpt2, chunk):
    """Target gradients taken in pieces (5 = 2+2+1, or 1 at a time) give the oracle's values."""
    opt = make_opt(gpt2)
    warm(gpt2, opt, 2)
    val = make_batch(5, 12, seed=7, pad_lengths=[12, 8, 12, 5, 10])
    batch = make_batch(6, 12, seed=8, pad_lengths=[12, 3, 9, 12, 7, 11])
    want_loss = float(oracle_val_loss(gpt2, val))  # at w_t, before the step
    _, got = check_against_oracle(gpt2, opt, batch, val, clip=None, target_chunk=chunk)
    assert got.val_loss == pytest.approx(want_loss, rel=1e-12)


def oracle_val_loss(model, val):
    from adamshap_core.batch import per_example_loss, prepare_batch

    with torch.no_grad():
        return per_example_loss(model, prepare_batch(val)).mean()


def test_rejects_negative_target_chunk_and_0_is_the_whole_batch(gpt2):
    with pytest.raises(ValueError, match="target_chunk"):
        InRunScorer(gpt2, make_opt(gpt2), make_batch(3, 12, seed=1), target_chunk=-1)
    # 0 means the whole target batch, as it does for ScoreArgs and --target-chunk
    sc = InRunScorer(gpt2, make_opt(gpt2), make_batch(10, 12, seed=1), target_chunk=0)
    assert sc.target_chunk is None and len(sc._val_chunks()) == 1
    sc.close()


def test_step_one_zero_second_moment(gpt2):
    opt = make_opt(gpt2)
    check_against_oracle(gpt2, opt, make_batch(6, 12, seed=1), make_batch(4, 12, seed=2), clip=None)


@pytest.mark.parametrize("linearise", [("adam-loo",), (), ("adam-loo", "adam2", "adam")])
def test_clipping_active_linearised_and_fixed(tinylm, linearise):
    opt = make_opt(tinylm)
    warm(tinylm, opt, 2, clip=1e-3)
    clipped, _ = check_against_oracle(
        tinylm, opt, make_batch(6, 10, seed=3), make_batch(3, 10, seed=4), 1e-3, linearise
    )
    assert clipped


def test_plain_torch_model_matches_oracle(tinylm):
    opt = make_opt(tinylm)
    warm(tinylm, opt, 2)
    check_against_oracle(
        tinylm,
        opt,
        make_batch(5, 10, seed=5, pad_lengths=[10, 4, 6, 10, 2]),
        make_batch(2, 10, seed=6),
        None,
    )


def test_scheduler_lr_is_read_each_step(gpt2):
    opt = make_opt(gpt2)
    sched = warmup_cosine(opt, warmup_steps=3, total_steps=10)
    sc = InRunScorer(gpt2, opt, make_batch(3, 12, seed=9), max_grad_norm=1.0)
    lrs = []
    for s in range(3):
        out = sc.step(make_batch(4, 12, seed=20 + s))
        lrs.append(out.lr)
        sched.step()
    assert lrs == pytest.approx([LR / 3, 2 * LR / 3, LR])
    sc.close()
    # after the scheduler moved the lr, the values still equal the oracle's at that lr
    want, _ = oracle_values(gpt2, opt, make_batch(4, 12, seed=30), make_batch(3, 12, seed=9), None)
    lr_now = opt.param_groups[0]["lr"]
    sc = InRunScorer(gpt2, opt, make_batch(3, 12, seed=9), estimators=("adam",))
    got = sc.step(make_batch(4, 12, seed=30))
    # oracle used LR: rescale to the scheduled lr
    assert torch.allclose(got.values["adam"], want["adam"] * lr_now / LR, rtol=1e-5, atol=1e-12)


def test_training_is_unchanged_by_scoring(gpt2):
    ref = copy.deepcopy(gpt2)
    opt_s, opt_p = make_opt(gpt2), make_opt(ref)
    sch_s, sch_p = warmup_cosine(opt_s, 2, 6), warmup_cosine(opt_p, 2, 6)
    sc = InRunScorer(gpt2, opt_s, make_batch(4, 12, seed=1), max_grad_norm=0.5)
    for s in range(6):
        batch = make_batch(5, 12, seed=50 + s, pad_lengths=[12, 6, 9, 12, 3])
        if s == 3:
            sc.set_val_batch(make_batch(2, 12, seed=77))
        sc.step(batch)
        plain_step(ref, opt_p, batch, 0.5)
        sch_s.step()
        sch_p.step()
    for (n, p), q in zip(gpt2.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-12), n
    for p, q in zip(gpt2.parameters(), ref.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(opt_s.state[p][key], opt_p.state[q][key], atol=1e-14)


def count_val_passes(sc):
    calls = {"n": 0}
    inner = sc._val_grad

    def wrapped():
        calls["n"] += 1
        return inner()

    sc._val_grad = wrapped
    return calls


@pytest.mark.parametrize(
    "estimators,per_step",
    [
        (("sgd",), 1),
        (("adam",), 1),
        (("adam-loo",), 1),
        (("adam", "adam-loo", "sgd"), 1),
        (("adam2",), 2),
    ],
)
def test_only_requested_estimators_and_val_passes(gpt2, estimators, per_step):
    opt = make_opt(gpt2)
    sc = InRunScorer(gpt2, opt, make_batch(3, 12, seed=1), estimators=estimators)
    calls = count_val_passes(sc)
    sc.step(make_batch(4, 12, seed=2))  # first step may need one extra start pass
    calls["n"] = 0
    out = None
    for s in range(3):
        out = sc.step(make_batch(4, 12, seed=3 + s))
    assert set(out.values) == set(estimators)
    assert calls["n"] == 3 * per_step


def test_val_batch_change_recomputes_start_gradient(gpt2):
    """Pipelined start gradients are only reused for the same target batch unless asked."""
    opt = make_opt(gpt2)
    warm(gpt2, opt, 2)
    val1, val2 = make_batch(3, 12, seed=1), make_batch(3, 12, seed=2)
    sc = InRunScorer(gpt2, opt, val1, estimators=("adam", "adam-loo"))
    sc.step(make_batch(4, 12, seed=3))
    sc.set_val_batch(val2)
    batch = make_batch(4, 12, seed=4)
    want, _ = oracle_values(gpt2, opt, batch, val2, None)
    got = sc.step(batch)
    assert torch.allclose(got.values["adam"], want["adam"], rtol=1e-5, atol=1e-14)


def test_state_dict_resume_gives_identical_values(gpt2):
    opt = make_opt(gpt2)
    val = make_batch(3, 12, seed=1)
    sc = InRunScorer(gpt2, opt, val, reuse_val_grad_across_batches=True)
    sc.step(make_batch(4, 12, seed=2))
    snap = (copy.deepcopy(gpt2.state_dict()), copy.deepcopy(opt.state_dict()), sc.state_dict())
    a = sc.step(make_batch(4, 12, seed=3)).values
    sc.close()
    gpt2.load_state_dict(snap[0])
    opt.load_state_dict(snap[1])
    sc2 = InRunScorer(gpt2, opt, val, reuse_val_grad_across_batches=True)
    sc2.load_state_dict(snap[2])
    calls = count_val_passes(sc2)
    b = sc2.step(make_batch(4, 12, seed=3)).values
    assert calls["n"] == 2  # mid + end; start came from the restored cache
    for e in a:
        assert torch.equal(a[e], b[e]), e


def test_rejects_other_optimizers(gpt2):
    with pytest.raises(TypeError, match="Adam"):
        InRunScorer(gpt2, torch.optim.SGD(gpt2.parameters(), lr=0.1), make_batch(2, 8))


def test_rejects_unknown_estimator(gpt2):
    with pytest.raises(ValueError, match="unknown estimators"):
        InRunScorer(gpt2, make_opt(gpt2), make_batch(2, 8), estimators=("adam3",))


def _loss_after_real_step(model, opt, grads_flat_by_name, val, clip):
    """Target loss after a real AdamW step (from deep copies) with the given gradient."""
    m2 = copy.deepcopy(model)
    d = opt.defaults
    o2 = type(opt)(
        m2.parameters(), lr=d["lr"], betas=d["betas"], eps=d["eps"], weight_decay=d["weight_decay"]
    )
    o2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for k, p in m2.named_parameters():
        p.grad = grads_flat_by_name[k].clone()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(m2.parameters(), clip)
    o2.step()
    from adamshap_core.batch import per_example_loss, prepare_batch

    with torch.no_grad():
        return float(per_example_loss(m2, prepare_batch(val)).mean())


@pytest.mark.parametrize("clip,kind", [(None, "adamw"), (1e-3, "adamw"), (None, "adam")])
def test_loo_second_moment_is_the_exact_derivative_of_real_steps(gpt2, clip, kind):
    """adam-loo with v linearised equals d/dε l_val(w_{t+1}(g − ε g_i)) at ε=0 (central FD)."""
    opt = make_opt(gpt2, kind, 0.1 if kind == "adamw" else 0.05)
    warm(gpt2, opt, 3, clip=clip)
    batch, val = make_batch(5, 12, seed=41), make_batch(3, 12, seed=42)
    pe = per_example_grads(gpt2, batch)
    g = {k: v.sum(0) for k, v in pe.items()}
    eps = 1e-5
    fd = []
    for i in range(5):
        lo = _loss_after_real_step(gpt2, opt, {k: g[k] - eps * pe[k][i] for k in g}, val, clip)
        hi = _loss_after_real_step(gpt2, opt, {k: g[k] + eps * pe[k][i] for k in g}, val, clip)
        fd.append((lo - hi) / (2 * eps))
    fd = torch.tensor(fd, dtype=torch.float64)
    sc = InRunScorer(
        gpt2, opt, val, estimators=("adam-loo",), max_grad_norm=clip, loo_second_moment=True
    )
    got = sc.step(batch).values["adam-loo"]
    assert torch.allclose(got, fd, rtol=1e-4, atol=1e-4 * float(fd.abs().max())), (got, fd)
