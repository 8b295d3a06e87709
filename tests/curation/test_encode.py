"""Encoding a corpus frame: padding, truncation, bos, and response-only loss masks."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from adamshap_core.batch import n_target_tokens, prepare_batch
from curation.corpus import read_corpus, write_corpus
from curation.encode import encode_corpus
from curation.errors import UsageError
from curation.tokenizer import train_tokenizer
from tests.fixtures import fixture_docs


def _real_docs(per_source: dict[str, int]) -> list[dict]:
    """The first n documents of each named source of the test corpus (tests/fixtures.py)."""
    by = fixture_docs(max(per_source.values()))
    return [r for s, n in per_source.items() for r in by[s][:n]]


def _definition_pairs(docs: list[dict]) -> list[dict]:
    """Turn WordNet gloss lines and Devil's Dictionary entries into 'Define X.' pairs."""
    pairs = []
    for d in docs:
        if d["source"] == "wordnet":
            head, _, gloss = d["text"].split("\n")[0].partition(": ")
            term = head.split(", ")[0]
        else:
            head, _, gloss = d["text"].partition(", ")
            term = head.strip().lower() if head.isupper() and len(head) < 40 else ""
        if term and gloss.strip():
            pairs.append(
                {
                    "id": d["id"],
                    "source": d["source"],
                    "prompt": f"Define {term}.",
                    "response": gloss,
                }
            )
    return pairs


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return _real_docs({"wordnet": 25, "devil": 30, "pydocs": 40, "bible": 20})


@pytest.fixture(scope="module")
def tok(docs):
    return train_tokenizer([d["text"] for d in docs], vocab_size=600)


def test_plain_text_layout(tok, docs):
    df = pl.DataFrame(docs).select("id", "source", "text")
    enc = encode_corpus(df, tok, seq_len=64)
    assert len(enc) == df.height and enc.ids == df["id"].to_list()
    assert enc.input_ids.dtype == np.int32 and enc.input_ids.shape == (df.height, 64)
    assert enc.attention_mask.dtype == np.int8 and enc.loss_mask.dtype == np.int8
    assert (enc.input_ids[:, 0] == tok.bos_token_id).all()
    assert (enc.loss_mask[:, 0] == 0).all()
    for i, text in enumerate(df["text"]):
        toks = tok.encode(text, add_special_tokens=False)
        n = min(len(toks), 63)
        assert enc.truncated[i] == (len(toks) > 63)
        assert enc.input_ids[i, 1 : n + 1].tolist() == toks[:n]
        assert enc.attention_mask[i].sum() == n + 1
        assert (enc.input_ids[i, n + 1 :] == tok.pad_token_id).all()
        assert enc.loss_mask[i, 1 : n + 1].all() and enc.n_tokens[i] == n
    assert enc.truncated.any() and not enc.truncated.all()


def test_batch_matches_core_contract(tok, docs):
    df = pl.DataFrame(docs).select("id", "source", "text")
    enc = encode_corpus(df, tok, seq_len=32)
    b = enc.batch(np.array([3, 0, 7]))
    assert b["input_ids"].dtype == torch.long and b["input_ids"].shape == (3, 32)
    assert set(b) == {"input_ids", "attention_mask", "loss_mask"}
    counted = n_target_tokens(prepare_batch(b))
    assert counted.tolist() == enc.n_tokens[[3, 0, 7]].tolist()
    sub = enc.select([7, 3])
    assert sub.ids == [enc.ids[7], enc.ids[3]]
    assert (sub.input_ids == enc.input_ids[[7, 3]]).all()


def test_instruction_loss_only_on_response(tmp_path, tok, docs):
    pairs = _definition_pairs([d for d in docs if d["source"] in ("wordnet", "devil")])
    assert len(pairs) >= 40 and {p["source"] for p in pairs} == {"wordnet", "devil"}
    plain = [{**d, "prompt": None, "response": None} for d in docs if d["source"] == "bible"][:5]
    path = write_corpus(pl.DataFrame(pairs + plain), tmp_path / "instr.jsonl")
    df = read_corpus(path).df
    enc = encode_corpus(df, tok, seq_len=256)
    for i, row in enumerate(df.iter_rows(named=True)):
        real = enc.attention_mask[i].astype(bool)
        counted = enc.input_ids[i][enc.loss_mask[i].astype(bool)].tolist()
        if row["prompt"] is None:
            assert enc.loss_mask[i][real][1:].all()
            continue
        if enc.truncated[i]:
            assert row["response"].startswith(tok.decode(counted).strip())
        else:
            assert tok.decode(counted).strip() == row["response"].strip()
        prompt_len = len(tok.encode(row["prompt"] + "\n", add_special_tokens=False))
        assert not enc.loss_mask[i, : 1 + prompt_len].any()
        assert enc.n_tokens[i] == len(counted) > 0
    b = prepare_batch(enc.batch(np.arange(len(enc))))
    assert (n_target_tokens(b) == torch.from_numpy(enc.n_tokens).float()).all()


def test_custom_template_and_truncated_response(tok):
    df = pl.DataFrame(
        {
            "id": ["q"],
            "source": ["qa"],
            "text": ["ignored"],
            "prompt": ["What is a fox?"],
            "response": ["A small wild animal of the dog family."],
        }
    )
    enc = encode_corpus(df, tok, seq_len=128, template="Q: {prompt}\nA: {response}")
    counted = enc.input_ids[0][enc.loss_mask[0].astype(bool)].tolist()
    assert tok.decode(counted).strip() == "A small wild animal of the dog family."
    short = encode_corpus(df, tok, seq_len=4, template="Q: {prompt}\nA: {response}")
    assert short.truncated[0] and short.n_tokens[0] == 0  # no target left: loss 0, value 0


def test_bad_seq_len(tok):
    df = pl.DataFrame({"id": ["a"], "source": ["s"], "text": ["x"]})
    with pytest.raises(UsageError):
        encode_corpus(df, tok, seq_len=1)


def test_caller_tokenizer_settings_untouched(tok):
    tok.backend_tokenizer.enable_truncation(5)
    try:
        df = pl.DataFrame({"id": ["a"], "source": ["s"], "text": ["word " * 50]})
        enc = encode_corpus(df, tok, seq_len=32)
        assert enc.truncated[0] and enc.attention_mask[0].sum() == 32
        assert tok.backend_tokenizer.truncation["max_length"] == 5
    finally:
        tok.backend_tokenizer.no_truncation()
