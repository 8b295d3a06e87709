"""benchmarks/lds.py: the unrolled column's values against a real AdamW replay to the end of the run.

Float64 tiny GPT-2, a 4-step "run" over 12 documents. `unrolled_to_end` at step t must be the
first-order term of removing example i at step t and replaying every remaining step with real
AdamW (clip on): it matches the scaled-removal replay (ε·g_i removed, divided by ε) of the
steps t..end, and, with `unrolled_window` set, of the steps t..t+K only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adamshap_core import ReplayWindow, build_model, leave_one_out_window, plain_step
from benchmarks.lds import LdsArgs, unrolled_to_end

V, T = 53, 16


class _Enc:
    """Stands in for the encoded corpus: `batch(idx)` gives those documents' token rows."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        x = [torch.randint(0, V, (n, 1), generator=g)]
        for _ in range(T - 1):  # a learnable toy language: each token a noisy function of the last
            x.append((x[-1] * 7 + 3 + torch.randint(0, 3, (n, 1), generator=g)) % V)
        self.ids = torch.cat(x, 1)

    def batch(self, idx) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[torch.as_tensor(np.asarray(idx))]}


def _r(a, b) -> float:
    return float(np.corrcoef(np.asarray(a), np.asarray(b))[0, 1])


@pytest.mark.parametrize("window", [None, 1])
def test_unrolled_to_end_is_the_first_order_replay_to_the_end(window):
    a = LdsArgs(max_grad_norm=1.0, unrolled_window=window)
    enc, val = _Enc(12), _Enc(6, seed=9).batch(np.arange(6))
    rng = np.random.default_rng(0)
    order = [rng.permutation(12)[:6] for _ in range(4)]
    model = build_model("tiny", V, T, seed=0).double()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    plain_step(model, opt, enc.batch(order[0]), a.max_grad_norm)  # value step t = 1, not step 0
    t, eps = 1, 1e-3
    got = unrolled_to_end(a, model, opt, enc, val, order, t)
    end = len(order) if window is None else t + window + 1
    replayed = [enc.batch(b) for b in order[t:end]]
    scaled = leave_one_out_window(
        ReplayWindow(model, opt, replayed, val, a.max_grad_norm), removal_weight=eps
    )
    scaled = scaled / eps
    rel = np.linalg.norm(got - scaled) / np.linalg.norm(scaled)
    assert got.shape == (6,)
    assert _r(got, scaled) > 0.9999 and rel < 1e-2, (_r(got, scaled), rel)
    if window is not None:  # a shorter window is a different truth: the helper must not run on
        longer = [enc.batch(b) for b in order[t:]]
        other = leave_one_out_window(
            ReplayWindow(model, opt, longer, val, a.max_grad_norm), removal_weight=eps
        )
        assert np.linalg.norm(got - other / eps) / np.linalg.norm(other / eps) > 1e-2


def test_renormalised_prediction_weights_each_kept_example_by_its_batch_share():
    """`lds_renorm` against a hand-built prediction: Σ_b (n_b / k_b) Σ_{kept of b} v_{i,b}."""
    from scipy.stats import spearmanr

    from benchmarks.lds import lds, lds_renorm

    rng = np.random.default_rng(3)
    order = [rng.permutation(8)[:4] for _ in range(3)]
    steps = {t: rng.normal(size=4) for t in range(3)}
    masks = rng.random((7, 8)) < 0.5
    masks[:, order[0][0]] = True  # every subset keeps a document of step 0
    losses = rng.normal(size=7)
    want = [
        sum(
            4 / m[order[t]].sum() * steps[t][m[order[t]]].sum()
            for t in range(3)
            if m[order[t]].any()
        )
        for m in masks
    ]
    assert lds_renorm(steps, order, masks, losses) == pytest.approx(
        spearmanr(want, -losses).statistic
    )
    # one document per step and every step fully kept or dropped: the weights are all 1
    order1 = [np.array([t]) for t in range(3)]
    steps1 = {t: np.array([steps[t][0]]) for t in range(3)}
    v = np.array([steps[t][0] for t in range(3)] + [0.0] * 5)
    assert lds_renorm(steps1, order1, masks, losses) == pytest.approx(lds(v, masks, losses))
