"""Shared benchmark plumbing: the real corpus, a tokenizer trained on it, encoded batches, output."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # the corpus side (polars, curation) is imported where it is used, so the
    # throughput benchmark runs on a machine with only torch + transformers (a lent GPU box)
    import polars as pl

    from curation.encode import EncodedCorpus

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CORPUS_CANDIDATES = [
    ROOT.parent / "shared" / "corpora" / "multisource.jsonl.gz",
    ROOT / "shared" / "corpora" / "multisource.jsonl.gz",
]


def default_corpus() -> Path:
    """The shared multi-source corpus (../shared/corpora/multisource.jsonl.gz)."""
    for c in CORPUS_CANDIDATES:
        if c.exists():
            return c
    raise FileNotFoundError(f"multisource.jsonl.gz not found in {CORPUS_CANDIDATES}")


def sample_corpus(path: Path, per_source: int, seed: int = 0) -> pl.DataFrame:
    """A seeded sample of at most `per_source` documents from every source."""
    import polars as pl

    from curation.corpus import read_corpus

    df = read_corpus(path).df
    parts = []
    for src in sorted(df["source"].unique().to_list()):
        sub = df.filter(pl.col("source") == src)
        parts.append(sub.sample(n=min(per_source, sub.height), seed=seed, shuffle=True))
    return pl.concat(parts)


def tokenized(df: pl.DataFrame, vocab_size: int, seq_len: int, seed: int = 0):
    """Train a byte-level BPE on the frame's text and encode it."""
    from curation.encode import encode_corpus
    from curation.tokenizer import train_tokenizer

    tok = train_tokenizer(df["text"].to_list(), vocab_size=vocab_size, seed=seed)
    return tok, encode_corpus(df, tok, seq_len)


def batch_of(enc: EncodedCorpus, idx: np.ndarray) -> dict[str, torch.Tensor]:
    """Tensors for the rows `idx` of an encoded corpus."""
    return enc.batch(np.asarray(idx))


def environment() -> dict:
    """Where a benchmark ran."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_results(name: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    """Write benchmarks/results/<name>.json and .md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    jp, mp = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    jp.write_text(json.dumps(payload, indent=2, default=float))
    mp.write_text(markdown)
    return jp, mp
