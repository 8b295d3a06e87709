"""prune_report.md / .html: what was kept, kept shares, thresholds, excluded examples, a cluster map."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation.render import Figure, Page, Section, Table, write_page
from curation.run_dir import MAP_FILE, PRUNE_REPORT_STEM
from curation.selection import SelectionResult

N_EXAMPLES = 5
MAP_MAX_POINTS = 20_000  # more documents than this: a seeded random sample is drawn
MAP_MAX_SOURCES = 12  # more sources than this: the smallest share one colour ("other")


def _fmt(v: Any) -> str:
    """Cell text of the pruning tables (shares to 3 decimals)."""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:.3f}"
    return str(v)


def map_projection(emb: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D coordinates that separate the clusters: the plane of the cluster centroids' PCA.

    A PCA of all the (normalised) embeddings spreads the documents on a ring, mostly along
    within-cluster directions; projecting on the two principal directions of the centroids keeps
    the between-cluster spread instead. With fewer than 3 clusters the documents' own PCA is used.
    """
    from sklearn.decomposition import PCA

    x = np.asarray(emb, np.float64)
    n = x.shape[0]
    if n < 2 or x.ndim != 2 or x.shape[1] < 2:
        return np.zeros((n, 2))
    ids = np.unique(labels)
    if ids.size >= 3:
        fit_on = np.stack([x[labels == c].mean(axis=0) for c in ids])
    else:
        fit_on = x
    pca = PCA(n_components=min(2, *fit_on.shape), random_state=seed).fit(fit_on)
    xy = pca.transform(x)
    return xy if xy.shape[1] == 2 else np.column_stack([xy, np.zeros(n)])


def _map_sources(sources: list[str] | None, n: int) -> tuple[np.ndarray, list[str]]:
    """Each document's source (the smallest merged into "other"), and the sources by size."""
    src = np.array(sources if sources is not None else ["corpus"] * n, dtype=object)
    names, counts = np.unique(src, return_counts=True)
    order = [str(s) for s in names[np.argsort(-counts, kind="stable")]]
    if len(order) > MAP_MAX_SOURCES:
        order, rest = order[: MAP_MAX_SOURCES - 1], set(order[MAP_MAX_SOURCES - 1 :])
        src = np.where(np.isin(src, list(rest)), "other", src)
        order.append("other")
    return src, order


def cluster_map_png(
    emb: np.ndarray, res: SelectionResult, sources: list[str] | None = None, seed: int = 0
) -> bytes:
    """PNG map of the documents: colour = source, filled = kept, hollow = excluded, + = target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(res.ids)
    xy = map_projection(emb, res.labels, seed)
    src, order = _map_sources(sources, n)
    shown = np.arange(n)
    if n > MAP_MAX_POINTS:
        shown = np.sort(np.random.default_rng(seed).choice(n, MAP_MAX_POINTS, replace=False))
    target = np.array(res.reason) == "target"
    status = {
        "kept": np.asarray(res.kept, bool) & ~target,
        "excluded": ~np.asarray(res.kept, bool),
        "target": target,
    }
    palette = plt.get_cmap("tab10" if len(order) <= 10 else "tab20").colors
    colour = {s: palette[i % len(palette)] for i, s in enumerate(order)}

    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    size = 22 if len(shown) <= 2000 else 8
    for s in order:
        m = np.zeros(n, bool)
        m[shown] = True
        _scatter_source(ax, xy, m & (src == s), status, colour[s], size)
    for c in np.unique(res.labels):
        cx, cy = xy[res.labels == c].mean(axis=0)
        ax.annotate(
            str(c),
            (cx, cy),
            fontsize=8,
            ha="center",
            va="center",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "#999", "alpha": 0.8},
        )
    _map_legends(ax, src, order, colour, status)
    sample = f"; {len(shown)} of {n} documents shown" if len(shown) < n else ""
    ax.set_title(f"documents on the plane of the cluster centroids (boxed: cluster ids{sample})")
    ax.set_xlabel("centroid direction 1")
    ax.set_ylabel("centroid direction 2")
    ax.set_xticks([])
    ax.set_yticks([])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _scatter_source(ax: Any, xy: np.ndarray, m: np.ndarray, status: dict, c: Any, size: float):
    """One source's shown documents: hollow excluded, filled kept, + target."""
    excluded, kept, target = status["excluded"], status["kept"], status["target"]
    if (m & excluded).any():
        ax.scatter(*xy[m & excluded].T, s=size, facecolors="none", edgecolors=[c], lw=0.8)
    if (m & kept).any():
        ax.scatter(*xy[m & kept].T, s=size, c=[c], edgecolors="none", alpha=0.85)
    if (m & target).any():
        ax.scatter(*xy[m & target].T, s=size * 1.6, c=[c], marker="+", lw=1.0)


