"""The estimator table: a toy estimator registered here runs end to end through InRunScorer.

The toys' values are checked against torch.func per-example gradients and a real optimizer
step (oracle.py), so a table field the scorer ignored (a target point, the preconditioner, the
clip term) shows up as wrong values.
"""

from __future__ import annotations

import ast
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from oracle import adam_P, contract, per_example_grads, real_step_copy, val_grad

from adamshap_core import InRunScorer, plain_step
from adamshap_core.estimators import (
    BUILTIN_ORDER,
    DEFAULT_ORDER,
    ESTIMATORS,
    Estimator,
    check_estimators,
    get_estimator,
    preferred_order,
    register_estimator,
    unregister_estimator,
)

from .conftest import make_batch

LR, B1, B2, EPS = 3e-3, 0.9, 0.95, 1e-8
ROOT = Path(__file__).resolve().parents[2]


def _sign_column(t):
    return {k: t.lr[k] * torch.sign(g) for k, g in t.start.items()}


# lr · sign(∇l_val(w_t)): no preconditioner, start gradient only
ADAM_SIGN = Estimator(
    "adam-sign",
    frozenset({"start"}),
    _sign_column,
    preconditioned=False,
    adam_family=False,
)
# lr·P ⊙ ∇l_val(w_t + Δ_0): the midpoint alone, clipping linearised by default
ADAM_MID = Estimator(
    "adam-mid",
    frozenset({"mid"}),
    lambda t: t.precondition(t.mid),
    clip_linearised=True,
)


@pytest.fixture
def toys():
    for est in (ADAM_SIGN, ADAM_MID):
        register_estimator(est)
    try:
        yield
    finally:
        for name in ("adam-sign", "adam-mid"):
            if name in ESTIMATORS:
                unregister_estimator(name)


def make_opt(model):
    return torch.optim.AdamW(model.parameters(), lr=LR, betas=(B1, B2), eps=EPS, weight_decay=0.1)


def oracle_toys(model, opt, batch, val, clip):
    """The toys' values from explicit per-example gradients and a real step on copies."""
    names = [k for k, _ in model.named_parameters()]
    pe = per_example_grads(model, batch)
    g_start = val_grad(model, val)
    m_after, opt_after, kappa = real_step_copy(model, opt, batch, clip)
    P = adam_P(m_after, opt_after, LR, B1, B2, EPS, kappa)
    g_sum = {k: pe[k].sum(0) for k in names}
    m_mid = copy.deepcopy(m_after)
    with torch.no_grad():
        for k, p in m_mid.named_parameters():
            p.add_(LR * P[k] * g_sum[k])  # undo this batch's own step: w_t + Δ_0
    g_mid = val_grad(m_mid, val)
    sides = {
        "adam-sign": {k: LR * torch.sign(g_start[k]) for k in names},
        "adam-mid": {k: LR * P[k] * g_mid[k] for k in names},
        "sgd": {k: LR * g_start[k] for k in names},
    }
    if kappa < 1:  # adam-mid linearises clipping: U − (⟨U, ĝ⟩/‖ĝ‖²) ĝ with ĝ = Σ g_i
        u = sides["adam-mid"]
        ug = sum((u[k] * g_sum[k]).sum() for k in names)
        gg = sum((g_sum[k] ** 2).sum() for k in names)
        sides["adam-mid"] = {k: u[k] - (ug / gg) * g_sum[k] for k in names}
    return {e: contract(pe, u, names) for e, u in sides.items()}, kappa < 1


@pytest.mark.parametrize(
    "estimators,clip",
    [
        (("adam-sign", "adam-mid", "sgd"), None),
        (("adam-mid", "adam-sign"), 1e-3),  # clipped: adam-mid's clip term from the table
        (("adam-mid",), None),  # the only preconditioned column: formed in P's memory
    ],
)
def test_toy_estimators_match_torch_func_oracle(gpt2, toys, estimators, clip):
    opt = make_opt(gpt2)
    for s in range(2):
        plain_step(gpt2, opt, make_batch(6, 12, seed=100 + s))
    val = make_batch(5, 12, seed=7, pad_lengths=[12, 8, 12, 5, 10])
    batch = make_batch(6, 12, seed=8, pad_lengths=[12, 3, 9, 12, 7, 11])
    want, clipped = oracle_toys(gpt2, opt, batch, val, clip)
    assert clipped == (clip is not None)
    with InRunScorer(gpt2, opt, val, estimators=estimators, max_grad_norm=clip) as scorer:
        got = scorer.step(batch)
    assert list(got.values) == list(estimators)
    assert got.clipped == clipped
    assert got.val_loss_after is None  # no toy needs w_{t+1}: the table says which points
    for e in estimators:
        err = (got.values[e] - want[e]).abs().max() / want[e].abs().max()
        assert err < 1e-5, (e, float(err))


