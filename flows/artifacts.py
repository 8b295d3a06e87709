"""Markdown for the Prefect artifacts the curate flow publishes (values, pruning, verify)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from curation.render import md_table
from curation.run_dir import PruneDir, VerifyDir

MAX_CHARS = 20_000
_IMAGE = re.compile(r"!\[[^\]]*\]\((?:data:[^)]*|[^)]*\.(?:png|svg|jpg))\)")


def _strip(md: str) -> str:
    """Drop embedded/linked images (artifacts show text) and cap the length."""
    md = _IMAGE.sub("", md)
    return md if len(md) <= MAX_CHARS else md[:MAX_CHARS] + "\n\n... (truncated; see the file)\n"


def values_markdown(by_source_path: str | Path, estimator: str, outputs: dict[str, Any]) -> str:
    """Per-source value table of a scoring run, for the estimator used to prune."""
    import polars as pl

    df = pl.read_parquet(by_source_path)
    suffix = estimator.replace("-", "_")
    if f"total_{suffix}" not in df.columns:  # fall back to the first estimator present
        suffix = next(c[6:] for c in df.columns if c.startswith("total_"))
    cols = ["source", "n_examples", f"total_{suffix}", f"mean_{suffix}", f"share_{suffix}"]
    cols.append(f"frac_negative_{suffix}")
    rows = df.sort(f"mean_{suffix}", descending=True).select(cols).to_dicts()
    return "\n\n".join(
        [
            f"# Value by source ({suffix.replace('_', '-')})",
            "Positive value = lowered the target loss during the proxy's training run.",
            md_table(cols, [[r.get(c) for c in cols] for r in rows]),
            f"Full report: `{outputs.get('report_html', '')}`",
        ]
    )


def prune_markdown(prune_dir: str | Path) -> str:
    """The pruning report (text part) or, without one, the summary in prune.json."""
    folder = PruneDir(prune_dir)
    md = folder.report_md
    if md.exists():
        return _strip(md.read_text(encoding="utf-8"))
    payload = folder.read_prune_json()
    body = json.dumps(payload.get("summary", payload), indent=2, default=str)
    return f"# Pruning summary\n\n```json\n{body[:MAX_CHARS]}\n```\n"


def verify_markdown(verify_dir: str | Path) -> str:
    """The verify result (verify.md, else verify.json as a code block)."""
    folder = VerifyDir(verify_dir)
    if folder.report_md.exists():
        return _strip(folder.report_md.read_text(encoding="utf-8"))
    body = folder.verify_json.read_text(encoding="utf-8")
    return f"# Verify\n\n```json\n{body[:MAX_CHARS]}\n```\n"