def _map_legends(ax: Any, src: np.ndarray, order: list[str], colour: dict, status: dict) -> None:
    """The two legends right of the map: by source, by decision."""
    from matplotlib.lines import Line2D

    kept, excluded, target = status["kept"], status["excluded"], status["target"]
    by_source = [
        Line2D([], [], ls="", marker="o", color=colour[s], label=f"{s} ({int((src == s).sum())})")
        for s in order
    ]
    grey = "#555"
    by_status = [
        Line2D([], [], ls="", marker="o", color=grey, label=f"kept ({int(kept.sum())})"),
        Line2D(
            [],
            [],
            ls="",
            marker="o",
            mfc="none",
            color=grey,
            label=f"excluded ({int(excluded.sum())})",
        ),
    ]
    if target.any():
        by_status.append(
            Line2D([], [], ls="", marker="+", color=grey, label=f"target ({int(target.sum())})")
        )
    first = ax.legend(handles=by_source, title="source", fontsize=8, loc="upper left",
                      bbox_to_anchor=(1.01, 1.0))  # fmt: skip
    ax.add_artist(first)
    ax.legend(handles=by_status, title="decision", fontsize=8, loc="lower left",
              bbox_to_anchor=(1.01, 0.0))  # fmt: skip


def _snippet(text: str, n: int = 140) -> str:
    """One-line preview of a document."""
    t = " ".join(str(text).split())
    return t if len(t) <= n else t[: n - 1] + "…"


def _dict_table(rows: list[dict[str, Any]], cols: list[str]) -> Table:
    return Table(cols, [[r.get(c) for c in cols] for r in rows], _fmt)


def _excluded_sections(df: pl.DataFrame, res: SelectionResult) -> list[Section]:
    """A few excluded documents of each kind (lowest value first)."""
    dec = (
        res.to_frame()
        .with_columns(
            df["source"].cast(pl.Utf8).alias("source"),
            df["text"].cast(pl.Utf8).alias("text"),
            pl.col("reason").str.replace(r"^near_duplicate_of:.*$", "near_duplicate").alias("kind"),
        )
        .filter(~pl.col("kept"))
    )
    out = [Section("Examples of excluded documents")]
    for kind in sorted(dec["kind"].unique().to_list()):
        sub = dec.filter(pl.col("kind") == kind).sort("value", nulls_last=False).head(N_EXAMPLES)
        rows = [dict(r, text=_snippet(r["text"])) for r in sub.iter_rows(named=True)]
        out.append(
            Section(
                kind, table=_dict_table(rows, ["id", "source", "value", "reason", "text"]), level=3
            )
        )
    return out


