"""InRunScorer(loss_reduction="token"): the Hugging Face loss (summed token CE / token count)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_batch
from oracle import per_example_grads, val_grad

from adamshap_core import InRunScorer
from adamshap_core.batch import n_target_tokens, per_example_loss_from_logits, prepare_batch

LR = 1e-3


def _batch():
    b = make_batch(5, 12, seed=8, pad_lengths=[12, 4, 9, 12, 7])
    lm = torch.ones_like(b["input_ids"])
    lm[1, :3] = 0  # prompt tokens that do not count
    lm[3, :8] = 0
    b["loss_mask"] = lm
    return b


@pytest.mark.parametrize("denominator", [None, 61.0])
def test_sgd_values_are_token_weighted_gradient_dots(gpt2, denominator):
    batch, val = _batch(), make_batch(4, 12, seed=9, pad_lengths=[12, 6, 12, 10])
    b = prepare_batch(batch)
    t = n_target_tokens(b).double()
    denom = float(t.sum()) if denominator is None else denominator
    n = t.numel()
    g = per_example_grads(gpt2, batch)  # (1/n) ∇ l_i
    gv = val_grad(gpt2, val)
    # example i's share of the batch gradient of sum_i T_i l_i / denom
    want = torch.zeros(n, dtype=torch.float64)
    for k, gk in g.items():
        want += LR * (gk * (n * t / denom).view(-1, *[1] * (gk.dim() - 1)) * gv[k]).flatten(1).sum(
            1
        )

    ref = copy.deepcopy(gpt2)
    opt = torch.optim.AdamW(gpt2.parameters(), lr=LR)
    sc = InRunScorer(gpt2, opt, val, estimators=("sgd",), loss_reduction="token")
    out = sc.step(batch, token_denominator=denominator)
    sc.close()
    assert (out.values["sgd"] - want).abs().max() <= 1e-6 * want.abs().max()

    # the step taken is the plain AdamW step on that loss
    ropt = torch.optim.AdamW(ref.parameters(), lr=LR)
    logits = ref(
        input_ids=b["input_ids"], attention_mask=b["attention_mask"], position_ids=b["position_ids"]
    ).logits
    loss = (per_example_loss_from_logits(logits, b) * t).sum() / denom
    loss.backward()
    ropt.step()
    assert out.loss == pytest.approx(float(loss.detach()), rel=1e-12)
    for p, q in zip(gpt2.parameters(), ref.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-12)


def test_denominator_needs_token_reduction(gpt2):
    opt = torch.optim.AdamW(gpt2.parameters(), lr=LR)
    sc = InRunScorer(gpt2, opt, _batch(), estimators=("sgd",))
    with pytest.raises(ValueError, match="token_denominator"):
        sc.step(_batch(), token_denominator=10.0)
    sc.close()
    with pytest.raises(ValueError, match="loss_reduction"):
        InRunScorer(gpt2, opt, _batch(), loss_reduction="sum")
