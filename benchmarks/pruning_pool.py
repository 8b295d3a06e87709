"""Pool `benchmarks.pruning` results over scoring runs of the same data.

    python -m benchmarks.pruning_pool --out benchmarks/results/regime1200/scoring_runs_pydocs \\
        benchmarks/results/regime1200/pruning_pydocs_mix.json ..._mix_s1.json ..._mix_s2.json

Each input is one `benchmarks.pruning` run of one scenario with the same pool, evaluation split,
retraining steps and seeds, and a different scoring run (`--score-seed`, or the same seed in
another environment). The value-based arms change with the scoring run (its values, its
clusters, its proxy's word-order test); DSIR and random do not. Per scoring run: the default's
mean loss and every arm's paired difference against it; pooled: the same difference over every
(scoring run, seed) pair of the runs that have the arm, and how many pairs favour the default.
Writes `<out>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

REF = "adamshap"


def pool(runs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per-run paired differences against the default, and pooled over the runs with the arm."""
    scen = [r["scenarios"] for _, r in runs]
    if any(len(s) != 1 for s in scen):
        raise ValueError("every input must hold exactly one scenario")
    scen = [s[0] for s in scen]
    names = {s["scenario"] for s in scen}
    steps = {r["meta"]["steps"] for _, r in runs}
    seeds = {tuple(r["meta"]["seeds"]) for _, r in runs}
    if len(names) != 1 or len(steps) != 1 or len(seeds) != 1:
        raise ValueError(f"inputs differ in scenario {names}, steps {steps} or seeds {seeds}")
    if any(REF not in s["arms"] for s in scen):
        raise ValueError(f"every input needs the `{REF}` arm")
    arms = list(dict.fromkeys(a for s in scen for a in s["arms"]))  # an arm may miss a run
    per_run = []
    for (label, r), s in zip(runs, scen):
        # the paired differences each run already holds (`benchmarks.pruning` computes them)
        row = {"label": label, "score_seed": r["meta"].get("score_seed"), "arms": {}}
        for a, x in s["arms"].items():
            row["arms"][a] = {
                "eval_loss_mean": x["eval_loss_mean"],
                "diff": x["paired_diff_vs_adamshap"],
                "diff_mean": x["paired_diff_mean"],
                "diff_sd": x["paired_diff_sd"],
            }
        per_run.append(row)
    pooled = {}
    for a in arms:
        d = np.concatenate([row["arms"][a]["diff"] for row in per_run if a in row["arms"]])
        pooled[a] = {
            "n_pairs": int(d.size),
            "diff_mean": float(d.mean()),
            "diff_sd": float(d.std(ddof=1)) if d.size > 1 else 0.0,
            "favour_default": int((d > 0).sum()),
        }
    ref_means = np.array([row["arms"][REF]["eval_loss_mean"] for row in per_run])
    return {
        "scenario": names.pop(),
        "steps": steps.pop(),
        "seeds": list(seeds.pop()),
        "unigram_eval_ce": scen[0]["unigram_eval_ce"],
        "arms": arms,
        "runs": per_run,
        "pooled": pooled,
        "default_spread": float(ref_means.max() - ref_means.min()),
    }


def markdown(p: dict[str, Any]) -> str:
    """The table: one column per scoring run, then the pooled column."""
    arms = [a for a in p["arms"] if a != REF]
    head = [row["label"] for row in p["runs"]]
    lines = [
        f"Scenario `{p['scenario']}`, {p['steps']} retraining steps, seeds {p['seeds']}, "
        f"{len(p['runs'])} scoring runs; unigram line **{p['unigram_eval_ce']:.3f}** nats. "
        "Paired difference against the default (mean ± sd over seeds; > 0: the default better); "
        f"the default's mean moves by {p['default_spread']:.3f} nats between scoring runs.",
        "",
        "| arm | " + " | ".join(head) + " | pooled |",
        "|---|" + "---|" * (len(head) + 1),
        f"| default (`{REF}`) | "
        + " | ".join(f"{row['arms'][REF]['eval_loss_mean']:.3f}" for row in p["runs"])
        + " | – |",
    ]
    for a in arms:
        q = p["pooled"][a]
        cells = [
            f"{row['arms'][a]['diff_mean']:+.3f} ± {row['arms'][a]['diff_sd']:.3f}"
            if a in row["arms"]
            else "–"
            for row in p["runs"]
        ]
        pooled = (
            f"{q['diff_mean']:+.3f} ± {q['diff_sd']:.3f} "
            f"({q['favour_default']}/{q['n_pairs']} favour the default)"
        )
        lines.append(f"| {a} | " + " | ".join(cells) + f" | {pooled} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Read the runs, write `<out>.json` and `<out>.md`."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "inputs", nargs="+", help="benchmarks.pruning result JSONs (LABEL=PATH or PATH)"
    )
    ap.add_argument("--out", required=True, help="output stem")
    a = ap.parse_args(argv)
    runs = []
    for x in a.inputs:
        label, _, path = x.rpartition("=") if "=" in x else (Path(x).stem, "", x)
        runs.append((label, json.loads(Path(path).read_text())))
    p = pool(runs)
    p["inputs"] = a.inputs
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = markdown(p)
    Path(f"{out}.json").write_text(json.dumps(p, indent=2))
    Path(f"{out}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