def prune_page(
    df: pl.DataFrame, res: SelectionResult, summary: dict[str, Any], cluster_map: bytes
) -> Page:
    """The pruning report: what was kept first, then the rule's details, tables and the map."""
    s = summary
    answer, details = _answer(s), _details(s)
    q = s.get("quality") or {}
    if q.get("enabled"):
        flagged = ", ".join(f"{k}: {v}" for k, v in q.get("flagged", {}).items())
        answer.append(
            f"quality rules excluded **{q.get('n_flagged', 0)}** documents before value ranking"
            f" ({flagged})"
        )
    details += _quality_details(q)
    details += [f"**warning**: {w}" for w in s.get("warnings", [])]
    cl = [
        dict(
            r,
            floor=s["cluster_floor"].get(str(r["cluster"])),
            threshold=s["cluster_threshold"].get(str(r["cluster"])),
        )
        for r in s["by_cluster"]
    ]
    return Page(
        title="Pruning report",
        answer=answer,
        alerts=[w for w in s.get("warnings", []) if w.startswith("LOUD")],
        details=details,
        sections=[
            Section(
                "Kept share per source",
                table=_dict_table(s["by_source"], ["source", "n", "kept", "kept_share"]),
            ),
            Section(
                "Cluster map",
                figure=Figure(
                    "cluster map",
                    cluster_map,
                    MAP_FILE,
                    "Each dot is a document, coloured by source: filled = kept, hollow = excluded,"
                    " + = target. Axes: the two main directions of the cluster centroids.",
                ),
            ),
            Section(
                "Kept share per cluster",
                table=_dict_table(cl, ["cluster", "n", "kept", "kept_share", "floor", "threshold"]),
            ),
            *_excluded_sections(df, res),
        ],
    )


def _answer(s: dict[str, Any]) -> list[str]:
    """The report's opening lines: counts, reasons, the highest and lowest kept share."""
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(s["reasons"].items()))
    answer = [
        f"kept **{s['n_kept']}** of {s['n_input']} documents (requested {s['n_requested']}),"
        f" excluded {s['n_excluded']}; target documents (kept, marked `target`): {s['n_target']}",
        f"reasons: {reasons}",
    ]
    by_src = s["by_source"]
    if by_src:
        share = sorted(by_src, key=lambda r: (-r["kept_share"], r["source"]))
        lo, hi = share[-1], share[0]
        answer.append(
            f"highest kept share: `{hi['source']}` ({hi['kept']} of {hi['n']}); "
            f"lowest: `{lo['source']}` ({lo['kept']} of {lo['n']})"
        )
    return answer


def _details(s: dict[str, Any]) -> list[str]:
    """Ranking, clusters, thresholds, inputs and the near-duplicate rule."""
    dd = s.get("dedup") or {}
    details = [
        f"ranked by: {s.get('ranked_by', 'value')}",
        f"estimator `{s.get('estimator')}`; clusters: {s['clusters']};"
        f" floor share per cluster: {s['floor_frac']:.3f}",
        f"global value threshold (lowest value kept by ranking): {s['global_threshold']}",
        f"scores: `{s.get('scores')}`; target: `{s.get('target')}`",
    ]
    if dd:
        details.append(
            f"near-duplicates: {dd.get('n_removed', 0)} excluded "
            f"({dd.get('removed_frac', 0.0):.1%} of the non-target documents; "
            f"{dd.get('candidate_pairs', 0)} embedding candidate pairs, "
            f"{dd.get('confirmed_pairs', 0)} confirmed); rule: {dd.get('rule')}"
        )
    return details


def _quality_details(q: dict[str, Any]) -> list[str]:
    """The quality rules' thresholds and the rules not applied (or why they were off)."""
    if not q.get("enabled"):
        return [f"quality rules: {q.get('note')}"] if q else []
    thr = q.get("order_gain_threshold")
    details = [
        f"quality rules (curation/quality.py): {q.get('rules')}; word-order threshold "
        f"{thr if thr is None else round(thr, 4)} nats/token (median gain "
        f"{q.get('order_gain_median') and round(q['order_gain_median'], 4)}); dominant "
        f"script {q.get('dominant_script')}; corpus function words "
        f"{', '.join(q.get('function_words', []))}"
    ]
    details += [
        f"quality rule `{rule}` not applied: {why}"
        for rule, why in (q.get("not_applied") or {}).items()
    ]
    return details


def write_prune_report(
    out: Path, df: pl.DataFrame, res: SelectionResult, emb: np.ndarray, summary: dict[str, Any]
) -> None:
    """Write prune_map.png, prune_report.md and prune_report.html (PNG embedded) atomically."""
    png = cluster_map_png(emb, res, df["source"].cast(pl.Utf8).to_list())
    write_page(out, PRUNE_REPORT_STEM, prune_page(df, res, summary, png))
