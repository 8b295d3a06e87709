"""Pruning benchmark: does value-based pruning beat the filters a user would otherwise pick?

    python -m benchmarks.pruning [--quick] [--scenarios pydocs,wordnet,none] [--seeds 3]

A pool built with `adamshap corpus build demo` (six real sources) gets 20% injected junk of six
kinds (shuffled words, boilerplate repeats, random characters, fragments cut mid-word,
Cyrillic/Greek transliterations, and "word salad": pages of random lower-case letter strings).
Each *scenario* names a target:

- a source (e.g. `pydocs`): the scoring target is held-out documents of that source, and the
  evaluation split is *other* held-out documents of the same source (no selection saw them);
- `none` (general quality pruning, as `adamshap prune` runs without `--target`): the scoring
  target is a held-out slice of the pool's own distribution, junk included, and the evaluation
  split is held-out clean documents of every source.

One scoring run per scenario (`curation.scoring_run`, the product's defaults apart from the
sizes below) yields the in-run values and the checkpoint values. Every arm keeps 70% of the pool
(`full` keeps all) and a fresh proxy is retrained on it for the same number of steps (same token
budget per step), with paired seeds: seed s gives every arm the same initial weights. Arms:
`random`, `perplexity` (drop the highest loss under the scoring proxy), `dsir` (hashed 1+2-gram
importance against the target), `classifier` (target-vs-pool logistic regression on hashed
n-grams), `rules+random` / `rules+perplexity` (the quality rules of `curation.quality`, then a
random / lowest-loss fill: what a user would build from heuristic filters alone),
`rules+ckpt-topk` / `rules+ckpt+perplexity` (the rules, then checkpoint values / the mean of the
checkpoint-value and perplexity ranks), `rules+dsir` / `rules+ckpt+dsir` (the rules, then DSIR
importance / the mean of the checkpoint-value and DSIR ranks), `adam2-inrun`
(sum of the in-run `adam2` values, top 70%), `ckpt-topk` (checkpoint values, top 70%),
`ckpt+select` (checkpoint values, cluster floors that never protect a non-positive value,
near-duplicate removal), `value+dsir` (the default recipe with `--rank-by value+dsir`: the
fill ranks by the mean of the checkpoint-value and DSIR ranks), `adamshap` (the default recipe
of `adamshap prune`: the quality rules, then cluster floors and near-duplicate removal over a
ranking by checkpoint values when there is a target, by the proxy's loss when the target is the
pool's own held-out slice: `--rank-by auto`), and `full`. `--score-seed` reseeds the scoring run
and the clustering alone (same pool, target and retraining seeds), to measure how much the
value-based arms depend on one scoring run. The scoring target of `none` keeps its junk here;
`adamshap prune` draws its held-out target from the rows that pass the text rules, so the
product's target is cleaner than the benchmark's. Beside the arms: the evaluation split's
cross-entropy under the pool's unigram model (same tokenizer): every arm should be well below
it, or the proxies are only counting tokens. Writes benchmarks/results/pruning.{json,md}
(pruning_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import string
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from curation.run_dir import RunDir

JUNK_KINDS = ("shuffled", "boilerplate", "random_chars", "fragment", "other_script", "word_salad")
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
ARMS = (
    "random",
    "perplexity",
    "dsir",
    "classifier",
    "rules+random",
    "rules+perplexity",
    "rules+ckpt-topk",
    "rules+ckpt+perplexity",
    "rules+dsir",
    "rules+ckpt+dsir",
    "adam2-inrun",
    "ckpt-topk",
    "ckpt+select",
    "value+dsir",
    "adamshap",
    "full",
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
    if kind == "word_salad":
        words = [
            "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))
            for _ in range(rng.randint(40, 120))
        ]
        return " ".join(words)
    table = CYR if rng.random() < 0.5 else GRK
    return "".join(table.get(c, c) for c in text)


def _with_junk(donors: pl.DataFrame, seed: int, tag: str) -> pl.DataFrame:
    """Junk documents made from `donors` (kinds in turn), with a `junk_kind` column."""
    rng = random.Random(seed)
    rows = []
    for j, (src, text) in enumerate(zip(donors["source"], donors["text"])):
        kind = JUNK_KINDS[j % len(JUNK_KINDS)]
        rows.append(
            {
                "id": f"{tag}junk-{kind}-{j:05d}",
                "source": src,
                "text": make_junk(kind, text, rng),
                "junk_kind": kind,
            }
        )
    return pl.DataFrame(rows, schema={c: pl.Utf8 for c in ("id", "source", "text", "junk_kind")})


def build_scenario(
    full: pl.DataFrame, scenario: str, n_pool: int, n_target: int, n_eval: int, seed: int
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(pool with `junk_kind`, scoring target, evaluation split): three disjoint samples."""
    rng = np.random.default_rng(seed)
    df = full[rng.permutation(full.height).tolist()].select("id", "source", "text")
    n_junk = round(0.2 * n_pool)
    if scenario == "none":
        clean_eval = df.head(n_eval)
        rest = df.slice(n_eval)
        n_tj = round(0.2 * n_target)
        target_clean = rest.head(n_target - n_tj)
        rest = rest.slice(n_target - n_tj)
        donors_t = rest.head(n_tj)
        rest = rest.slice(n_tj)
        target = pl.concat(
            [
                target_clean.with_columns(pl.lit(None, pl.Utf8).alias("junk_kind")),
                _with_junk(donors_t, seed + 7, "t"),
            ]
        )
        evaluation = clean_eval
    else:
        own = df.filter(pl.col("source") == scenario)
        if own.height < n_target + n_eval + 20:
            raise SystemExit(f"source {scenario!r} has {own.height} docs; too few for the split")
        target = own.head(n_target).with_columns(pl.lit(None, pl.Utf8).alias("junk_kind"))
        evaluation = own.slice(n_target, n_eval)
        used = set(target["id"].to_list()) | set(evaluation["id"].to_list())
        rest = df.filter(~pl.col("id").is_in(list(used)))
    clean = rest.head(n_pool - n_junk)
    donors = rest.slice(n_pool - n_junk, n_junk)
    pool = pl.concat(
        [
            clean.with_columns(pl.lit(None, pl.Utf8).alias("junk_kind")),
            _with_junk(donors, seed, ""),
        ]
    )
    pool = pool[np.random.default_rng(seed + 1).permutation(pool.height).tolist()]
    return pool, target, evaluation


