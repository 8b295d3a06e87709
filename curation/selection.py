"""Value-ranked selection under cluster quotas with near-duplicate removal (pure numpy + FAISS).

Near-duplicate rule (embeddings propose, tokens confirm). Within one cluster, visiting documents
from the highest value down, document B is excluded as `near_duplicate_of:A` when A is an
already-kept (higher-valued) document of the same cluster and

1. the cosine of their *centred* embeddings (`curation.embed.prepare_for_similarity`) exceeds
   `1 - dedup_eps` (FAISS range search: cheap candidate proposal; every pair of a cluster up to
   EXACT_SEARCH_MAX documents, the nearest inverted lists of a larger one), and
2. the Jaccard similarity of their token 3-gram sets (untruncated token ids) is at least
   `dedup_jaccard` (default 0.8: confirmation in the original token space).

Without token ids (`shingles=None`) only rule 1 applies; callers that have the corpus
(`run_prune`, the benchmark) always pass them. If dedup would exclude more than
`max_dedup_frac` (default 30%) of the non-target documents, a loud warning is recorded (it goes to
prune.json and the report); dedup is never silent.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np
import polars as pl

from curation.errors import UsageError
from curation.settings import check_value, validate_keep

KEPT, LOW_VALUE, TARGET, NEAR_DUP = "kept", "low_value", "target", "near_duplicate_of:"
QUALITY = "quality:"
# near-duplicate candidate search: every pair up to this group size, inverted lists above it
EXACT_SEARCH_MAX, SEARCH_CELL, SEARCH_PROBES = 4096, 256, 4


@dataclass
class SelectionResult:
    """Per-document decision (kept, reason) plus the thresholds and quotas that produced it."""

    ids: list[str]
    kept: np.ndarray  # bool [N]
    reason: list[str]
    values: np.ndarray  # float64 [N] (NaN where unscored)
    labels: np.ndarray  # int64 [N]
    by_floor: np.ndarray  # bool [N]: kept through its cluster's floor quota
    n_requested: int
    global_threshold: float  # lowest value kept by the global ranking (nan if none)
    cluster_floor: dict[int, int] = field(default_factory=dict)
    cluster_threshold: dict[int, float] = field(default_factory=dict)
    floor_frac: float = 0.0
    warnings: list[str] = field(default_factory=list)  # the kept count differs from asked
    alerts: list[str] = field(default_factory=list)  # loud, count unaffected (e.g. dedup > 30%)
    dedup: dict = field(default_factory=dict)  # rule, thresholds and counts of near-dup removal

    @property
    def n_kept(self) -> int:
        """Number of kept documents (targets included)."""
        return int(self.kept.sum())

    def to_frame(self) -> pl.DataFrame:
        """One row per document: id, kept, reason, value, cluster."""
        return pl.DataFrame(
            {
                "id": self.ids,
                "kept": self.kept.tolist(),
                "reason": self.reason,
                "value": self.values.tolist(),
                "cluster": self.labels.tolist(),
            },
            schema={
                "id": pl.Utf8,
                "kept": pl.Boolean,
                "reason": pl.Utf8,
                "value": pl.Float64,
                "cluster": pl.Int64,
            },
        )


def _rank_key(values: np.ndarray) -> np.ndarray:
    """Values with NaN mapped to -inf, for ranking."""
    return np.where(np.isnan(values), -np.inf, values)


def _order_desc(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """idx sorted by value descending, ties by position (deterministic)."""
    key = _rank_key(values[idx])
    return idx[np.lexsort((idx, -key))]


def _members(labels: np.ndarray, pool: np.ndarray) -> dict[int, np.ndarray]:
    """Cluster -> ascending positions of its pool documents, clusters ascending (one sort, O(N log N))."""
    idx = np.flatnonzero(pool)
    idx = idx[np.argsort(labels[idx], kind="stable")]
    lab = labels[idx]
    cuts = np.flatnonzero(lab[1:] != lab[:-1]) + 1
    return {int(g[0]): ix for g, ix in zip(np.split(lab, cuts), np.split(idx, cuts)) if len(ix)}


NGRAM = 3
DEDUP_JACCARD = 0.8
MAX_DEDUP_FRAC = 0.3


def token_shingles(tokens: Sequence[int] | np.ndarray, n: int = NGRAM) -> np.ndarray:
    """Sorted unique token n-grams of one document, each packed exactly into one int64.

    Documents shorter than n tokens use their unigrams (offset so they never equal an n-gram).
    Packing uses 21 bits per token, exact for vocabularies below 2**21 (larger ids are hashed).
    """
    t = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if t.size and (t.max() >= 1 << 21 or t.min() < 0):
        t = t % ((1 << 21) - 9)  # deterministic fold for huge vocabularies
    if len(t) < n:
        return np.unique(t - (1 << 62)) if len(t) else np.zeros(0, np.int64)
    h = np.zeros(len(t) - n + 1, np.int64)
    for j in range(n):
        h = (h << 21) | t[j : len(t) - n + 1 + j]
    return np.unique(h)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted unique int64 arrays (1.0 when both are empty)."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def _neighbours_within(x: np.ndarray, min_cos: float) -> tuple[np.ndarray, np.ndarray]:
    """FAISS range search of every row of `x` against all rows: (lims, neighbour positions).

    Up to EXACT_SEARCH_MAX rows every pair is compared. A larger group is split into inverted
    lists of ~SEARCH_CELL rows (k-means, seeded) and each row is compared with the rows of its
    SEARCH_PROBES nearest lists, so the cost grows with the group's size, not its square; a pair
    split across lists that are not probed is missed (recall in benchmarks/prune_scale).
    """
    d = x.shape[1]
    flat = faiss.IndexFlatIP(d)
    if len(x) <= EXACT_SEARCH_MAX:
        index = flat
    else:
        index = faiss.IndexIVFFlat(
            flat, d, math.ceil(len(x) / SEARCH_CELL), faiss.METRIC_INNER_PRODUCT
        )
        index.cp.seed = 0
        index.train(x)
        index.nprobe = SEARCH_PROBES
    index.add(x)
    lims, _, nbr = index.range_search(x, min_cos)
    return lims, nbr


def near_duplicates(
    idx: np.ndarray,
    values: np.ndarray,
    emb: np.ndarray,
    eps: float,
    shingles: Sequence[np.ndarray] | None = None,
    min_jaccard: float = DEDUP_JACCARD,
    stats: dict[str, int] | None = None,
) -> dict[int, int]:
    """Within one group: map dropped doc -> higher-valued kept doc that it nearly duplicates.

    A pair is a candidate when the cosine of `emb` rows exceeds 1 - eps; with `shingles`
    (per-document token n-gram sets, see `token_shingles`) it must also have Jaccard >=
    `min_jaccard`. `stats` (if given) accumulates `candidates` and `confirmed` pair counts.
    """
    if eps <= 0 or len(idx) < 2:
        return {}
    order = _order_desc(values, idx)
    x = np.ascontiguousarray(emb[order], dtype=np.float32)
    lims, nbr = _neighbours_within(x, float(1.0 - eps))
    # Only positions with an earlier (higher-valued) neighbour can be duplicates; every other
    # position is kept without a Python step, so the loop below runs over candidates only.
    m = len(order)
    lims = lims.astype(np.int64)
    owner = np.repeat(np.arange(m), np.diff(lims))
    has_earlier = np.bincount(owner[nbr < owner], minlength=m) > 0
    kept_pos = np.ones(m, bool)  # positions visited so far that were kept (all earlier ones)
    dups: dict[int, int] = {}
    n_cand = n_conf = 0
    for p in np.flatnonzero(has_earlier).tolist():
        nb = nbr[lims[p] : lims[p + 1]]
        nb = np.sort(nb[nb < p])
        earlier = nb[kept_pos[nb]].tolist()
        n_cand += len(earlier)
        rep = None
        for q in earlier:
            if shingles is None or (
                jaccard(shingles[int(order[p])], shingles[int(order[q])]) >= min_jaccard
            ):
                rep = q
                n_conf += 1
                break
        if rep is not None:
            dups[int(order[p])] = int(order[rep])
            kept_pos[p] = False
    if stats is not None:
        stats["candidates"] = stats.get("candidates", 0) + n_cand
        stats["confirmed"] = stats.get("confirmed", 0) + n_conf
    return dups


@dataclass(frozen=True)
class SelectionOptions:
    """Everything `select` takes besides the ranked documents, the keep rate and the floor.

    `is_target` (bool per document: always kept), `shingles` (one `token_shingles` array per
    document: confirm near-duplicate candidates), `quality` (one reason per document, `""` =
    passes; `curation.quality`): per-document inputs; the rest are the near-duplicate rule's
    thresholds (module docstring).
    """

    dedup_eps: float = 0.02
    is_target: np.ndarray | None = None
    shingles: Sequence[np.ndarray] | None = None
    dedup_jaccard: float = DEDUP_JACCARD
    max_dedup_frac: float = MAX_DEDUP_FRAC
    quality: Sequence[str] | None = None


@dataclass
class _Pool:
    """The working state of one selection: who competes, who is out and why."""

    ids: list[str]
    values: np.ndarray
    target: np.ndarray
    failed: np.ndarray  # fails a quality rule
    eligible: np.ndarray  # competes for the budget
    reason: list[str]
    members: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def n_pool(self) -> int:
        """Non-target documents that pass the quality rules."""
        return int((~self.target & ~self.failed).sum())


def select(
    ids: Sequence[str],
    values: np.ndarray,
    labels: np.ndarray,
    emb: np.ndarray | None,
    keep: float,
    floor_frac: float | None = None,
    options: SelectionOptions | None = None,
    **settings: object,
) -> SelectionResult:
    """Keep exactly round(keep*N) docs: targets, then per-cluster floors by value, then top values.

    `emb` should already be centred and re-normalised (`curation.embed.prepare_for_similarity`);
    `settings` are `SelectionOptions` fields by keyword (they override `options`): `shingles`
    confirm near-duplicate candidates; `quality` excludes the documents that fail a quality rule
    before anything else, with reason `quality:<rule>`. `floor_frac` None is half of `keep`.
    """
    opts = dataclasses.replace(options or SelectionOptions(), **settings)  # type: ignore[arg-type]
    keep = validate_keep(keep)
    ids = [str(i) for i in ids]
    n = len(ids)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    floor_frac = keep / 2 if floor_frac is None else floor_frac
    _check_inputs(n, values, labels, emb, floor_frac, opts, ids)
    pool = _start_pool(ids, values, opts)
    n_requested = round(keep * n)
    budget = n_requested - int(pool.target.sum())
    if budget < 0:
        raise UsageError(
            f"the target set ({int(pool.target.sum())} docs) is larger than the kept budget "
            f"({n_requested}); raise --keep or use a separate --target file"
        )
    pool.members = _members(labels, ~pool.target & ~pool.failed)
    dedup = _remove_near_duplicates(pool, emb, opts)
    alerts = _dedup_alerts(dedup, pool.n_pool)
    warnings: list[str] = []
    budget = _eligible_budget(pool, budget, n_requested, warnings)
    kept, by_floor, floors, chosen = _fill(pool, budget, floor_frac, alerts)
    for i in np.flatnonzero(kept & ~pool.target):
        pool.reason[i] = KEPT
    gthr = float(_rank_key(values[chosen]).min()) if len(chosen) else float("nan")
    return SelectionResult(
        ids=ids,
        kept=kept,
        reason=pool.reason,
        values=values,
        labels=labels,
        by_floor=by_floor,
        n_requested=n_requested,
        global_threshold=gthr,
        cluster_floor=floors,
        cluster_threshold=_cluster_thresholds(pool.members, values, kept),
        floor_frac=float(floor_frac),
        warnings=warnings,
        alerts=alerts,
        dedup=dedup,
    )


def _cluster_thresholds(members: dict, values: np.ndarray, kept: np.ndarray) -> dict[int, float]:
    """Lowest kept value of each cluster (NaN where none is finite)."""
    cthr = {}
    for c, ix in members.items():
        kv = values[ix[kept[ix]]]
        cthr[c] = float(np.nanmin(kv)) if np.isfinite(kv).any() else float("nan")
    return cthr


def _check_inputs(n, values, labels, emb, floor_frac, opts: SelectionOptions, ids) -> None:
    """UsageError for inputs of the wrong length or thresholds out of range."""
    if len(values) != n or len(labels) != n:
        raise UsageError(f"ids ({n}), values ({len(values)}) and labels ({len(labels)}) differ")
    if len(set(ids)) != n:
        raise UsageError("document ids must be unique")
    # the prune settings' rules (curation/settings.py), for callers that skip PruneArgs
    for name, v in (
        ("floor", floor_frac),
        ("dedup_eps", opts.dedup_eps),
        ("dedup_jaccard", opts.dedup_jaccard),
    ):
        check_value("prune", name, v)
    if opts.dedup_eps > 0 and (emb is None or len(emb) != n):
        raise UsageError("near-duplicate removal needs one embedding per document")
    if opts.shingles is not None and len(opts.shingles) != n:
        raise UsageError(f"got {len(opts.shingles)} token shingle sets for {n} documents")
    if opts.quality is not None and len(opts.quality) != n:
        raise UsageError(f"got {len(opts.quality)} quality reasons for {n} documents")


def _start_pool(ids: list[str], values: np.ndarray, opts: SelectionOptions) -> _Pool:
    """Targets (kept, reason target) and quality failures (reason quality:<rule>) set apart."""
    n = len(ids)
    target = np.zeros(n, bool) if opts.is_target is None else np.asarray(opts.is_target, bool)
    reason = [LOW_VALUE] * n
    for i in np.flatnonzero(target):
        reason[i] = TARGET
    quality = opts.quality
    failed = np.zeros(n, bool) if quality is None else np.array([bool(q) for q in quality])
    failed &= ~target
    for i in np.flatnonzero(failed):
        reason[i] = f"{QUALITY}{quality[i]}"  # type: ignore[index]
    return _Pool(ids, values, target, failed, ~target & ~failed, reason)


def _remove_near_duplicates(pool: _Pool, emb, opts: SelectionOptions) -> dict:
    """Exclude near-duplicates cluster by cluster; the rule, thresholds and counts (prune.json)."""
    stats: dict[str, int] = {"candidates": 0, "confirmed": 0}
    eps, shingles, jac = opts.dedup_eps, opts.shingles, opts.dedup_jaccard
    for _c, idx in pool.members.items():
        for dup, rep in near_duplicates(idx, pool.values, emb, eps, shingles, jac, stats).items():
            pool.reason[dup] = f"{NEAR_DUP}{pool.ids[rep]}"
            pool.eligible[dup] = False
    n_pool = pool.n_pool
    n_dup = n_pool - int(pool.eligible.sum())
    confirmed = shingles is not None
    return {
        "rule": (
            "off (dedup_eps = 0)"
            if eps <= 0
            else f"same cluster, cosine of centred embeddings > 1 - {eps:g}"
            + (
                f" AND Jaccard of token {NGRAM}-gram sets >= {jac:g}"
                if confirmed
                else " (embeddings only: no token ids given)"
            )
            + "; the higher-valued document is kept"
        ),
        "eps": float(eps),
        "jaccard_min": float(jac) if confirmed else None,
        "ngram": NGRAM if confirmed else None,
        "token_confirmed": confirmed,
        "candidate_pairs": stats["candidates"],
        "confirmed_pairs": stats["confirmed"],
        "n_removed": n_dup,
        "removed_frac": n_dup / n_pool if n_pool else 0.0,
        "max_frac": float(opts.max_dedup_frac),
    }


def _dedup_alerts(dedup: dict, n_pool: int) -> list[str]:
    """The loud warning when near-duplicate removal took more than its allowed share."""
    n_dup, dup_frac, most = dedup["n_removed"], dedup["removed_frac"], dedup["max_frac"]
    if n_pool and dup_frac > most:
        return [
            f"LOUD WARNING: near-duplicate removal excluded {n_dup} of {n_pool} documents "
            f"({dup_frac:.0%} > {most:.0%}); check the embeddings (centred?) and the "
            f"rule ({dedup['rule']}), or lower --dedup-eps (0 turns it off)."
        ]
    return []


def _eligible_budget(pool: _Pool, budget: int, n_requested: int, warnings: list[str]) -> int:
    """The budget, cut to the eligible documents (with a warning) when fewer remain."""
    n_elig = int(pool.eligible.sum())
    if n_elig >= budget:
        return budget
    failed = pool.failed.any()
    what = "quality rules and near-duplicate removal" if failed else "near-duplicate removal"
    warnings.append(
        f"only {n_elig} documents remain after {what}, fewer than the "
        f"{budget} asked for; keeping all of them ({n_elig + int(pool.target.sum())} of "
        f"{len(pool.ids)}, not {n_requested}). Lower --dedup-eps (0 turns it off)"
        + (" or pass --quality off" if failed else "")
        + " to keep exactly --keep."
    )
    return n_elig


def _fill(pool: _Pool, budget: int, floor_frac: float, alerts: list[str]):
    """Kept (targets included), kept-by-floor, the floors and the globally chosen documents."""
    values, eligible, members = pool.values, pool.eligible, pool.members
    kept = pool.target.copy()
    by_floor = np.zeros(len(values), bool)
    # Floors: each cluster keeps floor(floor_frac * its pool size), by value, from its documents
    # of positive value only: a document that lowers the target's fit (value <= 0, or unscored)
    # is never protected by diversity, so junk-pure clusters can be emptied.
    protectable = eligible & (np.nan_to_num(values, nan=-np.inf) > 0)
    floors = {
        c: min(int(math.floor(floor_frac * len(ix) + 1e-9)), int(protectable[ix].sum()))
        for c, ix in members.items()
    }
    if sum(floors.values()) > budget:
        scale = budget / max(1, sum(floors.values()))
        floors = {c: int(math.floor(f * scale)) for c, f in floors.items()}
        alerts.append(f"cluster floors exceeded the budget; scaled down by {scale:.3f}")
    for c, ix in members.items():
        top = _order_desc(values, ix[protectable[ix]])[: floors[c]]
        kept[top] = True
        by_floor[top] = True
    rest = budget - int(by_floor.sum())
    chosen = _order_desc(values, np.flatnonzero(eligible & ~kept))[:rest]
    kept[chosen] = True
    return kept, by_floor, floors, chosen
