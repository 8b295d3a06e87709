"""Selection rules (exact count, floors, near-duplicates, nothing lost) and `run_prune`."""

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.errors import AdamshapError, UsageError
from curation.prune import PruneArgs, run_prune, select, validate_keep


def _unit(rng: np.random.Generator, n: int, d: int = 8) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _case(n: int = 120, k: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [f"d{i}" for i in range(n)], rng.normal(size=n), rng.integers(0, k, n), _unit(rng, n)


@pytest.mark.parametrize("keep", [0.1, 0.33, 0.7, 1.0])
def test_exact_keep_count(keep: float) -> None:
    ids, v, lab, emb = _case()
    res = select(ids, v, lab, emb, keep, dedup_eps=0.0)
    assert res.n_kept == round(keep * len(ids)) == res.n_requested
    assert not res.warnings


def test_floors_never_protect_non_positive_values() -> None:
    ids, v, lab, emb = _case()
    lab = np.where(np.arange(120) < 20, 0, 1)
    v = np.abs(v) + 1.0
    v[:20] = -np.abs(v[:20])  # cluster 0: every document lowers the target's fit
    v[20:23] = np.nan  # unscored documents are not protected either
    res = select(ids, v, lab, emb, keep=0.5, floor_frac=0.4, dedup_eps=0.0)
    assert res.kept[:23].sum() == 0 and res.cluster_floor[0] == 0
    assert res.n_kept == 60


def test_floors_respected_and_rest_by_value() -> None:
    ids, v, lab, emb = _case()
    lab = np.where(np.arange(120) < 20, 0, 1)  # cluster 0 gets the 20 lowest values
    v = np.where(lab == 0, v - 100, v)
    v = v - v.min() + 1.0  # all positive: floors may protect them
    res = select(ids, v, lab, emb, keep=0.5, floor_frac=0.25, dedup_eps=0.0)
    assert res.kept[lab == 0].sum() == math.floor(0.25 * 20) == res.cluster_floor[0]
    # floors pick the best of their cluster
    c0 = np.flatnonzero(lab == 0)
    best = c0[np.argsort(-v[c0])[:5]]
    assert res.kept[best].all()
    # without floors, the low-valued cluster loses everything
    res0 = select(ids, v, lab, emb, keep=0.5, floor_frac=0.0, dedup_eps=0.0)
    assert res0.kept[lab == 0].sum() == 0
    # the non-floor kept ones are the global top values
    rest = res.kept & ~res.by_floor
    assert v[rest].min() >= v[~res.kept & (lab == 1)].max()


def test_default_floor_is_half_the_keep_rate() -> None:
    ids, v, lab, emb = _case()
    res = select(ids, v, lab, emb, keep=0.6, dedup_eps=0.0)
    assert res.floor_frac == pytest.approx(0.3)
    for c in np.unique(lab):
        assert res.kept[lab == c].sum() >= math.floor(0.3 * (lab == c).sum())


def test_near_duplicates_keep_higher_value() -> None:
    ids, v, lab, emb = _case(n=40, k=2)
    emb[11] = emb[10]
    emb[12] = emb[10] + 1e-4
    emb[12] /= np.linalg.norm(emb[12])
    lab[10:13] = 0
    v[10], v[11], v[12] = 0.0, 5.0, -1.0
    res = select(ids, v, lab, emb, keep=0.5, dedup_eps=0.02)
    assert res.reason[10] == "near_duplicate_of:d11"
    assert res.reason[12] == "near_duplicate_of:d11"
    assert res.kept[11] and not res.kept[10] and not res.kept[12]
    assert res.n_kept == 20
    # same cosine but a different cluster: not compared
    lab2 = lab.copy()
    lab2[10] = 1
    res2 = select(ids, v, lab2, emb, keep=0.5, dedup_eps=0.02)
    assert not res2.reason[10].startswith("near_duplicate")
    # eps 0 turns it off
    res3 = select(ids, v, lab, emb, keep=0.5, dedup_eps=0.0)
    assert not any(r.startswith("near_duplicate") for r in res3.reason)


def test_too_few_after_dedup_says_so() -> None:
    ids, v, lab, emb = _case(n=20, k=1)
    emb[:] = emb[0]
    res = select(ids, v, lab, emb, keep=0.5, dedup_eps=0.02)
    assert res.n_kept == 1 and res.warnings and "near-duplicate" in res.warnings[0]


def test_targets_are_kept_and_counted() -> None:
    ids, v, lab, emb = _case()
    t = np.zeros(120, bool)
    t[:6] = True
    res = select(ids, v, lab, emb, keep=0.5, dedup_eps=0.0, is_target=t)
    assert res.kept[:6].all() and all(r == "target" for r in res.reason[:6])
    assert res.n_kept == 60


@pytest.mark.parametrize("keep", [0, 0.0, 1.5, -0.1, "abc", None, float("nan")])
def test_keep_validation(keep: object) -> None:
    with pytest.raises(UsageError, match="keep"):
        validate_keep(keep)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    k=st.integers(1, 6),
    keep=st.floats(0.01, 1.0),
    eps=st.sampled_from([0.0, 0.02, 0.5]),
    seed=st.integers(0, 2**16),
    dup_block=st.integers(0, 10),
)
def test_nothing_lost(n: int, k: int, keep: float, eps: float, seed: int, dup_block: int) -> None:
    rng = np.random.default_rng(seed)
    ids = [f"x{i}" for i in range(n)]
    v = np.round(rng.normal(size=n), 1)  # ties on purpose
    v[rng.random(n) < 0.1] = np.nan
    emb = _unit(rng, n, 4)
    emb[: min(dup_block, n)] = emb[0]
    lab = rng.integers(0, k, n)
    t = rng.random(n) < 0.05
    if t.sum() > round(keep * n):
        t[:] = False
    res = select(ids, v, lab, emb, keep, dedup_eps=eps, is_target=t)
    df = res.to_frame()
    assert df.height == n and df["id"].n_unique() == n
    kept, excl = df.filter(pl.col("kept")), df.filter(~pl.col("kept"))
    assert sorted(kept["id"].to_list() + excl["id"].to_list()) == sorted(ids)
    assert set(kept["reason"]) <= {"kept", "target"}
    assert all(r == "low_value" or r.startswith("near_duplicate_of:") for r in excl["reason"])
    if not res.warnings:
        assert res.n_kept == round(keep * n)
    else:
        assert res.n_kept < round(keep * n)
    for r, i in zip(res.reason, range(n)):
        if r.startswith("near_duplicate_of:"):
            other = ids.index(r.split(":", 1)[1])
            assert res.kept[other] or res.reason[other] == "low_value"
            assert lab[other] == lab[i]


