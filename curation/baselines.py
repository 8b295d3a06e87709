"""The selections a user would otherwise pick, scored the same way as value-based pruning.

Every function returns one score per pool document, higher = keep first, so any of them can feed
`top_k_mask` (or `curation.selection.select`) in place of the adamshap values:

- `perplexity_scores`: minus the proxy's per-document loss (perplexity filtering keeps the
  documents the proxy finds most likely, i.e. drops the highest loss).
- `dsir_scores`: DSIR-style importance weights, log p_target(x) - log p_pool(x) under two
  bag-of-hashed-1+2-gram models (add-one smoothed), as in Xie et al. 2023 (selection by top-k).
- `classifier_scores`: a logistic-regression target-vs-pool classifier on hashed 1+2-grams
  (the quality-classifier filter used for GPT-3 / The Pile style pipelines); score = its logit.

`unigram_cross_entropy` is the regime check: the target's mean per-document cross-entropy under
the corpus unigram model with the same tokenizer. A proxy whose target loss is not clearly below
it has learnt little more than token frequencies, and its judgements say little about text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BASELINES = ("random", "perplexity", "dsir", "classifier", "full")
N_BUCKETS = 10_000


def _hashed(texts: Sequence[str], n_buckets: int):
    """Sparse [n_docs, n_buckets] counts of hashed word 1- and 2-grams (lower-cased)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    vec = HashingVectorizer(
        n_features=n_buckets,
        ngram_range=(1, 2),
        alternate_sign=False,
        norm=None,
        lowercase=True,
        token_pattern=r"(?u)\b\w+\b|[^\w\s]",
    )
    return vec.transform(list(texts))


def dsir_scores(
    pool_texts: Sequence[str], target_texts: Sequence[str], n_buckets: int = N_BUCKETS
) -> np.ndarray:
    """DSIR log importance weight of every pool document against the target."""
    pool = _hashed(pool_texts, n_buckets)
    tgt = _hashed(target_texts, n_buckets)
    p_t = np.asarray(tgt.sum(axis=0)).ravel() + 1.0
    p_p = np.asarray(pool.sum(axis=0)).ravel() + 1.0
    log_ratio = np.log(p_t / p_t.sum()) - np.log(p_p / p_p.sum())
    return np.asarray(pool @ log_ratio).ravel().astype(np.float64)


def classifier_scores(
    pool_texts: Sequence[str],
    target_texts: Sequence[str],
    n_buckets: int = N_BUCKETS,
    seed: int = 0,
) -> np.ndarray:
    """Logit of a target-vs-pool logistic regression on hashed 1+2-grams, per pool document."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import normalize

    pool = normalize(_hashed(pool_texts, n_buckets).log1p())
    tgt = normalize(_hashed(target_texts, n_buckets).log1p())
    import scipy.sparse as sp

    x = sp.vstack([tgt, pool])
    y = np.r_[np.ones(tgt.shape[0]), np.zeros(pool.shape[0])]
    clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000, random_state=seed)
    clf.fit(x, y)
    return clf.decision_function(pool).astype(np.float64)


def perplexity_scores(losses: np.ndarray) -> np.ndarray:
    """Minus the per-document proxy loss: perplexity filtering keeps the lowest loss first."""
    return -np.asarray(losses, dtype=np.float64)


def top_k_mask(scores: np.ndarray, keep: float) -> np.ndarray:
    """Boolean mask of the round(keep * n) highest scores (ties by position; NaN ranks last)."""
    s = np.asarray(scores, dtype=np.float64)
    n_keep = max(1, min(len(s), round(keep * len(s))))
    key = np.where(np.isnan(s), -np.inf, s)
    order = np.lexsort((np.arange(len(s)), -key))
    mask = np.zeros(len(s), bool)
    mask[order[:n_keep]] = True
    return mask


def counted_tokens(input_ids: np.ndarray, attention_mask: np.ndarray, loss_mask: np.ndarray):
    """Per-document arrays of the token ids that count as prediction targets (positions >= 1)."""
    m = (np.asarray(attention_mask) * np.asarray(loss_mask)).astype(bool)
    m[:, 0] = False
    ids = np.asarray(input_ids)
    return [ids[i][m[i]] for i in range(ids.shape[0])]


def unigram_cross_entropy(
    train_tokens: Sequence[np.ndarray], target_tokens: Sequence[np.ndarray], vocab_size: int
) -> float:
    """Mean per-document cross-entropy (nats/token) of the target under the add-one unigram model.

    Averaged like the proxy's target loss: each document's mean over its counted tokens, then
    the mean over documents with at least one counted token.
    """
    counts = np.ones(vocab_size, np.float64)
    for t in train_tokens:
        np.add.at(counts, np.asarray(t, np.int64), 1.0)
    logp = np.log(counts / counts.sum())
    per_doc = [-logp[np.asarray(t, np.int64)].mean() for t in target_tokens if len(t)]
    if not per_doc:
        raise ValueError("the target has no counted tokens")
    return float(np.mean(per_doc))
