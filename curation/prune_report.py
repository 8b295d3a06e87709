"""prune_report.md / .html: kept shares, thresholds, excluded examples and a 2-D cluster map."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation.selection import SelectionResult

N_EXAMPLES = 5


def cluster_map_png(emb: np.ndarray, res: SelectionResult, seed: int = 0) -> bytes:
    """PNG of a 2-D PCA of the embeddings, coloured kept / excluded / target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    n = len(res.ids)
    xy = np.zeros((n, 2))
    if n >= 2 and emb.shape[1] >= 2:
        xy = PCA(n_components=2, random_state=seed).fit_transform(emb.astype(np.float64))
    reason = np.array(res.reason)
    fig, ax = plt.subplots(figsize=(7, 5.5), dpi=100)
    groups = [
        ("excluded", ~res.kept, "#d62728", 6),
        ("kept", res.kept & (reason != "target"), "#1f77b4", 6),
        ("target", reason == "target", "#2ca02c", 14),
    ]
    for name, m, colour, size in groups:
        if m.any():
            ax.scatter(
                xy[m, 0],
                xy[m, 1],
                s=size,
                c=colour,
                alpha=0.55,
                label=f"{name} ({m.sum()})",
                linewidths=0,
            )
    for c in np.unique(res.labels):
        cx, cy = xy[res.labels == c].mean(axis=0)
        ax.annotate(str(c), (cx, cy), fontsize=7, ha="center", va="center", alpha=0.8)
    ax.set_title("documents (PCA of proxy embeddings); numbers = cluster ids")
    ax.legend(loc="best", fontsize=8, markerscale=2)
    ax.set_xticks([])
    ax.set_yticks([])
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    """Markdown table of dict rows."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:.3f}"
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "".join("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |\n" for r in rows)


def _snippet(text: str, n: int = 140) -> str:
    """One-line preview of a document."""
    t = " ".join(str(text).split())
    return t if len(t) <= n else t[: n - 1] + "…"


def report_markdown(df: pl.DataFrame, res: SelectionResult, summary: dict[str, Any]) -> str:
    """The Markdown body of the pruning report."""
    s = summary
    lines = ["# Pruning report", ""]
    loud = [w for w in s.get("warnings", []) if w.startswith("LOUD")]
    lines += [f"**{w}**" for w in loud] + ([""] if loud else [])
    dd = s.get("dedup") or {}
    lines += [
        f"- kept **{s['n_kept']}** of {s['n_input']} documents (requested {s['n_requested']}),"
        f" excluded {s['n_excluded']}; target documents (kept, marked `target`): {s['n_target']}",
        f"- estimator `{s.get('estimator')}`; clusters: {s['clusters']};"
        f" floor share per cluster: {s['floor_frac']:.3f}",
        f"- global value threshold (lowest value kept by ranking): {s['global_threshold']}",
        f"- reasons: {', '.join(f'{k}: {v}' for k, v in sorted(s['reasons'].items()))}",
        f"- scores: `{s.get('scores')}`; target: `{s.get('target')}`",
    ]
    if dd:
        lines.append(
            f"- near-duplicates: {dd.get('n_removed', 0)} excluded "
            f"({dd.get('removed_frac', 0.0):.1%} of the non-target documents; "
            f"{dd.get('candidate_pairs', 0)} embedding candidate pairs, "
            f"{dd.get('confirmed_pairs', 0)} confirmed); rule: {dd.get('rule')}"
        )
    lines += [f"- **warning**: {w}" for w in s.get("warnings", [])]
    lines += [
        "",
        "## Kept share per source",
        "",
        _table(s["by_source"], ["source", "n", "kept", "kept_share"]),
    ]
    cl = [
        dict(
            r,
            floor=s["cluster_floor"].get(str(r["cluster"])),
            threshold=s["cluster_threshold"].get(str(r["cluster"])),
        )
        for r in s["by_cluster"]
    ]
    lines += [
        "## Kept share per cluster",
        "",
        _table(cl, ["cluster", "n", "kept", "kept_share", "floor", "threshold"]),
    ]
    lines += ["## Examples of excluded documents", ""]
    dec = (
        res.to_frame()
        .with_columns(
            df["source"].cast(pl.Utf8).alias("source"),
            df["text"].cast(pl.Utf8).alias("text"),
            pl.col("reason").str.replace(r"^near_duplicate_of:.*$", "near_duplicate").alias("kind"),
        )
        .filter(~pl.col("kept"))
    )
    for kind in sorted(dec["kind"].unique().to_list()):
        sub = dec.filter(pl.col("kind") == kind).sort("value", nulls_last=False).head(N_EXAMPLES)
        rows = [
            {
                "id": r["id"],
                "source": r["source"],
                "value": r["value"],
                "reason": r["reason"],
                "text": _snippet(r["text"]),
            }
            for r in sub.iter_rows(named=True)
        ]
        lines += [f"### {kind}", "", _table(rows, ["id", "source", "value", "reason", "text"])]
    return "\n".join(lines) + "\n"


def md_to_html(md: str) -> str:
    """Minimal Markdown -> HTML for our reports (headings, bullets, tables, paragraphs)."""
    import re

    def inline(t: str) -> str:
        t = html.escape(t)
        t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", t)

    outl: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("#"):
            lvl = len(ln) - len(ln.lstrip("#"))
            outl.append(f"<h{lvl}>{inline(ln[lvl:].strip())}</h{lvl}>")
        elif ln.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            outl.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif ln.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                if not re.fullmatch(r"\|(-+\|)+", lines[i].strip()):
                    cells = [
                        c.strip().replace("\\|", "|")
                        for c in re.split(r"(?<!\\)\|", lines[i].strip())[1:-1]
                    ]
                    tag = "th" if not rows else "td"
                    rows.append(
                        "<tr>" + "".join(f"<{tag}>{inline(c)}</{tag}>" for c in cells) + "</tr>"
                    )
                i += 1
            outl.append(
                "<table border='1' cellspacing='0' cellpadding='3'>" + "".join(rows) + "</table>"
            )
            continue
        elif ln.startswith("![") or not ln.strip():
            pass
        else:
            outl.append(f"<p>{inline(ln)}</p>")
        i += 1
    return "\n".join(outl)


def write_prune_report(
    out: Path, df: pl.DataFrame, res: SelectionResult, emb: np.ndarray, summary: dict[str, Any]
) -> None:
    """Write prune_map.png, prune_report.md and prune_report.html (PNG embedded) atomically."""
    from curation.atomic import atomic_write_bytes, atomic_write_text

    png = cluster_map_png(emb, res)
    atomic_write_bytes(out / "prune_map.png", png)
    md = report_markdown(df, res, summary)
    md += "\n## Cluster map\n\n![cluster map](prune_map.png)\n"
    atomic_write_text(out / "prune_report.md", md)
    b64 = base64.b64encode(png).decode("ascii")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Pruning report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "td,th{font-size:12px}</style></head>"
        f"<body>{md_to_html(md)}<img alt='cluster map' "
        f"src='data:image/png;base64,{b64}'></body></html>\n"
    )
    atomic_write_text(out / "prune_report.html", page)