@torch.no_grad()
def proxy_losses(run_dir: Path, df: pl.DataFrame, seq_len: int, batch: int = 64) -> np.ndarray:
    """Per-example loss of every document under the scoring run's final proxy."""
    from transformers import GPT2LMHeadModel

    from adamshap_core import per_example_loss, prepare_batch
    from curation.encode import encode_corpus
    from curation.tokenizer import load_tokenizer

    model = GPT2LMHeadModel.from_pretrained(RunDir(run_dir).final_model).eval()
    enc = encode_corpus(df, load_tokenizer(RunDir(run_dir).tokenizer), seq_len)
    out = [
        per_example_loss(model, prepare_batch(enc.batch(np.arange(s, min(len(enc), s + batch)))))
        for s in range(0, len(enc), batch)
    ]
    return torch.cat(out).double().numpy()


def _junk_stats(mask: np.ndarray, kinds: np.ndarray) -> dict[str, Any]:
    """Share of injected junk removed (recall), overall and per kind, and removal precision."""
    junk = kinds != "clean"
    removed = ~mask
    out: dict[str, Any] = {
        "junk_removed": float(removed[junk].mean()) if junk.any() else 0.0,
        "removal_precision": float(junk[removed].mean()) if removed.any() else 0.0,
    }
    out["by_kind"] = {k: float(removed[kinds == k].mean()) for k in JUNK_KINDS}
    return out


