"""The baselines a user would otherwise pick: DSIR, classifier, perplexity, unigram regime check."""

from __future__ import annotations

import math

import numpy as np
import pytest

from curation.baselines import (
    classifier_scores,
    counted_tokens,
    dsir_scores,
    perplexity_scores,
    top_k_mask,
    unigram_cross_entropy,
)

CODE = [
    "def parse(args): return the list of arguments given to the function call",
    "the function returns a list of strings; raise ValueError if the argument is empty",
    "import os and call os.path.join to build the path of the file from its parts",
    "class Parser: a method parse takes the argument string and returns a dict",
]
VERSE = [
    "and the lord spake unto moses saying, speak unto the children of israel",
    "in the beginning god created the heaven and the earth and the earth was void",
    "and he said unto them, go ye into all the world and preach the gospel",
    "blessed are the meek: for they shall inherit the earth and be comforted",
]


def _pool(rng: np.random.Generator, n: int = 40) -> tuple[list[str], np.ndarray]:
    texts, is_code = [], []
    for i in range(n):
        src = CODE if i % 2 == 0 else VERSE
        words = src[rng.integers(len(src))].split()
        rng.shuffle(words[2:])
        texts.append(" ".join(words))
        is_code.append(i % 2 == 0)
    return texts, np.array(is_code)


@pytest.mark.parametrize("scorer", [dsir_scores, classifier_scores])
def test_target_like_documents_score_higher(scorer) -> None:
    rng = np.random.default_rng(0)
    texts, is_code = _pool(rng)
    target = [c + " again" for c in CODE] * 5
    s = scorer(texts, target, n_buckets=256)
    assert s.shape == (len(texts),) and np.isfinite(s).all()
    assert s[is_code].min() > s[~is_code].max()
    kept = top_k_mask(s, 0.5)
    assert kept.sum() == 20 and kept[is_code].all()


def test_dsir_weight_adds_up_over_a_documents_ngrams() -> None:
    pool = ["alpha beta", "gamma delta", "alpha beta alpha beta"]
    target = ["alpha beta"] * 20
    s = dsir_scores(pool, target, n_buckets=512)
    # the third document holds the first's n-grams twice (plus one "beta alpha" bigram)
    assert s[0] > 0 > s[1] and s[2] > s[0]


def test_perplexity_keeps_the_lowest_loss() -> None:
    losses = np.array([3.0, 1.0, 2.0, np.nan])
    kept = top_k_mask(perplexity_scores(losses), 0.5)
    assert kept.tolist() == [False, True, True, False]


def test_top_k_mask_counts_and_ties() -> None:
    assert top_k_mask(np.zeros(10), 0.3).tolist() == [True] * 3 + [False] * 7
    assert top_k_mask(np.arange(5.0), 1e-9).sum() == 1


def test_unigram_cross_entropy_matches_a_hand_count() -> None:
    ids = np.array([[0, 1, 1, 2], [0, 2, 2, 0]])
    attn = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])
    lmask = np.ones_like(ids)
    toks = counted_tokens(ids, attn, lmask)
    assert [t.tolist() for t in toks] == [[1, 1, 2], [2, 2]]
    # add-one over a vocabulary of 4: counts 1,3,4,1 -> total 9
    p = np.array([1, 3, 4, 1]) / 9
    want = np.mean([-(2 * math.log(p[1]) + math.log(p[2])) / 3, -math.log(p[2])])
    assert unigram_cross_entropy(toks, toks, 4) == pytest.approx(want)
    with pytest.raises(ValueError):
        unigram_cross_entropy(toks, [np.zeros(0, np.int64)], 4)
