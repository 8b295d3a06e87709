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
