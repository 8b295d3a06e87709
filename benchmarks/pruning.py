"""Pruning benchmark (DESIGN §4): injected junk, keep 0.7, retrain, compare selection methods.

    python -m benchmarks.pruning [--quick] [--corpus PATH] [--n-docs N] [--seeds 3]

A seeded sample of the multisource corpus gets ~20% junk (shuffled-token copies, boilerplate
repeats, random characters, fragments cut mid-word, Cyrillic/Greek transliterations); a disjoint
clean sample is the target. One scoring run values every document; each method then keeps 70%
and a fresh proxy is retrained on it (same steps for every arm, 3 seeds). Writes
benchmarks/results/pruning.{json,md} (pruning_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import string
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

JUNK_KINDS = ("shuffled", "boilerplate", "random_chars", "fragment", "other_script")
BOILERPLATE = [
    "Click here to subscribe to our newsletter! All rights reserved. Cookie policy | Privacy | "
    "Terms of use. Copyright {y} Example Media Inc. Share this page on social media.",
    "ADVERTISEMENT - Continue reading below. Sign in to your account to see more. "
    "Page {n} of {m}. Next page >> Related articles: top {n} tips you won't believe.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit. Loading... please wait. "
    "Error {n}: the page you requested could not be found. Return to home page.",
]
CYR = dict(
    zip("abvgdeziklmnoprstufhcABVGDEZIKLMNOPRSTUFHC", "абвгдезиклмнопрстуфхцАБВГДЕЗИКЛМНОПРСТУФХЦ")
)
GRK = dict(
    zip("abgdezhiklmnxoprstufcABGDEZHIKLMNXOPRSTUFC", "αβγδεζηικλμνξοπρστυφχΑΒΓΔΕΖΗΙΚΛΜΝΞΟΠΡΣΤΥΦΧ")
)


def make_junk(kind: str, text: str, rng: random.Random) -> str:
    """One junk document of `kind`, derived from a real `text` where the kind needs one."""
    if kind == "shuffled":
        w = text.split()
        rng.shuffle(w)
        return " ".join(w)
    if kind == "boilerplate":
        t = rng.choice(BOILERPLATE)
        return t.format(y=rng.randint(2015, 2024), n=rng.randint(1, 9), m=rng.randint(10, 20))
    if kind == "random_chars":
        alphabet = string.ascii_letters + string.digits + string.punctuation + "    "
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(150, 500)))
    if kind == "fragment":
        n = len(text)
        a = rng.randint(1, max(1, n // 2))
        return text[a : a + rng.randint(15, 60)].strip() or text[:30]
    table = CYR if rng.random() < 0.5 else GRK
    return "".join(table.get(c, c) for c in text)


def build_benchmark_corpus(
    src: Path, n_docs: int, n_target: int, junk_frac: float, seed: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train corpus with `is_junk`/`junk_kind` columns, clean disjoint target)."""
    from curation.corpus import read_corpus

    full = read_corpus(src).df
    perm = np.random.default_rng(seed).permutation(full.height)
    n_junk = round(junk_frac * n_docs)
    n_clean = n_docs - n_junk
    target = full[perm[:n_target].tolist()]
    clean = full[perm[n_target : n_target + n_clean].tolist()]
    donors = full[perm[n_target + n_clean : n_target + n_clean + n_junk].tolist()]
    rng = random.Random(seed)
    rows = []
    for j, (src_name, text) in enumerate(zip(donors["source"], donors["text"])):
        kind = JUNK_KINDS[j % len(JUNK_KINDS)]
        rows.append(
            {
                "id": f"junk-{kind}-{j:05d}",
                "source": src_name,
                "text": make_junk(kind, text, rng),
                "junk_kind": kind,
            }
        )
    junk = pl.DataFrame(rows)
    train = pl.concat(
        [
            clean.select("id", "source", "text").with_columns(
                pl.lit(None, pl.Utf8).alias("junk_kind")
            ),
            junk.select("id", "source", "text", "junk_kind"),
        ]
    )
    train = train[np.random.default_rng(seed + 1).permutation(train.height).tolist()]
    return train.with_columns(pl.col("junk_kind").is_not_null().alias("is_junk")), target


