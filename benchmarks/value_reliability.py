"""Value reliability: do two scoring runs of the same pool agree on which documents help?

    python -m benchmarks.value_reliability --scenario pydocs \\
        --tags pruning_pydocs_mix,pruning_pydocs_mix_s1 [--dims 16,64,128] [--out STEM]

A per-document value is only worth a pruning decision if it is a property of the document rather
than of one training run and one random projection. This benchmark takes two scoring runs of the
same pool and target made by `benchmarks.pruning` with different `--score-seed`s
(runs/benchmarks/<tag>/<scenario>/scores) and recomputes every document's checkpoint value
(`curation.checkpoint_values`) from each run's saved snapshots at several sketch sizes `k`
(`adamshap score --sketch-dim`). Per `k` it reports the Spearman correlation of the values

- between the two scoring runs (all documents; clean documents the quality rules pass; clean
  documents within each source, where only the document and not its source can matter), and
- within one run between two sketch seeds (the same model: projection noise alone),

beside how well the values separate clean from injected junk (ROC AUC) and the time of one run's
checkpoint values relative to `k = 16`, measured in this invocation. Writes `<out>.json`/`.md`
(default benchmarks/results/value_reliability_<scenario>).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import ROOT, environment


def load_run(run_dir: Path) -> dict[str, Any]:
    """A finished scoring run's model, optimizer shell, snapshots and encoded corpus and target."""
    import torch
    from transformers import GPT2LMHeadModel

    from curation.checkpoint_values import snapshot_paths
    from curation.corpus import read_corpus
    from curation.encode import encode_corpus
    from curation.run_dir import RunDir
    from curation.tokenizer import load_tokenizer

    run = RunDir(run_dir)
    args = run.read_run_json()["args"]
    tok = load_tokenizer(run.tokenizer)
    model = GPT2LMHeadModel.from_pretrained(run.final_model)
    opt = torch.optim.AdamW(model.parameters(), lr=args["lr"], betas=tuple(args["betas"]))
    snaps = [torch.load(p, map_location="cpu", weights_only=True) for p in snapshot_paths(run_dir)]
    if not snaps:
        raise SystemExit(f"{run_dir} saved no snapshots (run it with --snapshots >= 1)")
    corpus = read_corpus(args["corpus"]).df  # validated as the scoring run read it
    target = read_corpus(args["target"]).df
    return {
        "ids": corpus["id"].to_list(),
        "sources": corpus["source"].to_numpy(),
        "seed": int(args["seed"]),
        "model": model,
        "opt": opt,
        "snaps": snaps,
        "train": encode_corpus(corpus, tok, int(args["seq_len"])),
        "target": encode_corpus(target, tok, int(args["seq_len"])),
    }


def values_at(run: dict[str, Any], k: int, seed: int) -> tuple[np.ndarray, float]:
    """(checkpoint values averaged over the run's snapshots at sketch size k, seconds)."""
    from curation.checkpoint_values import CheckpointValueConfig, checkpoint_values

    t0 = time.perf_counter()
    cfg = CheckpointValueConfig(sketch_dim=k, seed=seed)
    v = checkpoint_values(
        run["model"], run["opt"], run["snaps"], run["train"], run["target"], cfg, progress=False
    )
    return v.mean(axis=0), time.perf_counter() - t0


def agreement(
    a: np.ndarray, b: np.ndarray, clean: np.ndarray, sources: np.ndarray
) -> dict[str, Any]:
    """Spearman correlation of two value vectors: all rows, clean rows, clean rows per source."""
    from scipy.stats import spearmanr

    def rho(m: np.ndarray) -> float:
        return float(spearmanr(a[m], b[m])[0]) if m.sum() > 2 else float("nan")

    per = {str(s): rho(clean & (sources == s)) for s in sorted(set(sources[clean].tolist()))}
    return {
        "all": rho(np.ones(len(a), bool)),
        "clean": rho(clean),
        "within_source": per,
        "within_source_mean": float(np.nanmean(list(per.values()))) if per else float("nan"),
    }