# ------------------------------------------------------------------------------ run_prune


def _corpus(path: Path, n: int = 48) -> None:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for i in range(n):
            text = " ".join(rng.choice(words, size=12))
            f.write(json.dumps({"id": f"doc-{i}", "source": f"s{i % 3}", "text": text}) + "\n")


def _fake_run(run: Path, corpus: Path) -> None:
    """A scoring-run folder without scoring: tokenizer, tiny final model, values, run.json."""
    from adamshap_core import build_model
    from curation.corpus import read_corpus
    from curation.tokenizer import save_tokenizer, train_tokenizer

    df = read_corpus(corpus).df
    tok = train_tokenizer(df["text"].to_list(), vocab_size=300, seed=0)
    save_tokenizer(tok, run / "tokenizer")
    build_model("tiny", len(tok), 32, seed=0).save_pretrained(run / "final_model")
    rng = np.random.default_rng(1)
    pl.DataFrame(
        {
            "id": df["id"],
            "source": df["source"],
            "n_steps": [1] * df.height,
            "value_adam2": rng.normal(size=df.height),
            "mean_adam2": rng.normal(size=df.height),
        }
    ).write_parquet(run / "values_by_example.parquet")
    (run / "run.json").write_text(json.dumps({"args": {"seq_len": 32}}))
    (run / ".complete").write_text("{}\n")  # prune takes finished runs only


