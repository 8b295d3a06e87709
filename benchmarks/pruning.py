"""Pruning benchmark (docs/method.md §8): injected junk, keep 0.7, retrain, compare selection methods.

    python -m benchmarks.pruning [--quick] [--corpus PATH] [--n-docs N] [--seeds 3] [--threads 1]

A seeded sample of a corpus built with `adamshap corpus build demo` (enough documents per source
for the sample and the target; or `--corpus PATH`) gets ~20% junk (shuffled-token copies, boilerplate
repeats, random characters, fragments cut mid-word, Cyrillic/Greek transliterations); a disjoint
clean sample is the target. One scoring run values every document; each method then keeps 70%
and a fresh proxy is retrained on it (same steps for every arm, 3 seeds). Embeddings are centred
and re-normalised (`prepare_for_similarity`) before clustering and near-duplicate detection, and
near-duplicates are confirmed on token 3-gram Jaccard (see `curation.selection`). Writes
benchmarks/results/pruning.{json,md} (pruning_quick.* with --quick).

Full-mode sizes (1,600 docs, seq 128, 30 warm-start + 100 scored steps, 90 retraining steps
per arm x 7 arms x 3 seeds) are chosen to finish in about 25 minutes on 2 shared CPU cores with
one torch thread (more threads oversubscribe a loaded machine: 0.44 s/step with 1 thread vs 1.6
s/step with 2 threads measured under load). The warm start is short on purpose: first-order
values flag junk only early in training (see `--phase-probe`, which measures, for a fresh proxy
after 5/20/50/100 plain steps, how well the per-document gradient dot product with the full
target gradient separates clean from each junk kind, as ROC AUC).

    python -m benchmarks.pruning --phase-probe   # after a full run; writes pruning_phase_probe.*
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
    from curation.embed import embed_run, prepare_for_similarity, run_token_ids
    from curation.encode import encode_corpus
    from curation.prune import select
    from curation.scoring_run import ScoreArgs, run_scoring
    from curation.selection import token_shingles
    from curation.tokenizer import load_tokenizer
    from curation.verify import Arrays, TrainConfig, summarise, train_and_evaluate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--corpus", default=None, help="default: built with `adamshap corpus build demo`"
    )
    p.add_argument("--quick", action="store_true", help="small sizes (~10 min on 2 CPU cores)")
    p.add_argument("--n-docs", type=int, default=None)
    p.add_argument("--n-target", type=int, default=None)
    p.add_argument("--junk-frac", type=float, default=0.2)
    p.add_argument("--keep", type=float, default=0.7)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--steps", type=int, default=None, help="retraining steps per arm (default 90; quick: 36)"
    )
    p.add_argument("--seq-len", type=int, default=None, help="default 128 (quick: 64)")
    p.add_argument("--warm-start-steps", type=int, default=None, help="default 30 (quick: 20)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared box)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="runs/benchmarks")
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument(
        "--phase-probe", action="store_true", help="only the value-vs-training-phase probe"
    )
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    if a.phase_probe:
        out = Path(a.results)
        out.mkdir(parents=True, exist_ok=True)
        phase_probe(
            Path(a.work) / ("pruning_quick" if a.quick else "pruning"), out, a.seq_len or 128
        )
        return 0
    n_docs = a.n_docs or (400 if a.quick else 1600)
    n_target = a.n_target or (64 if a.quick else 128)
    a.seq_len = a.seq_len or (64 if a.quick else 128)
    warm = a.warm_start_steps if a.warm_start_steps is not None else (20 if a.quick else 30)
    tag = "pruning_quick" if a.quick else "pruning"
    work = Path(a.work) / tag
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print(
        f"[{tag}] {n_docs} training docs ({a.junk_frac:.0%} junk), {n_target} target docs; "
        f"sized for ~{10 if a.quick else 25} min on 2 shared CPU cores"
    )

    if a.corpus is None:
        from benchmarks.common import build_corpus

        # every source must be able to give its share of the sample and the target
        a.corpus = build_corpus(math.ceil((n_docs + n_target) / 6 * 1.5), a.seed)
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
    raw_emb = embed_run(run, train.select("id", "source", "text"))
    emb = prepare_for_similarity(raw_emb)
    shingles = [token_shingles(t) for t in run_token_ids(run, train)]
    labels, _ = spherical_kmeans(emb, default_k(len(ids)), seed=a.seed)
    losses = proxy_losses(run, train, a.seq_len)
    n_keep = round(a.keep * len(ids))
    junk = train["is_junk"].to_numpy()
    kind_mask = {k: (train["junk_kind"] == k).fill_null(False).to_numpy() for k in JUNK_KINDS}

    def top(v: np.ndarray) -> np.ndarray:
        return select(ids, v, labels, emb, a.keep, floor_frac=0.0, dedup_eps=0.0).kept

    div = select(ids, value["adam2"], labels, emb, a.keep, shingles=shingles)
    for w in [*div.alerts, *div.warnings]:
        print(f"*** {w} ***")

    masks: dict[str, Any] = {
        "perplexity": np.isin(np.arange(len(ids)), np.argsort(losses, kind="stable")[:n_keep]),
        "sgd": top(value["sgd"]),
        "adam": top(value["adam"]),
        "adam2": top(value["adam2"]),
        "adam2+diversity": div.kept,
        "full": np.ones(len(ids), bool),
    }
    diagnostics = _diagnostics(raw_emb, emb, value, losses, junk, kind_mask, labels, div)
    print(json.dumps(diagnostics["dedup"], indent=1))
    tok = load_tokenizer(run / "tokenizer")
    arr = Arrays.of(encode_corpus(train, tok, a.seq_len))
    tgt = Arrays.of(encode_corpus(target, tok, a.seq_len))
    steps = a.steps or (36 if a.quick else 90)
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
        "epochs_over_kept": round(steps * sargs.batch_size / n_keep, 2),
        "clusters": int(labels.max() + 1),
        "preset": sargs.preset,
        "seq_len": a.seq_len,
        "scoring_s": round(t_score, 1),
        "total_s": round(time.time() - t0, 1),
        "torch_threads": torch.get_num_threads(),
        "command": "python -m benchmarks.pruning" + (" --quick" if a.quick else ""),
        "warm_start_steps": warm,
        "scored_steps": math.ceil(n_docs / sargs.batch_size) * sargs.epochs,
        "ln_vocab": math.log(len(tok)),
    }
    for r in results.values():
        r.pop("runs")
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "methods": results, "diagnostics": diagnostics}
    (out / f"{tag}.json").write_text(json.dumps(payload, indent=2))
    (out / f"{tag}.md").write_text(markdown(meta, results, diagnostics))
    print(f"wrote {out / tag}.json/.md in {meta['total_s']:.0f}s")
    return 0


def phase_probe(work: Path, out: Path, seq_len: int, per_kind: int = 12, seed: int = 0) -> dict:
    """ROC AUC (clean > junk kind) of grad(doc) . grad(full target) over training steps."""
    from sklearn.metrics import roc_auc_score

    from adamshap_core import (
        build_model,
        per_example_loss,
        plain_step,
        prepare_batch,
        warmup_cosine,
    )
    from curation.encode import encode_corpus
    from curation.tokenizer import load_tokenizer
    from curation.verify import Arrays

    tok = load_tokenizer(work / "scores" / "tokenizer")
    tr, tg = pl.read_ndjson(work / "corpus.jsonl"), pl.read_ndjson(work / "target.jsonl")
    kind = np.array([i.split("-")[1] if i.startswith("junk-") else "clean" for i in tr["id"]])
    rng = np.random.default_rng(seed)
    groups = {"clean": 5 * per_kind, **dict.fromkeys(JUNK_KINDS, per_kind)}
    sel = np.concatenate(
        [rng.choice(np.flatnonzero(kind == g), m, replace=False) for g, m in groups.items()]
    )
    full = Arrays.of(encode_corpus(tr, tok, seq_len))
    docs, tgt = full.take(sel), Arrays.of(encode_corpus(tg, tok, seq_len))
    model = build_model("tiny", len(tok), seq_len, seed=seed, eos_token_id=tok.eos_token_id or 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    sched = warmup_cosine(opt, 12, 250)
    params = list(model.parameters())

    def grad(b: dict[str, torch.Tensor]) -> torch.Tensor:
        model.zero_grad()
        per_example_loss(model, prepare_batch(b)).mean().backward()
        return torch.cat([q.grad.flatten() for q in params]).clone()

    ks, rows, step = kind[sel], [], 0
    for at in (5, 20, 50, 100):
        while step < at:
            plain_step(model, opt, full.batch(rng.choice(len(full), 16, replace=False)), 1.0)
            sched.step()
            step += 1
        g_t = sum(
            grad(tgt.batch(np.arange(s, min(len(tgt), s + 32)))) * min(32, len(tgt) - s)
            for s in range(0, len(tgt), 32)
        ) / len(tgt)
        v = torch.stack([grad(docs.batch(np.array([i]))) for i in range(len(docs))]) @ g_t
        v = v.numpy()
        auc = {
            k: float(
                roc_auc_score(
                    np.r_[np.ones(groups["clean"]), np.zeros(per_kind)],
                    np.r_[v[ks == "clean"], v[ks == k]],
                )
            )
            for k in JUNK_KINDS
        }
        rows.append({"step": at, "auc_all_junk": float(roc_auc_score(ks == "clean", v)), **auc})
        print(rows[-1], flush=True)
    res = {"per_kind": per_kind, "n_clean": groups["clean"], "rows": rows}
    (out / "pruning_phase_probe.json").write_text(json.dumps(res, indent=2))
    md = [
        "# Phase probe: do first-order values flag junk, by training step?",
        "",
        "`python -m benchmarks.pruning --phase-probe`: a fresh `tiny` proxy trained with plain "
        "AdamW on the benchmark corpus; at each step, ROC AUC of grad(doc) . grad(full target) "
        f"for {groups['clean']} clean docs vs {per_kind} of each junk kind (1 = every clean doc "
        "valued above every junk doc; 0.5 = no signal; < 0.5 = junk valued higher).",
        "",
        "| step | all junk | " + " | ".join(JUNK_KINDS) + " |",
        "|---|---|" + "---|" * len(JUNK_KINDS),
    ]
    for r in rows:
        md.append(
            f"| {r['step']} | {r['auc_all_junk']:.2f} | "
            + " | ".join(f"{r[k]:.2f}" for k in JUNK_KINDS)
            + " |"
        )
    (out / "pruning_phase_probe.md").write_text("\n".join(md) + "\n")
    return res


def _cos_quantiles(x: np.ndarray, n_max: int = 800) -> dict[str, float]:
    """Quantiles of off-diagonal pairwise cosine (rows assumed unit or zero) on a sample."""
    x = x[np.random.default_rng(0).permutation(len(x))[:n_max]].astype(np.float64)
    c = (x @ x.T)[np.triu_indices(len(x), 1)]
    q = dict(zip(("q01", "median", "q99"), np.quantile(c, [0.01, 0.5, 0.99]).tolist()))
    return {**q, "frac_above_0.98": float((c > 0.98).mean())}


def _diagnostics(
    raw: np.ndarray,
    emb: np.ndarray,
    value: dict[str, np.ndarray],
    losses: np.ndarray,
    junk: np.ndarray,
    kind_mask: dict[str, np.ndarray],
    labels: np.ndarray,
    div: Any,
) -> dict[str, Any]:
    """Measurements that explain the table: cosine spread, dedup, values per junk kind."""
    groups = {"clean": ~junk, **kind_mask}
    pct = {e: (np.argsort(np.argsort(v)) + 0.5) / len(v) for e, v in value.items()}
    loss_pct = (np.argsort(np.argsort(losses)) + 0.5) / len(losses)
    per_kind = {}
    for g, m in groups.items():
        if not m.any():
            continue
        per_kind[g] = {
            "n": int(m.sum()),
            **{f"adam2_{k}": float(f(value["adam2"][m])) for k, f in _STATS.items()},
            "adam2_frac_positive": float((value["adam2"][m] > 0).mean()),
            **{f"{e}_median_percentile": float(np.median(pct[e][m])) for e in pct},
            "proxy_loss_median": float(np.median(losses[m])),
            "proxy_loss_median_percentile": float(np.median(loss_pct[m])),
            "div_kept": float(div.kept[m].mean()),
            "div_kept_by_floor": int((div.by_floor & m).sum()),
            "div_near_dup": int(sum(r.startswith("near_dup") for r in np.array(div.reason)[m])),
        }
    purity = []
    for c in np.unique(labels):
        m = labels == c
        purity.append(float(max(junk[m].mean(), 1 - junk[m].mean())))
    return {
        "cosine_raw": _cos_quantiles(raw),
        "cosine_centred": _cos_quantiles(emb),
        "dedup": div.dedup,
        "alerts": div.alerts,
        "warnings": div.warnings,
        "junk_kept_by_floor": int((div.by_floor & junk).sum()),
        "mean_cluster_purity_junk_vs_clean": float(np.mean(purity)),
        "per_kind": per_kind,
    }


_STATS = {
    "q10": lambda v: np.quantile(v, 0.1),
    "median": np.median,
    "q90": lambda v: np.quantile(v, 0.9),
}


def markdown(
    meta: dict[str, Any], results: dict[str, Any], diag: dict[str, Any] | None = None
) -> str:
    """The Markdown table of the benchmark."""
    lines = [
        f"# Pruning benchmark ({meta['mode']})",
        "",
        f"`{meta['command']}`: {meta['n_docs']} training docs of which {meta['n_junk']} injected "
        f"junk, {meta['n_target']} clean held-out target docs, keep {meta['keep']}, "
        f"{meta['clusters']} clusters; scoring proxy: {meta.get('warm_start_steps')} warm-start + "
        f"{meta.get('scored_steps')} scored steps; each arm retrains a fresh `{meta['preset']}` "
        f"proxy for {meta['steps']} steps (batch 16, seq {meta['seq_len']}, "
        f"~{meta.get('epochs_over_kept')} epochs over a 70% set), seeds {meta['seeds']}; "
        f"ln(vocab) = {meta.get('ln_vocab', float('nan')):.2f} is the untrained loss; "
        f"scoring {meta['scoring_s']}s, total {meta['total_s']}s "
        f"({meta['torch_threads']} torch threads).",
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
    if diag:
        cr, cc, dd = diag["cosine_raw"], diag["cosine_centred"], diag["dedup"]
        lines += [
            "",
            "## Diagnostics",
            "",
            f"- pairwise cosine of raw embeddings: median {cr['median']:.3f}, "
            f"{cr['frac_above_0.98']:.1%} of pairs > 0.98; after centring: median "
            f"{cc['median']:.3f}, {cc['frac_above_0.98']:.2%} > 0.98.",
            f"- near-duplicates (adam2+diversity): {dd['n_removed']} removed "
            f"({dd['removed_frac']:.1%}); {dd['candidate_pairs']} embedding candidate pairs, "
            f"{dd['confirmed_pairs']} token-confirmed; rule: {dd['rule']}.",
            f"- junk kept through cluster floors: {diag['junk_kept_by_floor']}; mean cluster "
            f"purity (junk vs clean): {diag['mean_cluster_purity_junk_vs_clean']:.2f}.",
            *[f"- **{w}**" for w in diag["alerts"] + diag["warnings"]],
            "",
            "Per kind: adam2 value (q10 / median / q90), share of positive values, median "
            "percentile among all documents of each score (low = pruned first by value methods; "
            "for loss, high = pruned first by perplexity filtering), and the adam2+diversity "
            "kept share.",
            "",
            "| kind | n | adam2 q10 / median / q90 | adam2 > 0 | pct adam2 | pct adam | pct sgd "
            "| pct proxy loss | div kept | kept by floor | near-dup |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for g, r in diag["per_kind"].items():
            lines.append(
                f"| {g} | {r['n']} | {r['adam2_q10']:.2e} / {r['adam2_median']:.2e} / "
                f"{r['adam2_q90']:.2e} | {r['adam2_frac_positive']:.0%} | "
                f"{r['adam2_median_percentile']:.2f} | {r['adam_median_percentile']:.2f} | "
                f"{r['sgd_median_percentile']:.2f} | {r['proxy_loss_median_percentile']:.2f} | "
                f"{r['div_kept']:.0%} | {r['div_kept_by_floor']} | {r['div_near_dup']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
