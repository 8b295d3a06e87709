"""The RAG source-removal truth: its evaluation split uses no term or answer of the corpus."""

from __future__ import annotations

import pytest

from curation.demo_corpus import missing_inputs


@pytest.mark.skipif(bool(missing_inputs()), reason="the demo's Debian packages are not installed")
def test_evaluation_split_is_unused_by_the_corpus():
    from benchmarks import rag_truth as rt
    from curation.rag_corpus import rag_frame

    df = rag_frame(per_source=20, seed=0)
    ev = rt.evaluation_split(df, 30, seed=0)
    assert ev.height == 30 and ev["prompt"].n_unique() == 30
    terms = {p.split("'")[1].lower() for p in ev["prompt"]}
    assert len(terms) == 30
    assert not terms & {t.lower() for t in df["term"]}
    assert not terms & {p.split(": ", 1)[0].lower() for p in df["passage"]}
    assert not set(ev["response"]) & set(df["response"])
    for p, r in zip(ev["prompt"], ev["response"]):
        assert p.startswith("Context: [kb-answer] ") and f": {r}\nQuestion: What does '" in p
    assert rt.evaluation_split(df, 30, seed=0).equals(ev)