def _auc(values: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    """ROC AUC of clean above junk (all junk and per kind) for one score."""
    from sklearn.metrics import roc_auc_score

    clean = kinds == "clean"
    v = np.nan_to_num(values, nan=-1e30)
    out = {"all": float(roc_auc_score(clean, v))}
    for k in JUNK_KINDS:
        m = clean | (kinds == k)
        out[k] = float(roc_auc_score(clean[m], v[m]))
    return out


CACHE_HITS: list[str] = []


def _cached(folder: Path, key: tuple, compute: Any) -> dict:
    """A retraining result, computed once per (kept mask, config, steps, seed) and kept on disk,
    so a rerun (or a new arm) does not retrain the arms it already has."""
    import hashlib

    m, *rest = key  # (mask, cfg, steps, seed[, "coupled"][, "packed"]): the plain key hashes as
    # it always has
    h = hashlib.sha1(np.packbits(m).tobytes() + repr(tuple(rest)).encode()).hexdigest()
    f = folder / f"{h[:16]}.json"
    if f.exists():
        CACHE_HITS.append(f.name)
        return json.loads(f.read_text())
    out = compute()
    folder.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({k: out[k] for k in ("seed", "final_loss", "curve")}))
    return out


def run_scenario(scenario: str, full: pl.DataFrame, a: argparse.Namespace, work: Path) -> dict:
    """Score, select with every arm, retrain every arm on every seed; one scenario's results."""
    from curation.baselines import (
        classifier_scores,
        counted_tokens,
        dsir_scores,
        perplexity_scores,
        top_k_mask,
        unigram_cross_entropy,
    )
    from curation.cluster import default_k, spherical_kmeans
    from curation.corpus import write_corpus
    from curation.embed import embed_run, prepare_for_similarity, run_token_ids
    from curation.encode import encode_corpus
    from curation.proxy_loss import run_order_gains
    from curation.prune import PruneArgs, ranking_scores, resolve_rank_by
    from curation.quality import QualityRules, check_quality, mean_rank
    from curation.scoring_run import ScoreArgs, run_scoring
    from curation.selection import select, token_shingles
    from curation.tokenizer import load_tokenizer
    from curation.verify import Arrays, ProxyRun, TrainConfig, summarise, train_proxy

    t0 = time.time()
    wdir = work / scenario
    wdir.mkdir(parents=True, exist_ok=True)
    pool, target, evaluation = build_scenario(
        full, scenario, a.n_pool, a.n_target, a.n_eval, a.seed
    )
    write_corpus(pool.select("id", "source", "text"), wdir / "pool.jsonl")
    write_corpus(target.select("id", "source", "text"), wdir / "target.jsonl")
    sargs = ScoreArgs(
        corpus=str(wdir / "pool.jsonl"),
        target=str(wdir / "target.jsonl"),
        out=str(wdir / "scores"),
        seq_len=a.seq_len,
        vocab_size=a.vocab,
        lr=a.lr,
        seed=a.score_seed,
        estimators=("adam2", "adam"),
        warm_start_steps=a.warm_start_steps,
        epochs=a.score_epochs,
        snapshots=3,
        sketch_dim=a.sketch_dim,
        progress=False,
    )
    run = Path(run_scoring(sargs))
    t_score = time.time() - t0
    ids = pool["id"].to_list()
    vals = pl.read_parquet(RunDir(run).values_by_example)
    lut = {c: dict(zip(vals["id"], vals[c])) for c in ("value_adam2", "value_ckpt")}
    adam2 = np.array([lut["value_adam2"].get(i, np.nan) for i in ids], float)
    ckpt = np.array([lut["value_ckpt"].get(i, np.nan) for i in ids], float)
    kinds = pool["junk_kind"].fill_null("clean").to_numpy()
    sources = pool["source"].to_numpy()
    losses = proxy_losses(run, pool, a.seq_len)
    texts, ttexts = pool["text"].to_list(), target["text"].to_list()
    scores = {
        "perplexity": perplexity_scores(losses),
        "dsir": dsir_scores(texts, ttexts),
        "classifier": classifier_scores(texts, ttexts, seed=a.seed),
        "adam2-inrun": adam2,
        "ckpt": ckpt,
    }
    emb = prepare_for_similarity(embed_run(run, pool.select("id", "source", "text")))
    labels, _ = spherical_kmeans(emb, default_k(len(ids)), seed=a.score_seed)
    shingles = [token_shingles(t) for t in run_token_ids(run, pool)]
    # as `prune` does: the target's rows are judged too (a rule the target fails as often as
    # the pool is not applied); the `none` target is left out, because `prune` draws its
    # self-target from rows that pass the text rules while this one keeps its junk
    extra = [] if scenario == "none" else ttexts
    gains = run_order_gains(run, texts + extra, seed=a.score_seed)
    is_t = np.r_[np.zeros(len(texts), bool), np.ones(len(extra), bool)]
    quality = check_quality(texts + extra, QualityRules(), gains, target=is_t)
    quality.reasons = quality.reasons[: len(texts)]
    gains = gains[: len(texts)]
    flagged = quality.flagged
    no_rules = select(ids, ckpt, labels, emb, a.keep, PruneArgs.floor, shingles=shingles)
    # what `prune` fills the budget with after the rules (`--rank-by auto`): checkpoint values
    # against a target, the proxy's loss when the target is a held-out slice of the corpus (the
    # product's own functions, so the two cannot drift apart)
    rank_by = resolve_rank_by("auto", held_out=scenario == "none", plain=True)
    ranking = ranking_scores(rank_by, ckpt, losses, quality.reasons, scores["dsir"])
    default = select(
        ids,
        ranking,
        labels,
        emb,
        a.keep,
        PruneArgs.floor,
        shingles=shingles,
        quality=quality.reasons,
    )
    mixed = ranking_scores("value+dsir", ckpt, losses, quality.reasons, scores["dsir"])
    value_dsir = select(
        ids, mixed, labels, emb, a.keep, PruneArgs.floor, shingles=shingles, quality=quality.reasons
    )
    masks = {m: top_k_mask(scores[m], a.keep) for m in ("perplexity", "dsir", "classifier")}
    masks["rules+perplexity"] = top_k_mask(np.where(flagged, np.nan, scores["perplexity"]), a.keep)
    masks["rules+ckpt-topk"] = top_k_mask(np.where(flagged, np.nan, ckpt), a.keep)
    both = mean_rank(np.where(flagged, np.nan, ckpt), scores["perplexity"])
    masks["rules+ckpt+perplexity"] = top_k_mask(np.where(flagged, np.nan, both), a.keep)
    masks["rules+dsir"] = top_k_mask(np.where(flagged, np.nan, scores["dsir"]), a.keep)
    ckpt_dsir = mean_rank(np.where(flagged, np.nan, ckpt), scores["dsir"])
    masks["rules+ckpt+dsir"] = top_k_mask(np.where(flagged, np.nan, ckpt_dsir), a.keep)
    masks["adam2-inrun"] = top_k_mask(adam2, a.keep)
    masks["ckpt-topk"] = top_k_mask(ckpt, a.keep)  # the recipe's ranking without floors/dedup
    masks["ckpt+select"] = no_rules.kept
    masks["value+dsir"] = value_dsir.kept
    masks["adamshap"] = default.kept
    masks["full"] = np.ones(len(ids), bool)

    tok = load_tokenizer(RunDir(run).tokenizer)
    arr = Arrays.of(encode_corpus(pool, tok, a.seq_len))
    ev_enc = encode_corpus(evaluation, tok, a.seq_len)
    ev = Arrays.of(ev_enc)
    row_tokens = np.asarray(arr.attention_mask, np.int64).sum(axis=1)
    tr_tokens = counted_tokens(arr.input_ids, arr.attention_mask, arr.loss_mask)
    ev_tokens = counted_tokens(ev.input_ids, ev.attention_mask, ev.loss_mask)
    unigram = unigram_cross_entropy(tr_tokens, ev_tokens, len(tok))
    cfg = TrainConfig(seq_len=a.seq_len, batch_size=16, lr=a.lr)
    seeds = [a.seed + s for s in range(a.seeds)]
    n_keep = int(masks["adamshap"].sum())
    np.savez(wdir / "scores.npz", ids=np.array(ids), kinds=kinds, losses=losses, **scores)
    np.savez(
        wdir / "masks.npz", flagged=flagged, **{k.replace("+", "_"): v for k, v in masks.items()}
    )
    results: dict[str, Any] = {}
    for arm in a.arms:
        runs, stats, kept_tokens, epochs = [], [], [], []
        for s in seeds:
            m = masks.get(arm)
            if m is None:  # random (after the rules, for rules+random): a fresh subset per seed
                pool_ix = np.flatnonzero(~flagged) if arm == "rules+random" else np.arange(len(ids))
                m = np.zeros(len(ids), bool)
                pick = np.random.default_rng(1000 + s).choice(len(pool_ix), n_keep, replace=False)
                m[pool_ix[pick]] = True
            stats.append(_junk_stats(m, kinds))
            kept_tokens.append(row_tokens[m].mean())
            per_step = 16 * a.seq_len if a.pack else 16  # tokens (packed) or rows a step
            epochs.append(a.steps * per_step / (row_tokens[m].sum() if a.pack else m.sum()))
            ix = np.flatnonzero(m)
            run_ = ProxyRun(a.steps, cfg, s, len(tok), 0, n_evals=4, packed=a.pack)
            if a.coupled_order:  # every arm visits its rows in one shared order of the pool
                run_ = replace(run_, pool_rows=ix, pool_size=len(ids))
            key = (m, cfg, a.steps, s) + (("coupled",) if a.coupled_order else ())
            key += ("packed",) if a.pack else ()
            runs.append(
                _cached(
                    wdir / "arms",
                    key,
                    lambda ix=ix, run_=run_: train_proxy(arr.take(ix), ev, run_)[1],
                )
            )
        summ = summarise(runs)
        tail = [r["curve"][-1][1] - r["curve"][-2][1] for r in runs]
        results[arm] = {
            "n_kept": int(m.sum()),
            "junk_removed": float(np.mean([x["junk_removed"] for x in stats])),
            "removal_precision": float(np.mean([x["removal_precision"] for x in stats])),
            "by_kind": {k: float(np.mean([x["by_kind"][k] for x in stats])) for k in JUNK_KINDS},
            "eval_loss": [r["final_loss"] for r in runs],
            # each seed's lowest eval loss along its curve (n_evals points): what an arm would
            # score with early stopping chosen on the evaluation split itself (an optimistic
            # bound, kept beside the final loss for arms that overfit their kept set)
            "best_eval_loss": [min(v for _, v in r["curve"]) for r in runs],
            # real (unpadded) tokens per kept row: with padded rows an arm of longer documents
            # trains on more tokens; with --pack every arm gets the same tokens
            "tokens_per_row": float(np.mean(kept_tokens)),
            # passes over the kept set the step budget buys (more for an arm of shorter rows when
            # packed), and the loss change over the last quarter of the steps (< 0: still falling,
            # > 0: overfitting): what a longer or shorter retraining would do to the arm
            "epochs": float(np.mean(epochs)),
            "last_quarter_change": float(np.mean(tail)),
            "curve_steps": summ["curve_steps"],
            "curve_mean": summ["curve_mean"],
            "curve_std": summ["curve_std"],
            "eval_loss_mean": summ["target_loss_mean"],
            "eval_loss_std": summ["target_loss_std"],
        }
        r = results[arm]
        print(
            f"[{scenario}] {arm:12s} junk removed {r['junk_removed']:.2f}  eval loss "
            f"{r['eval_loss_mean']:.4f} ± {r['eval_loss_std']:.4f}  (unigram {unigram:.3f})",
            flush=True,
        )
    ref = results["adamshap"]
    for r in results.values():
        # > 0: the arm is worse than adamshap on that seed (final loss; lowest point)
        d = np.subtract(r["eval_loss"], ref["eval_loss"])
        r["paired_diff_vs_adamshap"] = d.tolist()
        for prefix, x in (
            ("", d),
            ("best_", np.subtract(r["best_eval_loss"], ref["best_eval_loss"])),
        ):
            r[f"{prefix}paired_diff_mean"] = float(x.mean())
            r[f"{prefix}paired_diff_sd"] = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    aucs = {m: _auc(v, kinds) for m, v in scores.items()}
    return {
        "scenario": scenario,
        "n_pool": pool.height,
        "n_junk": int((kinds != "clean").sum()),
        "n_target": target.height,
        "n_target_junk": int(target["junk_kind"].is_not_null().sum()),
        "n_eval": evaluation.height,
        "unigram_eval_ce": unigram,
        "untrained_ce": math.log(len(tok)),
        "scoring_s": round(t_score, 1),
        "scenario_s": round(time.time() - t0, 1),
        "arms": results,
        "auc": aucs,
        "dedup": default.dedup,
        "floor_kept_junk": int((default.by_floor & (kinds != "clean")).sum()),
        "quality": {
            "not_applied": quality.disabled,
            "flagged": quality.counts(),
            "n_flagged": int(flagged.sum()),
            "order_gain_threshold": quality.order_gain_threshold,
            "clean_flagged": float(flagged[kinds == "clean"].mean()),
            "clean_flagged_by_source": {
                src: float(flagged[(kinds == "clean") & (sources == src)].mean())
                # sources with clean rows (a small pool can hold a source's junk alone)
                for src in sorted(set(sources[kinds == "clean"].tolist()))
            },
            "junk_flagged": float(flagged[kinds != "clean"].mean()),
            "by_kind": {k: float(flagged[kinds == k].mean()) for k in JUNK_KINDS},
        },
    }


