"""The RAG corpus: answer-bearing, irrelevant and contradicting passages, one row per question."""

from __future__ import annotations

import pytest

from curation.corpus import read_corpus
from curation.demo_corpus import missing_inputs
from curation.rag_corpus import RAG_SOURCES, build_rag_corpus, rag_frame

pytestmark = pytest.mark.skipif(
    bool(missing_inputs()), reason="the demo's Debian packages are not installed"
)
PER = 20


@pytest.fixture(scope="module")
def frame():
    return rag_frame(per_source=PER, seed=0)


def test_sources_and_one_row_per_question(frame):
    assert dict(frame.group_by("source").len().iter_rows()) == {s: PER for s in RAG_SOURCES}
    assert frame["term"].str.to_lowercase().n_unique() == frame.height
    answers = set(frame["response"].to_list())
    for r in frame.iter_rows(named=True):
        assert f"[{r['source']}] {r['passage']}" in r["prompt"]
        assert r["prompt"].endswith(f"What does '{r['term']}' mean?")
        term, definition = r["passage"].split(": ", 1)
        if r["source"] == "kb-answer":  # the passage holds the answer
            assert term == r["term"] and definition == r["response"]
        elif r["source"] == "kb-contradict":  # this term, someone else's definition
            assert term == r["term"] and definition != r["response"]
            assert r["response"] not in r["passage"]
        else:  # another term's entry
            assert term != r["term"] and r["response"] not in r["passage"]
        assert definition not in answers or r["source"] == "kb-answer"


def test_file_reads_back_and_is_deterministic(frame, tmp_path):
    df = read_corpus(build_rag_corpus(tmp_path / "r.jsonl", per_source=PER, seed=0)).df
    assert df["prompt"].to_list() == frame["prompt"].to_list()
    assert rag_frame(per_source=PER, seed=0).equals(frame)