def measure(scenario_dirs: list[Path], dims: list[int]) -> dict[str, Any]:
    """Values of both runs at every k, the second sketch seed of the first run, and agreements."""
    from sklearn.metrics import roc_auc_score

    npz = np.load(scenario_dirs[0] / "scores.npz", allow_pickle=True)
    masks = np.load(scenario_dirs[0] / "masks.npz")
    kinds, flagged = npz["kinds"], masks["flagged"]
    runs = [load_run(d / "scores") for d in scenario_dirs]
    ids = [str(i) for i in npz["ids"]]
    for r in runs:
        if r["ids"] != ids:
            raise SystemExit("the two scoring runs must score the same pool in the same order")
    junk = kinds != "clean"
    clean = ~junk & ~flagged
    sources = runs[0]["sources"]
    rows = []
    for k in dims:
        (va, ta), (vb, _) = (
            values_at(runs[0], k, runs[0]["seed"]),
            values_at(runs[1], k, runs[1]["seed"]),
        )
        vr, _ = values_at(runs[0], k, runs[0]["seed"] + 100)
        rows.append(
            {
                "k": k,
                "seconds": round(ta, 1),
                "between_runs": agreement(va, vb, clean, sources),
                "between_sketch_seeds": agreement(va, vr, clean, sources),
                "junk_auc": [float(roc_auc_score(~junk, v)) for v in (va, vb)],
            }
        )
        print(
            f"k={k}: between runs {rows[-1]['between_runs']['clean']:.3f} (clean), between "
            f"sketch seeds {rows[-1]['between_sketch_seeds']['clean']:.3f}, {ta:.0f} s",
            flush=True,
        )
    base = next((r["seconds"] for r in rows if r["k"] == 16), rows[0]["seconds"])
    for r in rows:
        r["time_ratio"] = round(r["seconds"] / base, 2)
    return {
        "n_docs": len(ids),
        "n_clean": int(clean.sum()),
        "n_junk": int(junk.sum()),
        "score_seeds": [r["seed"] for r in runs],
        "snapshots": [int(s["step"]) for s in runs[0]["snaps"]],
        "rows": rows,
    }


def markdown(meta: dict[str, Any], res: dict[str, Any]) -> str:
    """One row per sketch size."""
    srcs = list(res["rows"][0]["between_runs"]["within_source"])
    lines = [
        f"Scenario `{meta['scenario']}`: {res['n_docs']} documents ({res['n_junk']} injected "
        f"junk; {res['n_clean']} clean documents the quality rules pass), scoring runs seeded "
        f"{res['score_seeds']}, checkpoint values at snapshots {res['snapshots']} recomputed "
        "at each sketch size k. Spearman correlation of the values (clean documents); "
        "time of one run's checkpoint values relative to k = 16, in this invocation.",
        "",
        "| k | between runs | within source (mean) | "
        + " | ".join(srcs)
        + " | same run, two sketch seeds | junk AUC (run 1, run 2) | time |",
        "|---|---|---|" + "---|" * len(srcs) + "---|---|---|",
    ]
    for r in res["rows"]:
        br, ws = r["between_runs"], r["between_runs"]["within_source"]
        lines.append(
            f"| {r['k']} | {br['clean']:.3f} | {br['within_source_mean']:.3f} | "
            + " | ".join(f"{ws[s]:.2f}" for s in srcs)
            + f" | {r['between_sketch_seeds']['clean']:.3f} | "
            + ", ".join(f"{x:.2f}" for x in r["junk_auc"])
            + f" | {r['time_ratio']:.2f}x ({r['seconds']:.0f} s) |"
        )
    lines += ["", f"`{meta['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenario", required=True)
    p.add_argument("--tags", required=True, help="two benchmarks.pruning tags (scoring seeds)")
    p.add_argument("--dims", default="16,64,128")
    p.add_argument("--work", default="runs/benchmarks")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=None, help="output stem (no suffix)")
    a = p.parse_args(argv)
    import torch

    from curation.run_dir import RunDir

    if a.threads:
        torch.set_num_threads(a.threads)
    tags = [t for t in a.tags.split(",") if t]
    if len(tags) != 2:
        raise SystemExit("--tags needs exactly two benchmarks.pruning tags")
    dirs = [Path(a.work) / t / a.scenario for t in tags]
    for d in dirs:
        if not RunDir(d / "scores").is_complete() or not (d / "masks.npz").exists():
            raise SystemExit(
                f"{d} holds no finished benchmarks.pruning scenario; run `python -m "
                f"benchmarks.pruning --scenarios {a.scenario} --tag {d.parent.name} "
                "--score-seed N` first"
            )
    dims = [int(x) for x in a.dims.split(",") if x]
    t0 = time.time()
    res = measure(dirs, dims)
    meta = {
        "scenario": a.scenario,
        "tags": tags,
        "dims": dims,
        "command": "python -m benchmarks.value_reliability "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "seconds": round(time.time() - t0, 1),
        "environment": environment(),
    }
    stem = Path(a.out or ROOT / "benchmarks" / "results" / f"value_reliability_{a.scenario}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps({"meta": meta, "result": res}, indent=2) + "\n")
    Path(f"{stem}.md").write_text(markdown(meta, res))
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
