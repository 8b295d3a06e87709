"""Pruning stage at scale: ledger aggregation + selection on 10^4 .. 10^6 synthetic documents.

    python -m benchmarks.prune_scale [--sizes 10000 100000 1000000] [--epochs 3] [--dim 256]

For every size, one subprocess writes the synthetic inputs (untimed) and a *fresh* subprocess runs
the pruning stage on them, phase by phase, the way `adamshap prune` does after scoring:

1. `load`: the cached proxy embeddings (`.npy`) and the untruncated token ids;
2. `aggregate`: `curation.aggregate.aggregate_run` over the Parquet ledger parts (several epochs,
   three estimators) -> values_by_example / values_by_source;
3. `values`: the `value_adam2` column aligned to the corpus ids (targets get no value);
4. `similarity`: `curation.embed.prepare_for_similarity` (centre, re-normalise);
5. `cluster`: `curation.cluster.spherical_kmeans` with `default_k` clusters;
6. `shingles`: `curation.selection.token_shingles` per document;
7. `select`: `curation.selection.select` (near-duplicates, floors, ranking), keep 0.7.

The child reports each phase's wall-clock seconds and its own peak resident memory
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`), plus a sha256 of the kept ids so that two code
versions can be checked to keep the same set. The parent fits the log-log slope of time and of
peak memory against the size, and writes benchmarks/results/prune_scale.{json,md}.

Synthetic inputs (seeded): 256-d embeddings drawn as a mixture of 300 Gaussians on the sphere
around a shared direction (what an undertrained proxy produces; centring removes it), with 1%
exact copies (same tokens), 2% near copies (embedding jittered, 2% of tokens replaced: Jaccard
of 3-gram sets about 0.9) and 1% embedding-only look-alikes (jittered embedding, unrelated
tokens: candidates that the token check rejects); documents of 16-256 tokens from an 8192-token
vocabulary; per-document values with a per-component offset and a heavy tail (Student t, 3
degrees of freedom), spread over the ledger rows of every epoch with noise; a 5% held-out target.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from curation.run_dir import RunDir

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "benchmarks" / "prune_scale"
N_COMPONENTS = 300
VOCAB = 8192
EXACT, NEAR, LOOKALIKE = 0.01, 0.02, 0.01
ESTIMATORS = ("adam2", "adam", "sgd")
BATCH = 64
STEPS_PER_PART = 500
KEEP = 0.7
CHUNK = 1 << 16


def _rss_now_mib() -> float:
    """Current resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    """Peak resident set size of this process so far in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------ inputs


def make_inputs(n: int, out: Path, dim: int = 256, epochs: int = 3, seed: int = 0) -> dict:
    """Write the synthetic corpus ids, embeddings, tokens and ledger of `n` docs under `out`."""
    import polars as pl

    from curation.ledger import ledger_schema
    from curation.prune import holdout_target

    if out.exists():
        shutil.rmtree(out)
    RunDir(out / "run").ledger.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    # Which documents copy which: copies point at a random non-copy "base" document.
    kind = rng.choice(4, size=n, p=[1 - EXACT - NEAR - LOOKALIKE, EXACT, NEAR, LOOKALIKE])
    base_docs = np.flatnonzero(kind == 0)
    src_of = np.arange(n)
    copies = np.flatnonzero(kind > 0)
    src_of[copies] = base_docs[rng.integers(0, len(base_docs), len(copies))]
    weights = rng.dirichlet(np.full(N_COMPONENTS, 2.0))
    comp = rng.choice(N_COMPONENTS, size=n, p=weights)
    comp[copies] = comp[src_of[copies]]
    shared = rng.normal(size=dim)
    shared *= 3.0 / np.linalg.norm(shared)
    centres = rng.normal(size=(N_COMPONENTS, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Within a component: noise of norm ~1 around a unit centre (centred cosine ~0.5).
    emb = np.empty((n, dim), np.float32)
    for a in range(0, n, CHUNK):
        b = min(n, a + CHUNK)
        x = shared + centres[comp[a:b]] + rng.normal(size=(b - a, dim)) / math.sqrt(dim)
        emb[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    jit = np.flatnonzero(kind >= 2)  # near copies and look-alikes: cosine ~0.999 to their base
    for a in range(0, len(jit), CHUNK):
        j = jit[a : a + CHUNK]
        x = emb[src_of[j]].astype(np.float64) + 0.002 * rng.normal(size=(len(j), dim))
        emb[j] = x / np.linalg.norm(x, axis=1, keepdims=True)
    emb[kind == 1] = emb[src_of[kind == 1]]
    np.save(out / "embeddings.npy", emb)
    del emb
    # Token ids: flat int32 array + offsets; copies share or edit their base's tokens.
    lengths = rng.integers(16, 257, size=n)
    lengths[kind == 1] = lengths[src_of[kind == 1]]
    lengths[kind == 2] = lengths[src_of[kind == 2]]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = rng.integers(0, VOCAB, size=int(offsets[-1]), dtype=np.int32)
    for i in np.flatnonzero((kind == 1) | (kind == 2)):
        s = src_of[i]
        t = tokens[offsets[s] : offsets[s + 1]].copy()
        if kind[i] == 2:
            edit = rng.random(len(t)) < 0.02
            t[edit] = rng.integers(0, VOCAB, size=int(edit.sum()), dtype=np.int32)
        tokens[offsets[i] : offsets[i + 1]] = t
    np.save(out / "tokens.npy", tokens)
    np.save(out / "offsets.npy", offsets)
    del tokens
    ids = pl.Series("id", [f"doc{i:08d}" for i in range(n)], pl.String)
    sources = pl.Series("source", [f"src{c % 6}" for c in comp], pl.String)
    pl.DataFrame([ids, sources]).write_parquet(out / "corpus_ids.parquet")
    is_target = holdout_target(n, 0.05, seed)
    np.save(out / "is_target.npy", is_target)
    # Values: per-component offset + heavy-tailed per-document value, spread over epochs.
    offset = rng.normal(scale=2e-4, size=N_COMPONENTS)
    true = offset[comp] + 3e-4 * rng.standard_t(3, size=n)
    train = np.flatnonzero(~is_target)
    pl.DataFrame(
        {
            "id": ids.gather(train),
            "source": sources.gather(train),
            "n_tokens": lengths[train].astype(np.int64),
            "truncated": lengths[train] > 128,
        }
    ).write_parquet(RunDir(out / "run").examples)
    schema = ledger_schema(ESTIMATORS)
    steps_per_epoch = math.ceil(len(train) / BATCH)
    total = epochs * steps_per_epoch
    n_rows = 0
    for ep in range(epochs):
        perm = train[rng.permutation(len(train))]
        for p0 in range(0, steps_per_epoch, STEPS_PER_PART):
            p1 = min(steps_per_epoch, p0 + STEPS_PER_PART)
            idx = perm[p0 * BATCH : p1 * BATCH]
            local = np.arange(len(idx)) // BATCH
            step = ep * steps_per_epoch + p0 + local
            lr = 1e-3 * 0.5 * (1 + np.cos(np.pi * step / total))
            v = true[idx] / epochs
            cols: dict[str, Any] = {
                "step": step.astype(np.int64),
                "epoch": np.full(len(idx), ep, np.int32),
                "id": ids.gather(idx),
                "source": sources.gather(idx),
                "lr": lr,
                "loss": 4.0 + rng.normal(scale=0.5, size=len(idx)),
            }
            for j, e in enumerate(ESTIMATORS):
                noise = rng.normal(scale=(0.3 + 0.2 * j) * np.abs(v) + 1e-6)
                cols[f"value_{e}"] = v + noise
            df = pl.DataFrame(cols, schema=schema)
            df.write_parquet(RunDir(out / "run").ledger / f"part-{int(step[0]):07d}.parquet")
            n_rows += len(idx)
    return {
        "n": n,
        "dim": dim,
        "epochs": epochs,
        "ledger_rows": n_rows,
        "n_target": int(is_target.sum()),
    }


# ------------------------------------------------------------------------------ measurement


def measure(inputs: Path) -> dict:
    """Run the pruning stage on the inputs under `inputs`; per-phase seconds and peak memory."""
    import polars as pl

    from curation.aggregate import aggregate_run
    from curation.cluster import default_k, spherical_kmeans
    from curation.embed import prepare_for_similarity
    from curation.selection import select, token_shingles

    phases: dict[str, float] = {}
    rss: dict[str, float] = {}
    t0 = time.perf_counter()

    def done(name: str) -> None:
        nonlocal t0
        phases[name] = time.perf_counter() - t0
        rss[name] = _rss_now_mib()
        t0 = time.perf_counter()

    corpus = pl.read_parquet(inputs / "corpus_ids.parquet")
    raw = np.load(inputs / "embeddings.npy")
    tokens = np.load(inputs / "tokens.npy", mmap_mode="r")
    offsets = np.load(inputs / "offsets.npy")
    is_target = np.load(inputs / "is_target.npy")
    done("load")
    aggregate_run(inputs / "run")
    done("aggregate")
    vals = pl.read_parquet(RunDir(inputs / "run").values_by_example, columns=["id", "value_adam2"])
    aligned = corpus.select("id").join(vals, on="id", how="left", maintain_order="left")
    values = aligned["value_adam2"].fill_null(np.nan).to_numpy().astype(np.float64)
    values[is_target] = np.nan
    ids = corpus["id"].to_list()
    del vals, aligned
    done("values")
    emb = prepare_for_similarity(raw)
    del raw
    done("similarity")
    k = default_k(int((~is_target).sum()))
    labels, _ = spherical_kmeans(emb, k, seed=0)
    done("cluster")
    shingles = [token_shingles(tokens[offsets[i] : offsets[i + 1]]) for i in range(len(ids))]
    done("shingles")
    res = select(ids, values, labels, emb, KEEP, is_target=is_target, shingles=shingles)
    done("select")
    sizes = np.bincount(labels[~is_target])
    kept_ids = "\n".join(i for i, kk in zip(ids, res.kept) if kk)
    return {
        "n": len(ids),
        "clusters": k,
        "seconds": phases,
        "rss_after_mib": rss,
        "peak_rss_mib": _peak_rss_mib(),
        "total_s": sum(phases.values()),
        "stage_s": sum(v for p, v in phases.items() if p != "load"),
        "n_kept": res.n_kept,
        "largest_cluster": int(sizes.max()),
        "pairs_compared": pairs_searched(sizes),
        "dedup": {k2: res.dedup[k2] for k2 in ("candidate_pairs", "confirmed_pairs", "n_removed")},
        "warnings": [*res.alerts, *res.warnings],
        "kept_sha256": hashlib.sha256(kept_ids.encode()).hexdigest(),
    }


def pairs_searched(sizes: np.ndarray) -> int:
    """Pairs the near-duplicate search compares over clusters of these sizes (estimate above
    EXACT_SEARCH_MAX: each document against SEARCH_PROBES lists of ~size/lists documents)."""
    from curation.selection import EXACT_SEARCH_MAX, SEARCH_CELL, SEARCH_PROBES

    m = sizes.astype(np.int64)
    per_list = m / np.maximum(1, np.ceil(m / SEARCH_CELL))
    probed = m * np.minimum(m, SEARCH_PROBES * per_list)
    return int(np.where(m <= EXACT_SEARCH_MAX, m * m, probed).sum())


# ------------------------------------------------------------------------------ driver


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) on log(x)."""
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    return float(np.polyfit(lx, ly, 1)[0])


