"""Fixtures for the flow tests: a tiny real-text manifest and offline Prefect settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import flows.prefect_env  # noqa: F401  (offline settings before prefect is imported)
from tests.fixtures import SOURCES, fixture_docs, write_jsonl

REPO = Path(__file__).resolve().parents[2]


def write_tiny_docs(path: Path, per_source: int = 10) -> Path:
    """The first `per_source` documents of each of the six sources (60 real docs) as JSONL."""
    return write_jsonl(path, [r for s in SOURCES for r in fixture_docs(per_source)[s]])


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