def markdown(meta: dict[str, Any], scen: list[dict[str, Any]]) -> str:
    """The README table: per scenario, every arm with eval loss, paired diff and junk removed."""
    lines = [
        f"`{meta['command']}`: pool of {meta['n_pool']} documents (20% injected junk of "
        f"{len(JUNK_KINDS)} kinds), keep {meta['keep']}; proxies `tiny`, seq {meta['seq_len']}, "
        f"vocab {meta['vocab']}, lr {meta['lr']}; scoring run {meta['warm_start_steps']} warm-start "
        f"+ {meta.get('score_epochs', 1)} scored epoch(s), 3 snapshots, sketch {meta.get('sketch_dim', 16)}; "
        f"every arm retrains {meta['steps']} steps (batch 16), "
        f"seeds {meta['seeds']} (paired"
        + ("; one shared order of the pool for every arm" if meta.get("coupled_order") else "")
        + (
            "; one token budget: documents packed end to end, 16 x seq_len tokens a step"
            if meta.get("pack")
            else "; 16 documents a step, padded"
        )
        + (
            f"; scoring run and clustering seeded {meta['score_seed']}"
            if meta.get("score_seed", meta["seeds"][0]) != meta["seeds"][0]
            else ""
        )
        + f"); {meta['total_s']:.0f} s on 2 shared CPU cores"
        + (
            f" ({meta['cached_retrains']} of the retrainings reused: the same kept set, config "
            "and seed as another arm or an earlier invocation)."
            if meta.get("cached_retrains")
            else "."
        ),
        "",
    ]
    for s in scen:
        best = min(s["arms"], key=lambda k: s["arms"][k]["eval_loss_mean"])
        lines += [
            f"#### Target: {s['scenario']}"
            + (" (no target: the pool's own held-out slice)" if s["scenario"] == "none" else ""),
            "",
            f"Evaluation split: {s['n_eval']} held-out documents no selection saw; its "
            f"cross-entropy under the pool's unigram model is **{s['unigram_eval_ce']:.3f}** "
            f"nats (untrained: {s['untrained_ce']:.2f}). Scoring target: {s['n_target']} docs "
            f"({s['n_target_junk']} junk). Lowest mean eval loss: `{best}`.",
            "",
        ]
        if meta.get("tag"):  # the curves' plot, written beside this file
            lines += [f"![eval loss while retraining]({meta['tag']}_{s['scenario']}.png)", ""]
        lines += [
            "| arm | eval loss (mean ± sd) | below unigram | paired diff vs adamshap (mean ± sd) "
            "| junk removed | removal precision | tokens a kept row | epochs | last-quarter change "
            "| paired diff at each arm's lowest point |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for arm, r in s["arms"].items():
            tpr = r.get("tokens_per_row")  # results from before the column: unknown
            ep, lq = r.get("epochs"), r.get("last_quarter_change")
            bd = r.get("best_paired_diff_mean")
            lines.append(
                f"| {arm} | {r['eval_loss_mean']:.4f} ± {r['eval_loss_std']:.4f} | "
                f"{s['unigram_eval_ce'] - r['eval_loss_mean']:.2f} | "
                f"{r['paired_diff_mean']:+.4f} ± {r['paired_diff_sd']:.4f} | "
                f"{r['junk_removed']:.0%} | {r['removal_precision']:.0%} | "
                + ("–" if tpr is None else f"{tpr:.1f}")
                + (" | – | –" if ep is None else f" | {ep:.1f} | {lq:+.3f}")
                + (" | –" if bd is None else f" | {bd:+.4f} ± {r['best_paired_diff_sd']:.4f}")
                + " |"
            )
        lines += [
            "",
            "Junk removed by kind:",
            "",
            "| arm | " + " | ".join(JUNK_KINDS) + " |",
            "|---|" + "---|" * len(JUNK_KINDS),
        ]
        for arm, r in s["arms"].items():
            lines.append(
                f"| {arm} | " + " | ".join(f"{r['by_kind'][k]:.0%}" for k in JUNK_KINDS) + " |"
            )
        lines += [
            "",
            "ROC AUC of each score, clean above junk:",
            "",
            "| score | all | " + " | ".join(JUNK_KINDS) + " |",
            "|---|---|" + "---|" * len(JUNK_KINDS),
        ]
        for m, au in s["auc"].items():
            lines.append(
                f"| {m} | {au['all']:.2f} | "
                + " | ".join(f"{au[k]:.2f}" for k in JUNK_KINDS)
                + " |"
            )
        q = s.get("quality")
        if q:
            lines += [
                "",
                f"Quality rules alone (`curation.quality`): flagged {q['n_flagged']} documents, "
                f"{q['junk_flagged']:.0%} of the junk and {q['clean_flagged']:.1%} of the clean "
                "documents (by source: "
                + ", ".join(f"{k} {v:.1%}" for k, v in q["clean_flagged_by_source"].items())
                + "); by kind: "
                + ", ".join(f"{k} {v:.0%}" for k, v in q["by_kind"].items())
                + "; by rule: "
                + ", ".join(f"{k} {v}" for k, v in q["flagged"].items())
                + ".",
            ]
        lines += [
            "",
            f"Paired diff = arm's eval loss minus adamshap's on the same seed (> 0: adamshap "
            f"better). Epochs: passes over the kept set the steps buy; last-quarter change: eval "
            f"loss at the end minus at 3/4 of the steps (< 0 still falling, > 0 overfitting); "
            f"lowest point: each seed's lowest eval loss along its curve, paired the same way "
            f"(early stopping chosen on the evaluation split: optimistic for every arm). "
            f"Near-duplicates removed by adamshap: {s['dedup'].get('n_removed', 0)}; "
            f"junk kept through cluster floors: {s['floor_kept_junk']}.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every scenario and write JSON + Markdown."""
    from benchmarks.common import build_corpus
    from curation.corpus import read_corpus

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=None, help="default: `adamshap corpus build demo`")
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--scenarios", default="pydocs,wordnet,none")
    p.add_argument("--n-pool", type=int, default=None)
    p.add_argument("--n-target", type=int, default=64)
    p.add_argument("--n-eval", type=int, default=64)
    p.add_argument("--keep", type=float, default=0.7)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="retraining steps per arm")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--arms", default=",".join(ARMS), help=f"subset of {','.join(ARMS)}")
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warm-start-steps", type=int, default=None)
    p.add_argument(
        "--score-epochs", type=int, default=1, help="scored passes of the scoring run (1)"
    )
    p.add_argument(
        "--sketch-dim",
        type=int,
        default=None,
        help="k of the checkpoint values' k x k sketch (default: the product's, ScoreArgs)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared box)")
    p.add_argument(
        "--coupled-order",
        action="store_true",
        help="every arm visits its kept rows in one seeded order of the whole pool (common "
        "random numbers: arms that keep nearly the same rows see nearly the same batches)",
    )
    p.add_argument(
        "--pack",
        action="store_true",
        help="one token budget: every retraining step takes 16 x seq-len real tokens of the "
        "arm's documents laid end to end (curation.packing), not 16 padded documents",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--score-seed",
        type=int,
        default=None,
        help="seed of the scoring run and the clustering (default --seed): another scoring run "
        "of the same pool, to see how much the selection depends on it",
    )
    p.add_argument("--work", default="runs/benchmarks")
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--tag", default=None, help="result file stem (default pruning[_quick])")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    a.score_seed = a.seed if a.score_seed is None else a.score_seed
    from curation.scoring_run import ScoreArgs

    a.sketch_dim = a.sketch_dim or ScoreArgs.sketch_dim
    a.n_pool = a.n_pool or (300 if a.quick else 3000)
    a.steps = a.steps or (40 if a.quick else 300)
    a.arms = [x.strip() for x in a.arms.split(",") if x.strip()]
    if "adamshap" not in a.arms or set(a.arms) - set(ARMS):
        p.error(f"--arms must include adamshap and name only {', '.join(ARMS)}")
    a.warm_start_steps = (
        a.warm_start_steps if a.warm_start_steps is not None else (20 if a.quick else 250)
    )
    tag = a.tag or ("pruning_quick" if a.quick else "pruning")
    work = Path(a.work) / tag
    t0 = time.time()
    corpus = Path(a.corpus) if a.corpus else build_corpus(600, a.seed)
    full = read_corpus(corpus).df
    scen = [run_scenario(s.strip(), full, a, work) for s in a.scenarios.split(",") if s.strip()]
    # the command as given (every option that was passed, in its order), so a rerun repeats it
    given = sys.argv[1:] if argv is None else list(argv)
    cmd = " ".join(["python -m benchmarks.pruning", *(shlex.quote(x) for x in given)])
    meta = {
        "command": cmd,
        "n_pool": a.n_pool,
        "keep": a.keep,
        "seq_len": a.seq_len,
        "vocab": a.vocab,
        "lr": a.lr,
        "warm_start_steps": a.warm_start_steps,
        "score_epochs": a.score_epochs,
        "steps": a.steps,
        "coupled_order": a.coupled_order,
        "pack": a.pack,
        "seeds": [a.seed + s for s in range(a.seeds)],
        "score_seed": a.score_seed,
        "sketch_dim": a.sketch_dim,
        "torch_threads": torch.get_num_threads(),
        "total_s": round(time.time() - t0, 1),
        "cached_retrains": len(CACHE_HITS),
        "tag": tag,
    }
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps({"meta": meta, "scenarios": scen}, indent=2))
    (out / f"{tag}.md").write_text(markdown(meta, scen))
    from curation.verify import plot_curves

    for s in scen:  # eval loss over the retraining, per arm, beside the unigram line
        title = f"{s['scenario']}: eval loss while retraining ({meta['steps']} steps)"
        plot_curves(s["arms"], out / f"{tag}_{s['scenario']}.png", title, s["unigram_eval_ce"])
    print(f"wrote {out / tag}.json/.md in {meta['total_s']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
