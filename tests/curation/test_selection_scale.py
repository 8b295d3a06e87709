"""The scaled-up code paths give the same results as the plain ones they replaced."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from curation import cluster, embed, selection
from curation.errors import UsageError
from curation.ledger import LedgerWriter, read_ledger


def _reference_near_duplicates(idx, values, emb, eps, shingles, min_jaccard):
    """The per-document loop that `near_duplicates` replaced (kept here as the oracle)."""
    order = selection._order_desc(values, idx)
    x = np.ascontiguousarray(emb[order], dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    lims, _, nbr = index.range_search(x, float(1.0 - eps))
    kept_pos: set[int] = set()
    dups: dict[int, int] = {}
    n_cand = 0
    for p in range(len(order)):
        nb = nbr[lims[p] : lims[p + 1]]
        earlier = sorted(int(q) for q in nb if q < p and int(q) in kept_pos)
        n_cand += len(earlier)
        rep = None
        for q in earlier:
            a, b = shingles[int(order[p])], shingles[int(order[q])]
            if shingles is None or selection.jaccard(a, b) >= min_jaccard:
                rep = q
                break
        if rep is not None:
            dups[int(order[p])] = int(order[rep])
        else:
            kept_pos.add(p)
    return dups, n_cand


@pytest.mark.parametrize("seed", range(6))
def test_near_duplicates_match_the_reference_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 800))
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    src, dst = rng.integers(0, n, n // 4), rng.integers(0, n, n // 4)
    emb[dst] = emb[src] + 0.01 * rng.normal(size=(len(src), 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    values = np.round(rng.normal(size=n), 1)  # ties on purpose
    values[rng.random(n) < 0.05] = np.nan
    shingles = [np.unique(rng.integers(0, 20, size=int(rng.integers(0, 8)))) for _ in range(n)]
    for i, j in zip(dst, src):
        shingles[i] = shingles[j]
    idx = np.sort(rng.choice(n, size=n * 3 // 4, replace=False))
    stats: dict[str, int] = {}
    got = selection.near_duplicates(idx, values, emb, 0.05, shingles, 0.8, stats)
    want, n_cand = _reference_near_duplicates(idx, values, emb, 0.05, shingles, 0.8)
    assert got == want and stats["candidates"] == n_cand
    assert len(got) > 0


def test_large_groups_search_inverted_lists_and_find_the_same_duplicates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above EXACT_SEARCH_MAX the candidate search probes inverted lists; on a clustered group
    with near copies (cosine ~0.99) it finds the pairs every-pair search finds, and it really
    is the inverted-list index that answers (checked by counting the indexes built)."""
    rng = np.random.default_rng(3)
    n, d = 3000, 32
    centres = rng.normal(size=(12, d))
    x = centres[rng.integers(0, 12, n)] + 0.5 * rng.normal(size=(n, d))
    src, dst = rng.integers(0, n, n // 20), rng.choice(n, n // 20, replace=False)
    x[dst] = x[src] + 0.05 * rng.normal(size=(len(dst), d))
    emb = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    values, idx = rng.normal(size=n), np.arange(n)
    exact = selection.near_duplicates(idx, values, emb, 0.02)
    built: list[str] = []
    real_ivf = faiss.IndexIVFFlat

    def counting_ivf(*args):
        built.append("ivf")
        return real_ivf(*args)

    monkeypatch.setattr(selection, "EXACT_SEARCH_MAX", 500)
    monkeypatch.setattr(selection.faiss, "IndexIVFFlat", counting_ivf)
    approx = selection.near_duplicates(idx, values, emb, 0.02)
    assert built == ["ivf"]
    assert len(exact) > 50
    assert len(set(exact) & set(approx)) >= 0.98 * len(exact)
    assert len(set(approx) - set(exact)) <= 0.02 * len(exact)


def test_members_groups_like_a_mask_per_cluster() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 9, 500)
    pool = rng.random(500) < 0.8
    got = selection._members(labels, pool)
    want = {int(c): np.flatnonzero(pool & (labels == c)) for c in np.unique(labels[pool])}
    assert list(got) == list(want)
    assert all(np.array_equal(got[c], want[c]) for c in want)
    assert selection._members(labels, np.zeros(500, bool)) == {}


def test_prepare_for_similarity_blocks_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(1000, 16)) + 2).astype(np.float32)
    x[::9] = x.mean(axis=0)  # rows at the mean become zero vectors
    whole = embed.prepare_for_similarity(x)
    monkeypatch.setattr(embed, "_BLOCK", 7)
    assert np.array_equal(embed.prepare_for_similarity(x), whole)
    same = np.ones((5, 4), np.float32)
    assert np.array_equal(embed.prepare_for_similarity(same), np.full((5, 4), 0.5, np.float32))


def test_kmeans_finds_a_nan_in_a_later_block(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(2).normal(size=(50, 4)).astype(np.float32)
    x[47, 1] = np.nan
    monkeypatch.setattr(cluster, "_BLOCK", 8)
    with pytest.raises(UsageError, match="NaN"):
        cluster.spherical_kmeans(x, 2)


def test_read_ledger_columns(tmp_path: Path) -> None:
    w = LedgerWriter(tmp_path, ("sgd",))
    w.add_step(2, 0, ["b"], ["s"], 1e-3, [1.0], {"sgd": [0.5]})
    w.add_step(1, 0, ["a"], ["s"], 1e-3, [1.0], {"sgd": [0.25]})
    w.flush()
    full = read_ledger(tmp_path)
    part = read_ledger(tmp_path, ["id", "value_sgd"])
    assert part.columns == ["id", "value_sgd"]
    assert part.equals(full.select("id", "value_sgd"))
    assert full["id"].to_list() == ["a", "b"]
