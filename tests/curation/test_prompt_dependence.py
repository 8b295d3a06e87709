"""Prompt dependence: the measured gain is the loss rise from swapping prompts, nothing else."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from adamshap_core import build_model, per_example_loss, prepare_batch
from curation.encode import encode_corpus
from curation.prompt_dependence import LossModel, derangement, prompt_gains, run_prompt_gains
from curation.tokenizer import train_tokenizer

PROMPTS = [f"Define the word: {w}" for w in ("fox", "owl", "oak", "elm", "cat", "bee")]
RESPONSES = [
    "A small wild animal of the dog family.",
    "A bird that hunts at night.",
    "A large tree that bears acorns.",
    "A tall tree with broad leaves.",
    "A small animal kept as a pet.",
    "An insect that makes honey.",
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(PROMPTS + RESPONSES, vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    return build_model("tiny", len(tok), 48, seed=0).eval()


def _direct(model, tok, prompts, responses):
    """Response-only losses computed by hand: encode the rows, take per_example_loss."""
    df = pl.DataFrame(
        {
            "id": [str(i) for i in range(len(prompts))],
            "source": ["s"] * len(prompts),
            "text": [""] * len(prompts),
            "prompt": prompts,
            "response": responses,
        }
    )
    enc = encode_corpus(df, tok, 48)
    with torch.no_grad():
        return per_example_loss(model, prepare_batch(enc.batch(np.arange(len(enc))))).double()


def test_gain_equals_direct_swapped_computation(model, tok):
    res = prompt_gains(LossModel(model, tok, 48, batch_size=4), PROMPTS, RESPONSES, draws=2, seed=3)
    own = _direct(model, tok, PROMPTS, RESPONSES).numpy()
    np.testing.assert_allclose(res.own_loss, own, rtol=1e-6)
    others = []
    for perm in res.perms:
        assert sorted(perm.tolist()) == list(range(len(PROMPTS)))
        assert (perm != np.arange(len(PROMPTS))).all()  # every row got another row's prompt
        swapped = [PROMPTS[j] for j in perm]
        others.append(_direct(model, tok, swapped, RESPONSES).numpy())
    np.testing.assert_allclose(res.other_loss, np.stack(others), rtol=1e-6)
    np.testing.assert_allclose(res.gain, np.stack(others).mean(0) - own, rtol=1e-6, atol=1e-9)
    assert res.perms.shape == (2, len(PROMPTS)) and not (res.perms[0] == res.perms[1]).all()


def test_swapping_identical_prompts_gains_nothing(model, tok):
    same = ["Define the word:"] * len(RESPONSES)
    res = prompt_gains(LossModel(model, tok, 48), same, RESPONSES, draws=2, seed=0)
    assert (res.perms != np.arange(len(same))).all()
    np.testing.assert_allclose(res.gain, 0.0, atol=1e-9)


def test_a_proxy_trained_on_the_pairs_gains_on_them(tok):
    """A proxy fitted to the right pairs predicts a response better from its own prompt."""
    m = build_model("tiny", len(tok), 48, seed=1).train()
    df = pl.DataFrame(
        {
            "id": [str(i) for i in range(6)],
            "source": ["s"] * 6,
            "text": [""] * 6,
            "prompt": PROMPTS,
            "response": RESPONSES,
        }
    )
    batch = prepare_batch(encode_corpus(df, tok, 48).batch(np.arange(6)))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(150):
        opt.zero_grad()
        per_example_loss(m, batch).mean().backward()
        opt.step()
    res = prompt_gains(LossModel(m, tok, 48), PROMPTS, RESPONSES, draws=2, seed=0)
    assert res.gain.mean() > 0.1


def test_derangement_avoids_same_text_and_run_reader(tmp_path, model, tok):
    prompts = ["a", "a", "b", "c", "a", "d"]
    rng = np.random.default_rng(0)
    for _ in range(20):
        perm = derangement(prompts, rng)
        assert sorted(perm.tolist()) == list(range(6))
        assert all(prompts[j] != prompts[i] for i, j in enumerate(perm))
    run = tmp_path / "run"
    model.save_pretrained(run / "final_model")
    tok.save_pretrained(run / "tokenizer")
    (run / "run.json").write_text('{"args": {"seq_len": 48}}')
    a = run_prompt_gains(run, PROMPTS, RESPONSES, draws=1, seed=5)
    b = prompt_gains(LossModel(model, tok, 48), PROMPTS, RESPONSES, draws=1, seed=5)
    np.testing.assert_allclose(a.gain, b.gain, rtol=1e-5, atol=1e-7)
