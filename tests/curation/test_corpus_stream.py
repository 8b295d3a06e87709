"""`write_corpus` writes JSONL(.gz) a slice of rows at a time: same bytes as one big write."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from curation import corpus


@pytest.mark.parametrize("ext", ["jsonl", "jsonl.gz"])
def test_sliced_writes_give_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ext: str
) -> None:
    n = 10
    df = pl.DataFrame(
        {
            "id": [f"d{i}" for i in range(n)],
            "source": ["s"] * n,
            "text": [f'text é {i}\n"q"' for i in range(n)],
            "prompt": [None if i % 3 else "p" for i in range(n)],
            "response": [None if i % 3 else "r" for i in range(n)],
        }
    )
    whole = corpus.write_corpus(df, tmp_path / f"whole.{ext}").read_bytes()
    monkeypatch.setattr(corpus, "_WRITE_ROWS", 3)
    sliced = corpus.write_corpus(df, tmp_path / f"sliced.{ext}")
    assert sliced.read_bytes() == whole
    back = corpus.read_corpus(sliced).df
    assert back["id"].to_list() == df["id"].to_list()
    assert back["prompt"].to_list() == df["prompt"].to_list()


def test_encoding_in_batches_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from curation import embed, encode
    from curation.tokenizer import train_tokenizer

    texts = [f"word{i % 7} and more words {i} " * (1 + i % 5) for i in range(23)]
    df = pl.DataFrame(
        {
            "id": [str(i) for i in range(23)],
            "source": ["s"] * 23,
            "text": texts,
            "prompt": [None if i % 3 else "q" for i in range(23)],
            "response": [None if i % 3 else texts[i] for i in range(23)],
        }
    )
    tok = train_tokenizer(texts, vocab_size=300, seed=0)
    whole = encode.encode_corpus(df, tok, 16)
    ids = embed.document_token_ids(df, tok)
    monkeypatch.setattr(encode, "ENCODE_BATCH", 4)
    parts = encode.encode_corpus(df, tok, 16)
    for f in ("input_ids", "attention_mask", "loss_mask", "truncated"):
        assert (getattr(parts, f) == getattr(whole, f)).all(), f
    assert all((a == b).all() for a, b in zip(embed.document_token_ids(df, tok), ids))