def _child(args: list[str], threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "benchmarks.prune_scale", *args]
    out = subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(payload: dict) -> str:
    """The results table and slopes as Markdown."""
    rows = payload["rows"]
    ph = list(rows[0]["seconds"])
    lines = [
        "# Pruning stage at scale",
        "",
        f"`{payload['command']}`: synthetic {payload['dim']}-d embeddings (mixture of "
        f"{N_COMPONENTS} Gaussians on the sphere, {EXACT:.0%} exact copies, {NEAR:.0%} near "
        f"copies, {LOOKALIKE:.0%} embedding-only look-alikes), {payload['epochs']} epochs of "
        f"ledger rows with {len(ESTIMATORS)} estimators, 5% target, keep {KEEP}; one fresh "
        f"process per size, {payload['threads']} FAISS/BLAS thread(s), on {payload['machine']}. "
        "Peak RSS is the child's `ru_maxrss` (inputs included); stage time excludes `load`.",
        "",
        "| docs | ledger rows | clusters | "
        + " | ".join(f"{p} s" for p in ph)
        + " | stage s | peak RSS MiB | kept | near-dup removed | candidate pairs "
        "| pairs searched (near-duplicates) |",
        "|---:|---:|---:|" + "---:|" * len(ph) + "---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['ledger_rows']:,} | {r['clusters']} | "
            + " | ".join(f"{r['seconds'][p]:.2f}" for p in ph)
            + f" | {r['stage_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['n_kept']:,} | "
            f"{r['dedup']['n_removed']:,} | {r['dedup']['candidate_pairs']:,} | "
            f"{r['pairs_compared']:.3g} |"
        )
    s = payload["slopes"]
    lines += [
        "",
        f"Log-log slope over all sizes: stage time {s['stage_s']:.2f}, peak RSS "
        f"{s['peak_rss_mib']:.2f}; per phase: "
        + ", ".join(f"{p} {v:.2f}" for p, v in s["phases"].items())
        + ".",
    ]
    if len(rows) > 2:
        lines.append(
            "Between the two largest sizes: stage time "
            f"{s['last_pair']['stage_s']:.2f}, peak RSS {s['last_pair']['peak_rss_mib']:.2f}."
        )
    if len(rows) > 1:
        a, b = rows[-2], rows[-1]
        grow = b["n"] / a["n"]
        lines += [
            "",
            f"From {a['n']:,} to {b['n']:,} documents (x{grow:g}) the `select` phase took "
            f"x{b['seconds']['select'] / a['seconds']['select']:.1f} the time (slope "
            f"{slope([a['n'], b['n']], [a['seconds']['select'], b['seconds']['select']]):.2f}) "
            f"while the pairs searched for near-duplicates grew "
            f"x{b['pairs_compared'] / a['pairs_compared']:.1f} (largest cluster "
            f"{a['largest_cluster']:,} -> {b['largest_cluster']:,} documents). "
            "The search compares every pair inside a cluster of up to 4,096 documents and, in a "
            "larger one, each document with the documents of its 4 nearest FAISS inverted lists "
            "(~256 documents each). The default cluster count round(sqrt(N/2)) stops growing at "
            "256 clusters from 131,072 documents; past that, clusters grow with N and the "
            "per-cluster search with them (linearly above 4,096 documents a cluster). Every other "
            "phase has a fitted slope of at most "
            f"{max(v for p, v in payload['slopes']['phases'].items() if p != 'select'):.2f}.",
        ]
    if payload.get("note"):
        lines += ["", payload["note"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Parse arguments; run the make/measure children per size, or be one of them."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="FAISS/BLAS threads in the children")
    ap.add_argument("--work", type=Path, default=WORK, help="where the inputs are written")
    ap.add_argument("--name", default="prune_scale", help="results file stem")
    ap.add_argument("--note", default="", help="text appended under the table")
    ap.add_argument(
        "--from-json", type=Path, help="rewrite the Markdown of an earlier run's JSON (no runs)"
    )
    ap.add_argument("--make", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.make is not None:
        print(json.dumps(make_inputs(a.make, a.work / str(a.make), a.dim, a.epochs)))
        return
    if a.measure is not None:
        print(json.dumps(measure(a.measure)))
        return
    if a.from_json is not None:
        from benchmarks.common import write_results

        payload = json.loads(a.from_json.read_text())
        if a.note:
            payload["note"] = a.note
        write_results(a.name, payload, markdown(payload))
        print(markdown(payload))
        return
    rows = []
    for n in a.sizes:
        t = time.perf_counter()
        info = _child(
            [
                "--make",
                str(n),
                "--dim",
                str(a.dim),
                "--epochs",
                str(a.epochs),
                "--work",
                str(a.work),
            ],
            a.threads,
        )
        print(f"n={n}: inputs in {time.perf_counter() - t:.1f}s", flush=True)
        r = _child(["--measure", str(a.work / str(n))], a.threads)
        r.update(ledger_rows=info["ledger_rows"])
        print(json.dumps(r), flush=True)
        rows.append(r)
        shutil.rmtree(a.work / str(n), ignore_errors=True)
    ns = [r["n"] for r in rows]
    slopes: dict[str, Any] = {
        "stage_s": slope(ns, [r["stage_s"] for r in rows]),
        "peak_rss_mib": slope(ns, [r["peak_rss_mib"] for r in rows]),
        "phases": {
            p: slope(ns, [max(r["seconds"][p], 1e-3) for r in rows]) for p in rows[0]["seconds"]
        },
    }
    if len(rows) > 2:
        slopes["last_pair"] = {
            key: slope(ns[-2:], [r[key] for r in rows[-2:]]) for key in ("stage_s", "peak_rss_mib")
        }
    cmd = "python -m benchmarks.prune_scale" + (
        "" if a.sizes == [10_000, 100_000, 1_000_000] else " --sizes " + " ".join(map(str, a.sizes))
    )
    payload = {
        "command": cmd,
        "dim": a.dim,
        "epochs": a.epochs,
        "threads": a.threads,
        "machine": f"{os.cpu_count()} CPU cores (shared), load average "
        f"{os.getloadavg()[0]:.1f} at the end",
        "rows": rows,
        "slopes": slopes,
        "note": a.note,
    }
    from benchmarks.common import write_results

    jp, mp = write_results(a.name, payload, markdown(payload))
    print(markdown(payload))
    print(f"wrote {jp} and {mp}")


if __name__ == "__main__":
    main()
