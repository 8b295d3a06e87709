"""Shared benchmark plumbing: the real corpus, a tokenizer trained on it, encoded batches, output.

Benchmarks build their corpus with `adamshap corpus build demo` (the six Debian sources that
`make setup` installs) into runs/benchmarks/corpora/, rebuilt on every run (a few seconds), so
a stale file can never stand in for the current builder; `--corpus PATH` takes any other file.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
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
CORPORA = ROOT / "runs" / "benchmarks" / "corpora"


def build_corpus(
    per_source: int, seed: int = 0, sources: Sequence[str] | None = None, out_dir: Path = CORPORA
) -> Path:
    """Run `adamshap corpus build demo --per-source N --seed S [--sources ...]`; return the file."""
    from flows.cli import main as adamshap

    tag = f"demo-{per_source}-seed{seed}" + ("-" + "-".join(sources) if sources else "")
    out = Path(out_dir) / f"{tag}.jsonl.gz"
    argv = ["corpus", "build", "demo", "--out", str(out), "--per-source", str(per_source)]
    argv += ["--seed", str(seed)]
    if sources:
        argv += ["--sources", ",".join(sources)]
    code = adamshap(argv)
    if code != 0:
        raise SystemExit(f"`adamshap {' '.join(argv)}` failed (exit {code}); see the line above")
    return out


def default_corpus(per_source: int = 400, seed: int = 0) -> Path:
    """The benchmark corpus: `per_source` documents from each of the six demo sources."""
    return build_corpus(per_source, seed)


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
        "load_average": round(os.getloadavg()[0], 2),  # 1-minute, when this was recorded
    }


def write_results(name: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    """Write benchmarks/results/<name>.json and .md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    jp, mp = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    jp.write_text(json.dumps(payload, indent=2, default=float))
    mp.write_text(markdown)
    return jp, mp
