"""Benchmarks build their corpus with `adamshap corpus build demo`, inside the repository."""

from __future__ import annotations

import gzip
import json

from benchmarks.common import CORPORA, ROOT, build_corpus, sample_corpus
from tests.fixtures import fixture_corpus


def test_build_corpus_runs_the_cli_with_the_asked_sizes(tmp_path):
    fixture_corpus()  # the Debian packages are there (else: a data skip, a failure in CI)
    path = build_corpus(3, seed=2, sources=("devil", "jargon"), out_dir=tmp_path)
    assert path == tmp_path / "demo-3-seed2-devil-jargon.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert [r["source"] for r in rows] == ["devil"] * 3 + ["jargon"] * 3
    assert sample_corpus(path, 2)["source"].to_list() == ["devil"] * 2 + ["jargon"] * 2
    assert ROOT in CORPORA.parents  # the default place is inside the repository (runs/, ignored)
