"""The quality rules on junk they were not written against, and on clean text they must keep.

    python -m benchmarks.quality_heldout [--run RUN_DIR]

`curation.quality`'s rules were written after seeing the six junk kinds of `benchmarks.pruning`,
so their recall there says little about junk in the wild. This benchmark generates eight other
kinds, written after the first version of the rules (markup soup, reversed words, keyword spam,
OCR-style character noise, one sentence repeated, base64 blobs, number tables, ROT13; the
README says which rules were added after its first run), from clean documents
of the demo corpus that the scoring proxy never trained on, mixes them 1:4 with other such clean
documents, and reports per kind the share flagged and by which rule, and the share of clean
documents flagged per source. The word-order rule uses the final proxy of a `benchmarks.pruning`
run (default: its `none` scenario), which never saw these kinds. Writes
benchmarks/results/quality_heldout.{json,md}.
"""

from __future__ import annotations

import argparse
import base64
import codecs
import random
import string
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

HELDOUT_KINDS = (
    "markup",
    "reversed_words",
    "keyword_spam",
    "char_noise",
    "repeated_sentence",
    "base64",
    "number_table",
    "rot13",
)


def make_heldout_junk(kind: str, text: str, rng: random.Random) -> str:
    """One junk document of a held-out `kind`, derived from a clean `text` where it needs one."""
    words = text.split()
    if kind == "markup":
        tags = ("div", "span", "td", "li", "a")
        return " ".join(
            f'<{t} class="c{rng.randint(0, 99)}" style="margin:{rng.randint(0, 9)}px">{w}</{t}>'
            for w in words
            for t in [rng.choice(tags)]
        )
    if kind == "reversed_words":
        return " ".join(w[::-1] for w in words)
    if kind == "keyword_spam":
        keys = rng.sample([w for w in words if len(w) > 3] or words, k=min(4, len(words)))
        extra = ["cheap", "best", "buy", "online", "free", "deal", "top", "price"]
        return " ".join(rng.choice(keys + extra) for _ in range(rng.randint(40, 100)))
    if kind == "char_noise":
        pool = string.ascii_letters + string.digits + "#@%&"
        return "".join(rng.choice(pool) if c.isalnum() and rng.random() < 0.3 else c for c in text)
    if kind == "repeated_sentence":
        sent = " ".join(words[: rng.randint(6, 14)])
        return "\n".join([sent] * rng.randint(8, 20))
    if kind == "base64":
        raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(200, 600)))
        b = base64.b64encode(raw).decode()
        return "\n".join(b[i : i + 76] for i in range(0, len(b), 76))
    if kind == "number_table":
        rows = [
            " ".join(f"{rng.uniform(-1e3, 1e3):.2f}" for _ in range(rng.randint(4, 8)))
            for _ in range(rng.randint(8, 20))
        ]
        return "\n".join(rows)
    if kind == "rot13":
        return codecs.encode(text, "rot13")
    raise ValueError(f"unknown kind {kind!r}")


def _unseen_clean(run: Path, full: Any) -> Any:
    """Documents of `full` that are not in the run's pool (its training corpus) or target."""
    import polars as pl

    from curation.corpus import read_corpus

    scen = run.parent
    used = set(read_corpus(scen / "pool.jsonl").df["id"].to_list())
    used |= set(read_corpus(scen / "target.jsonl").df["id"].to_list())
    return full.filter(~pl.col("id").is_in(list(used)))


def main(argv: list[str] | None = None) -> int:
    """Flag a clean + held-out-junk mix with the product's rules; write JSON + Markdown."""
    import polars as pl
    import torch

    from benchmarks.common import build_corpus, write_results
    from curation.corpus import read_corpus
    from curation.proxy_loss import run_order_gains
    from curation.quality import RULES, QualityRules, check_quality

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/benchmarks/pruning_none/none/scores")
    p.add_argument("--per-kind", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    run = Path(a.run)
    from curation.run_dir import RunDir

    if not RunDir(run).final_model.is_dir():
        raise SystemExit(f"{run} has no final model: run `python -m benchmarks.pruning` first")
    full = read_corpus(build_corpus(600, a.seed)).df.select("id", "source", "text")
    clean = _unseen_clean(run, full)
    rng = random.Random(a.seed)
    order = np.random.default_rng(a.seed).permutation(clean.height).tolist()
    clean = clean[order]
    n_junk = a.per_kind * len(HELDOUT_KINDS)
    donors, keep = clean.head(n_junk), clean.slice(n_junk)
    junk = [
        {
            "id": f"heldout-{HELDOUT_KINDS[j % len(HELDOUT_KINDS)]}-{j}",
            "source": "junk",
            "text": make_heldout_junk(HELDOUT_KINDS[j % len(HELDOUT_KINDS)], t, rng),
            "kind": HELDOUT_KINDS[j % len(HELDOUT_KINDS)],
        }
        for j, t in enumerate(donors["text"].to_list())
    ]
    mix = pl.concat(
        [keep.with_columns(pl.lit("clean").alias("kind")), pl.DataFrame(junk)], how="vertical"
    )
    texts = mix["text"].to_list()
    gains = run_order_gains(run, texts, seed=a.seed)
    res = check_quality(texts, QualityRules(), gains)
    kinds = np.array(mix["kind"].to_list())
    sources = np.array(mix["source"].to_list())
    reasons = np.array(res.reasons)
    flagged = res.flagged
    by_kind = {
        k: {
            "flagged": float(flagged[kinds == k].mean()),
            "rules": dict(Counter(r for r in reasons[kinds == k] if r)),
        }
        for k in HELDOUT_KINDS
    }
    clean_mask = kinds == "clean"
    by_source = {
        s: float(flagged[clean_mask & (sources == s)].mean())
        for s in sorted(set(sources[clean_mask]))
    }
    payload = {
        "args": vars(a),
        "n_clean": int(clean_mask.sum()),
        "n_junk": int((~clean_mask).sum()),
        "junk_flagged": float(flagged[~clean_mask].mean()),
        "clean_flagged": float(flagged[clean_mask].mean()),
        "clean_flagged_by_source": by_source,
        "clean_rules": dict(Counter(r for r in reasons[clean_mask] if r)),
        "by_kind": by_kind,
        "order_gain_threshold": res.order_gain_threshold,
        "seconds": round(time.time() - t0, 1),
    }
    lines = [
        f"`python -m benchmarks.quality_heldout`: {payload['n_clean']} clean documents the proxy "
        f"never trained on + {payload['n_junk']} junk documents of {len(HELDOUT_KINDS)} kinds "
        f"not in `benchmarks.pruning`; proxy `{run}`; {payload['seconds']:.0f} s.",
        "",
        f"Junk flagged: **{payload['junk_flagged']:.0%}**; clean flagged: "
        f"**{payload['clean_flagged']:.1%}** (by source: "
        + ", ".join(f"{s} {v:.1%}" for s, v in by_source.items())
        + "; by rule: "
        + (", ".join(f"{r} {c}" for r, c in payload["clean_rules"].items()) or "none")
        + ").",
        "",
        "| held-out kind | flagged | by rule |",
        "|---|---|---|",
    ]
    for k, v in by_kind.items():
        rules = ", ".join(f"{r} {v['rules'].get(r, 0)}" for r in RULES if v["rules"].get(r))
        lines.append(f"| {k} | {v['flagged']:.0%} | {rules or '-'} |")
    write_results("quality_heldout", payload, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