def test_unknown_and_unregistered_names_raise(gpt2, toys):
    opt = make_opt(gpt2)
    val = make_batch(2, 8)
    InRunScorer(gpt2, opt, val, estimators=("adam-sign",)).close()
    assert unregister_estimator("adam-sign") is ADAM_SIGN
    with pytest.raises(ValueError, match=r"unknown estimators \['adam-sign'\]; choose from"):
        InRunScorer(gpt2, opt, val, estimators=("adam-sign",))
    with pytest.raises(ValueError, match="unknown estimator 'adam-sign'"):
        unregister_estimator("adam-sign")
    with pytest.raises(ValueError, match="unknown estimator 'nope'.*'adam2'"):
        get_estimator("nope")
    with pytest.raises(ValueError, match="unknown estimators"):
        check_estimators(())
    with pytest.raises(ValueError, match="already registered"):
        register_estimator(ADAM_MID)
    register_estimator(ADAM_MID, replace=True)  # a deliberate swap is allowed


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="Bad Name", targets=frozenset({"start"})), "lower-case"),
        (dict(name="x", targets=frozenset({"w_t"})), "subset of"),
        (dict(name="x", targets=frozenset()), "non-empty"),
        (
            dict(name="x", targets=frozenset({"end"}), gram_factors=lambda *a: None),
            "gram_factors needs",
        ),
    ],
)
def test_malformed_entries_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Estimator(column=_sign_column, **kwargs)


def test_registry_order_is_what_the_cli_offers(toys):
    from flows import cli

    # the table's order and the CLI's presentation order, as they were before the table
    assert BUILTIN_ORDER == ("sgd", "adam", "adam2", "adam-loo")
    assert DEFAULT_ORDER == ("adam2", "adam-loo", "adam", "sgd")
    assert preferred_order() == (*DEFAULT_ORDER, "adam-sign", "adam-mid")
    parser = cli.build_parser()  # built now: offers what is registered now
    prune = parser._subparsers._group_actions[0].choices["prune"]
    action = next(a for a in prune._actions if "--estimator" in a.option_strings)
    props = tuple(f"{e}_prop" for e in preferred_order())
    assert tuple(action.choices) == ("ckpt", *preferred_order(), *props)
    score = parser._subparsers._group_actions[0].choices["score"]
    action = next(a for a in score._actions if "--estimators" in a.option_strings)
    assert ",".join(preferred_order()) in action.help
    assert cli.estimator_list("adam-mid,adam2,adam-mid") == ("adam-mid", "adam2")
    with pytest.raises(Exception, match=r"choose from adam2,adam-loo,adam,sgd,adam-sign,adam-mid"):
        cli.estimator_list("adam3")


def test_cli_import_stays_torch_free():
    """flows.cli reads the names from adamshap_core.estimators; --help must not load torch."""
    code = "import sys, flows.cli; sys.exit('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def _hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_context_manager_removes_hooks(gpt2):
    before = _hook_count(gpt2)
    with InRunScorer(gpt2, make_opt(gpt2), make_batch(2, 8), estimators=("sgd",)) as scorer:
        assert _hook_count(gpt2) > before
        scorer.step(make_batch(3, 8, seed=1))
    assert _hook_count(gpt2) == before
    with pytest.raises(RuntimeError, match="boom"):
        with InRunScorer(gpt2, make_opt(gpt2), make_batch(2, 8), estimators=("sgd",)):
            raise RuntimeError("boom")
    assert _hook_count(gpt2) == before


def test_scorer_functions_stay_short():
    """scorer.py is split into small methods: none over 60 lines (issue #14)."""
    tree = ast.parse((ROOT / "adamshap_core" / "scorer.py").read_text())
    long = [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert long == []