@pytest.mark.integration
def test_run_prune_end_to_end(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    _corpus(corpus)
    _fake_run(tmp_path / "run", corpus)
    out = run_prune(
        PruneArgs(
            corpus=str(corpus),
            keep=0.5,
            out=str(tmp_path / "o"),
            scores=str(tmp_path / "run"),
            clusters=3,
            progress=False,
        )
    )
    for name in (
        "kept.jsonl",
        "excluded.jsonl",
        "prune.json",
        "prune_report.md",
        "prune_report.html",
        "target.jsonl",
    ):
        assert (out / name).exists(), name
    kept = pl.read_ndjson(out / "kept.jsonl")
    excl = pl.read_ndjson(out / "excluded.jsonl")
    assert kept.columns == ["id", "source", "text"]
    assert {"reason", "value"} <= set(excl.columns)
    assert sorted(kept["id"].to_list() + excl["id"].to_list()) == sorted(
        f"doc-{i}" for i in range(48)
    )
    assert kept.height == 24
    summary = json.loads((out / "prune.json").read_text())["summary"]
    assert summary["n_target"] == 16 and summary["n_kept"] == 24
    assert "base64," in (out / "prune_report.html").read_text()
    # cached embeddings are reused
    assert (tmp_path / "run" / "embeddings.npy").exists()


@pytest.mark.parametrize("keep", [0, 1.5, "abc"])
def test_run_prune_rejects_bad_keep(tmp_path: Path, keep: object) -> None:
    with pytest.raises(UsageError):
        run_prune(
            PruneArgs(corpus=str(tmp_path / "nope.jsonl"), keep=keep, out=str(tmp_path / "o"))
        )  # type: ignore[arg-type]


def test_run_prune_empty_corpus_and_too_many_clusters(tmp_path: Path) -> None:
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(AdamshapError, match="empty"):
        run_prune(PruneArgs(corpus=str(empty), out=str(tmp_path / "o")))
    small = tmp_path / "s.jsonl"
    _corpus(small, n=5)
    with pytest.raises(UsageError, match="clusters"):
        run_prune(PruneArgs(corpus=str(small), out=str(tmp_path / "o"), clusters=6))


# ------------------------------------------------------------------- robust near-duplicates


def _parallel_case(n: int = 40, seed: int = 0):
    """Nearly parallel raw embeddings (pairwise cosine > 0.98) of n distinct token sequences."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=16)
    raw = shared * 40 + rng.normal(size=(n, 16))
    raw = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)
    tokens = [rng.integers(0, 500, size=60) for _ in range(n)]
    return [f"p{i}" for i in range(n)], rng.normal(size=n), np.zeros(n, np.int64), raw, tokens


def test_token_shingles_and_jaccard() -> None:
    from curation.selection import jaccard, token_shingles

    a = token_shingles([1, 2, 3, 4, 1, 2, 3])
    assert len(a) == 4  # (1,2,3) twice -> one shingle
    assert jaccard(a, a) == 1.0
    assert jaccard(a, token_shingles([9, 8, 7, 6])) == 0.0
    assert jaccard(token_shingles([1, 2]), token_shingles([1, 2])) == 1.0  # short docs: unigrams
    assert len(token_shingles([])) == 0
    assert jaccard(token_shingles([]), token_shingles([])) == 1.0


def test_parallel_but_distinct_embeddings_are_not_deduplicated() -> None:
    from curation.embed import prepare_for_similarity
    from curation.selection import token_shingles

    ids, v, lab, raw, tokens = _parallel_case()
    assert (raw @ raw.T)[np.triu_indices(len(ids), 1)].min() > 0.98
    sh = [token_shingles(t) for t in tokens]
    # the old failure: raw embeddings alone collapse the cluster to one document
    collapsed = select(ids, v, lab, raw, keep=0.5, dedup_eps=0.02)
    assert collapsed.n_kept == 1 and collapsed.alerts and "LOUD" in collapsed.alerts[0]
    # centred embeddings: no candidates at all
    res = select(ids, v, lab, prepare_for_similarity(raw), keep=0.5, dedup_eps=0.02, shingles=sh)
    assert not any(r.startswith("near_duplicate") for r in res.reason)
    assert res.n_kept == 20 and not res.alerts and not res.warnings
    assert res.dedup["n_removed"] == 0 and res.dedup["token_confirmed"]
    # even raw (parallel) embeddings propose, but distinct tokens veto every pair
    res2 = select(ids, v, lab, raw, keep=0.5, dedup_eps=0.02, shingles=sh)
    assert res2.dedup["candidate_pairs"] > 0 and res2.dedup["confirmed_pairs"] == 0
    assert res2.n_kept == 20 and not res2.alerts


def test_exact_duplicate_texts_are_deduplicated() -> None:
    from curation.embed import prepare_for_similarity
    from curation.selection import token_shingles

    ids, v, lab, raw, tokens = _parallel_case()
    raw[5], tokens[5] = raw[4], tokens[4]  # an exact copy (same text, same embedding)
    raw[7], tokens[7] = raw[6], tokens[6].copy()
    tokens[7][-1] = (tokens[7][-1] + 1) % 500  # one token differs: still a near-duplicate
    raw[9] = raw[8]  # same embedding, different text: not a duplicate
    v[4], v[5], v[6], v[7] = 1.0, 2.0, 3.0, -3.0
    sh = [token_shingles(t) for t in tokens]
    res = select(ids, v, lab, prepare_for_similarity(raw), keep=0.5, dedup_eps=0.02, shingles=sh)
    assert res.reason[4] == "near_duplicate_of:p5"  # the higher-valued copy is kept
    assert res.reason[7] == "near_duplicate_of:p6"
    assert not res.reason[8].startswith("near_dup") and not res.reason[9].startswith("near_dup")
    assert res.dedup["n_removed"] == 2 and res.n_kept == 20 and not res.alerts


def test_mass_dedup_raises_a_loud_alert() -> None:
    from curation.selection import token_shingles

    ids, v, lab, emb = _case(n=20, k=1)
    emb[:10] = emb[0]
    sh = [token_shingles([1, 2, 3, 4] if i < 10 else [i, i + 1, i + 2]) for i in range(20)]
    res = select(ids, v, lab, emb, keep=0.5, dedup_eps=0.02, shingles=sh)
    assert res.dedup["n_removed"] == 9 and res.dedup["removed_frac"] == pytest.approx(0.45)
    assert res.alerts and res.alerts[0].startswith("LOUD WARNING") and "45%" in res.alerts[0]
    assert res.n_kept == 10  # the count is unaffected: 11 eligible >= 10 asked


@pytest.mark.integration
def test_run_prune_records_dedup_rule_and_dedups_copies(tmp_path: Path) -> None:
    corpus, target = tmp_path / "c.jsonl", tmp_path / "t.jsonl"
    _corpus(corpus)
    rows = [json.loads(ln) for ln in corpus.read_text().splitlines()]
    for i in (1, 3, 5):  # three exact copies
        rows[i]["text"] = rows[i - 1]["text"]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    target.write_text(json.dumps({"id": "t-0", "source": "s0", "text": "alpha beta"}) + "\n")
    _fake_run(tmp_path / "run", corpus)
    out = run_prune(
        PruneArgs(
            corpus=str(corpus),
            keep=0.5,
            out=str(tmp_path / "o"),
            scores=str(tmp_path / "run"),
            target=str(target),
            clusters=3,
            progress=False,
            quality=False,  # the synthetic words fail the quality rules; this tests dedup alone
        )
    )
    summary = json.loads((out / "prune.json").read_text())["summary"]
    dd = summary["dedup"]
    assert dd["token_confirmed"] and dd["jaccard_min"] == 0.8 and "Jaccard" in dd["rule"]
    assert dd["n_removed"] == 3 and summary["reasons"]["near_duplicate"] == 3
    assert not summary["warnings"] and summary["n_kept"] == 24
    excl = pl.read_ndjson(out / "excluded.jsonl")
    dups = excl.filter(pl.col("reason").str.starts_with("near_duplicate_of:"))
    pairs = {f"doc-{i - 1}": f"doc-{i}" for i in (1, 3, 5)}
    pairs.update({b: a for a, b in pairs.items()})
    for dup, reason in zip(dups["id"], dups["reason"]):
        assert reason == f"near_duplicate_of:{pairs[dup]}"  # each copy points at its twin
    assert len({min(d, pairs[d]) for d in dups["id"]}) == 3
    assert "near-duplicates: 3 excluded" in (out / "prune_report.md").read_text()


def test_scaled_floors_do_not_count_as_a_short_keep() -> None:
    # regression (found by test_nothing_lost): targets use the whole budget, floors scale to 0
    ids, v, lab, emb = _case(n=51, k=1)
    t = np.zeros(51, bool)
    t[:3] = True
    res = select(ids, v, lab, emb, keep=0.0625, dedup_eps=0.0, is_target=t)
    assert res.n_kept == 3 == res.n_requested and not res.warnings
    assert res.alerts and "floors" in res.alerts[0]
