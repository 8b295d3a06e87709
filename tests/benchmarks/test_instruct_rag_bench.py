"""The instruction and RAG benchmarks' ranking and checks, on hand-made per-example values."""

from __future__ import annotations

import numpy as np
import polars as pl

from benchmarks import instruct, rag


def _run(tmp_path, means: dict[str, float]):
    rng = np.random.default_rng(0)
    rows = []
    for src, mu in means.items():
        for k in range(40):
            rows.append(
                {"id": f"{src}-{k}", "source": src, "value_adam2": mu + 0.05 * rng.normal()}
            )
    pl.DataFrame(rows).write_parquet(tmp_path / "values_by_example.parquet")
    return tmp_path


def test_instruct_checks(tmp_path):
    run = _run(tmp_path, {"pydoc-function": 0.5, "bible-verse": 0.1, "shuffled": -0.3})
    r = instruct.rank_sources(run)["estimators"]["adam2"]
    assert r["target_first"] and r["shuffled_last"] and r["shuffled_negative_ci_excludes_zero"]
    r2 = instruct.rank_sources(_run(tmp_path, {"pydoc-function": 0.0, "shuffled": 0.2}))
    assert not r2["estimators"]["adam2"]["target_first"]
    assert not r2["estimators"]["adam2"]["shuffled_negative_ci_excludes_zero"]


def test_rag_checks(tmp_path):
    run = _run(tmp_path, {"kb-answer": 0.4, "kb-irrelevant": 0.1, "kb-contradict": -0.2})
    r = rag.rank_sources(run)["estimators"]["adam2"]
    assert r["answer_first"] and r["contradict_last"]
    assert [t["source"] for t in r["table"]] == ["kb-answer", "kb-irrelevant", "kb-contradict"]


def test_split_holds_out_only_the_named_source():
    df = pl.DataFrame({"id": [f"a{i}" for i in range(20)] + ["b0"], "source": ["a"] * 20 + ["b"]})
    train, target = instruct.split(df, 0.1, 0, source="a")
    assert target.height == 2 and set(target["source"]) == {"a"}
    assert train.height == 19 and not set(train["id"]) & set(target["id"])