@torch.no_grad()
def proxy_losses(run_dir: Path, df: pl.DataFrame, seq_len: int, batch: int = 64) -> np.ndarray:
    """Per-example loss of every document under the scoring run's final proxy."""
    from transformers import GPT2LMHeadModel

    from adamshap_core import per_example_loss, prepare_batch
    from curation.encode import encode_corpus
    from curation.tokenizer import load_tokenizer

    model = GPT2LMHeadModel.from_pretrained(run_dir / "final_model").eval()
    enc = encode_corpus(df, load_tokenizer(run_dir / "tokenizer"), seq_len)
    out = [
        per_example_loss(model, prepare_batch(enc.batch(np.arange(s, min(len(enc), s + batch)))))
        for s in range(0, len(enc), batch)
    ]
    return torch.cat(out).double().numpy()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write JSON + Markdown."""
    from curation.cluster import default_k, spherical_kmeans
    from curation.corpus import write_corpus
    from curation.embed import embed_run
    from curation.encode import encode_corpus
    from curation.prune import select
    from curation.scoring_run import ScoreArgs, run_scoring
    from curation.tokenizer import load_tokenizer
    from curation.verify import Arrays, TrainConfig, summarise, train_and_evaluate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="../shared/corpora/multisource.jsonl.gz")
    p.add_argument("--quick", action="store_true", help="small sizes (~10 min on 2 CPU cores)")
    p.add_argument("--n-docs", type=int, default=None)
    p.add_argument("--n-target", type=int, default=None)
    p.add_argument("--junk-frac", type=float, default=0.2)
    p.add_argument("--keep", type=float, default=0.7)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2, help="retraining epochs over the kept set")
    p.add_argument("--seq-len", type=int, default=None, help="default 128 (quick: 64)")
    p.add_argument("--warm-start-steps", type=int, default=None, help="default 50 (quick: 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="runs/benchmarks")
    p.add_argument("--results", default="benchmarks/results")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    n_docs = a.n_docs or (400 if a.quick else 2400)
    n_target = a.n_target or (64 if a.quick else 192)
    a.seq_len = a.seq_len or (64 if a.quick else 128)
    warm = a.warm_start_steps if a.warm_start_steps is not None else (20 if a.quick else 50)
    tag = "pruning_quick" if a.quick else "pruning"
    work = Path(a.work) / tag
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print(
        f"[{tag}] {n_docs} training docs ({a.junk_frac:.0%} junk), {n_target} target docs; "
        f"sized for ~{10 if a.quick else 20} min on 2 free CPU cores"
    )

    train, target = build_benchmark_corpus(Path(a.corpus), n_docs, n_target, a.junk_frac, a.seed)
    write_corpus(train, work / "corpus.jsonl")
    write_corpus(target, work / "target.jsonl")
    sargs = ScoreArgs(
        corpus=str(work / "corpus.jsonl"),
        target=str(work / "target.jsonl"),
        out=str(work / "scores"),
        seq_len=a.seq_len,
        seed=a.seed,
        estimators=("adam2", "adam", "sgd"),
        warm_start_steps=warm,
    )
    run = Path(run_scoring(sargs))
    t_score = time.time() - t0
    vals = pl.read_parquet(run / "values_by_example.parquet")
    ids = train["id"].to_list()
    lut = {e: dict(zip(vals["id"], vals[f"value_{e}"])) for e in ("sgd", "adam", "adam2")}
    value = {e: np.array([lut[e].get(i, np.nan) for i in ids], float) for e in lut}
    emb = embed_run(run, train.select("id", "source", "text"))
    labels, _ = spherical_kmeans(emb, default_k(len(ids)), seed=a.seed)
    losses = proxy_losses(run, train, a.seq_len)
    n_keep = round(a.keep * len(ids))
    junk = train["is_junk"].to_numpy()
    kind_mask = {k: (train["junk_kind"] == k).fill_null(False).to_numpy() for k in JUNK_KINDS}

    def top(v: np.ndarray) -> np.ndarray:
        return select(ids, v, labels, emb, a.keep, floor_frac=0.0, dedup_eps=0.0).kept

    masks: dict[str, Any] = {
        "perplexity": np.isin(np.arange(len(ids)), np.argsort(losses, kind="stable")[:n_keep]),
        "sgd": top(value["sgd"]),
        "adam": top(value["adam"]),
        "adam2": top(value["adam2"]),
        "adam2+diversity": select(ids, value["adam2"], labels, emb, a.keep).kept,
        "full": np.ones(len(ids), bool),
    }
    tok = load_tokenizer(run / "tokenizer")
    arr = Arrays.of(encode_corpus(train, tok, a.seq_len))
    tgt = Arrays.of(encode_corpus(target, tok, a.seq_len))
    steps = math.ceil(n_keep / sargs.batch_size) * a.epochs
    cfg = TrainConfig(seq_len=a.seq_len, batch_size=sargs.batch_size, lr=sargs.lr)
    seeds = [a.seed + s for s in range(a.seeds)]
    results: dict[str, Any] = {}
    for method in ["random", *masks]:
        runs, removed = [], []
        for s in seeds:
            m = masks.get(method)
            if m is None:
                m = np.zeros(len(ids), bool)
                m[np.random.default_rng(1000 + s).choice(len(ids), n_keep, replace=False)] = True
            removed.append(float((~m[junk]).mean()) if junk.any() else 0.0)
            runs.append(
                train_and_evaluate(
                    arr.take(np.flatnonzero(m)),
                    tgt,
                    steps,
                    cfg,
                    s,
                    len(tok),
                    tok.eos_token_id or 0,
                    n_evals=5,
                )
            )
        kinds = {k: float((~m[kind_mask[k]]).mean()) for k in JUNK_KINDS}
        results[method] = {
            "junk_removed": float(np.mean(removed)),
            "junk_removed_by_kind": kinds,
            "n_kept": int(m.sum()),
            **summarise(runs),
        }
        r = results[method]
        print(
            f"  {method:16s} junk removed {r['junk_removed']:.3f}  target loss "
            f"{r['target_loss_mean']:.4f} ± {r['target_loss_std']:.4f}"
        )
    meta = {
        "mode": tag,
        "n_docs": n_docs,
        "n_junk": int(junk.sum()),
        "n_target": n_target,
        "keep": a.keep,
        "steps": steps,
        "seeds": seeds,
        "epochs": a.epochs,
        "clusters": int(labels.max() + 1),
        "preset": sargs.preset,
        "seq_len": a.seq_len,
        "scoring_s": round(t_score, 1),
        "total_s": round(time.time() - t0, 1),
        "torch_threads": torch.get_num_threads(),
        "command": "python -m benchmarks.pruning" + (" --quick" if a.quick else ""),
    }
    for r in results.values():
        r.pop("runs")
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps({"meta": meta, "methods": results}, indent=2))
    (out / f"{tag}.md").write_text(markdown(meta, results))
    print(f"wrote {out / tag}.json/.md in {meta['total_s']:.0f}s")
    return 0


def markdown(meta: dict[str, Any], results: dict[str, Any]) -> str:
    """The Markdown table of the benchmark."""
    lines = [
        f"# Pruning benchmark ({meta['mode']})",
        "",
        f"`{meta['command']}`: {meta['n_docs']} training docs of which {meta['n_junk']} injected "
        f"junk, {meta['n_target']} clean held-out target docs, keep {meta['keep']}, "
        f"{meta['clusters']} clusters; retrained `{meta['preset']}` proxy for {meta['steps']} steps "
        f"(seq {meta['seq_len']}), seeds {meta['seeds']}; scoring {meta['scoring_s']}s, "
        f"total {meta['total_s']}s ({meta['torch_threads']} torch threads).",
        "",
        "| method | junk removed | retrained target loss (mean ± std) | perplexity |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['junk_removed']:.1%} | {r['target_loss_mean']:.4f} ± "
            f"{r['target_loss_std']:.4f} | {r['perplexity_mean']:.1f} |"
        )
    lines += [
        "",
        "Junk removed by kind:",
        "",
        "| method | " + " | ".join(JUNK_KINDS) + " |",
        "|---|" + "---|" * len(JUNK_KINDS),
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{r['junk_removed_by_kind'][k]:.0%}" for k in JUNK_KINDS)
            + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
