"""Fixtures for the flow tests: a tiny real-text manifest and offline Prefect settings."""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from pathlib import Path

import pytest

import flows.prefect_env  # noqa: F401  (offline settings before prefect is imported)

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("bible", "fortunes", "wordnet", "devil", "jargon", "pydocs")


def shared_corpus() -> Path | None:
    """`../shared/corpora/multisource.jsonl.gz` relative to the repo root (or $ADAMSHAP_CORPUS)."""
    candidates = [os.environ.get("ADAMSHAP_CORPUS")]
    candidates += [str(p / "shared/corpora/multisource.jsonl.gz") for p in REPO.parents[:3]]
    candidates += ["/work/shared/corpora/multisource.jsonl.gz"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def write_tiny_docs(path: Path, per_source: int = 10) -> Path:
    """The first `per_source` documents of each of the six sources (60 real docs) as JSONL."""
    corpus = shared_corpus()
    if corpus is None:
        pytest.skip("../shared/corpora/multisource.jsonl.gz not found (set ADAMSHAP_CORPUS)")
    seen: Counter[str] = Counter()
    with gzip.open(corpus, "rt", encoding="utf-8") as f, open(path, "w", encoding="utf-8") as out:
        for line in f:
            row = json.loads(line)
            if seen[row["source"]] < per_source:
                seen[row["source"]] += 1
                out.write(json.dumps(row) + "\n")
            if len(seen) == len(SOURCES) and min(seen.values()) >= per_source:
                break
    return path


TINY_RUN = {
    "preset": "tiny",
    "seq_len": 32,
    "vocab_size": 300,
    "batch_size": 8,
    "target_batch_size": 4,
    "epochs": 1,
    "warm_start_steps": 2,
    "estimators": ["adam2", "adam"],
    "keep": 0.7,
    "clusters": 3,
    "dedup_eps": 0.0,
    "seeds": 1,
    "n_evals": 2,
    "checkpoint_every": 4,
}


def write_tiny_manifest(folder: Path, name: str = "tiny", **run: object) -> Path:
    """A manifest over 60 real docs (10 per source), 3 pydocs + 3 wordnet held out as target."""
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_docs(folder / "docs.jsonl")
    doc = {
        "name": name,
        "sources": [{"name": s, "files": ["docs.jsonl"], "licence": "see Debian"} for s in SOURCES],
        "target": {"holdout": {"sources": ["pydocs", "wordnet"], "n": 3, "seed": 0}},
        "run": {**TINY_RUN, **run},
    }
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")  # JSON is valid YAML
    return path


@pytest.fixture
def tiny_manifest(tmp_path: Path) -> Path:
    """Path of a tiny manifest in a temporary folder."""
    return write_tiny_manifest(tmp_path / "manifest")
