"""What `adam` costs over `sgd`: the two estimators interleaved in one process, phase by phase.

Two `InRunScorer`s through the public API, one valuing `sgd` only and one `adam` only, each on
its own model and optimizer from the same seed (so both train the identical trajectory on the
same batches and the same target batch, with the same exact contraction), plus a second `sgd`
scorer as an A/A control. After warm-up the three take turns round by round (who goes first
rotates), so machine load hits all alike; the ratio is sgd s/step / adam s/step per round,
median over rounds, and sgd / sgd-control shows how far the same measurement strays from 1.

Phases are timed by swapping the scorer's `record_function` labels for wall-clock timers (no
profiler running during the timed rounds): target gradient, training forward/backward,
preconditioner, optimizer step, val columns (lr·g or lr·P ⊙ g), val side, contraction; `other`
is the rest of the step (batch preparation, value assembly). One extra step per estimator
under torch.profiler afterwards lists the ops whose time differs most between the two.

    python -m benchmarks.adam_vs_sgd --label after   # writes benchmarks/results/adam_vs_sgd.*

Runs recorded under other labels (e.g. `before`, from an earlier commit) are kept in the JSON
and shown side by side in the Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from adamshap_core import InRunScorer, build_model
from adamshap_core import scorer as scorer_mod

from .common import RESULTS, environment, write_results

ESTIMATORS = ("sgd", "adam")
CONTROL = "sgd-control"  # a second sgd scorer: the A/A noise floor of the same measurement
RUNS = (*ESTIMATORS, CONTROL)
PHASES = (
    "target_grad",
    "train_forward_backward",
    "preconditioner",
    "optimizer_step",
    "val_columns",
    "val_side",
    "contract",
)


@dataclass
class Args:
    """Shape of the comparison (the issue's: cpu-small, seq 128, batch 16, 4-row target)."""

    preset: str = "cpu-small"
    seq_len: int = 128
    batch_size: int = 16
    val_size: int = 4
    vocab_size: int = 4096
    rounds: int = 12
    steps_per_round: int = 2
    warmup: int = 2
    threads: int = 1
    label: str = "current"


class PhaseTimer:
    """Stands in for `record_function` in the scorer: accumulates wall seconds per label."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            key = name.removeprefix("adamshap.")
            self.totals[key] = self.totals.get(key, 0.0) + time.perf_counter() - t0

    def reset(self) -> None:
        self.totals = {}


def _data(vocab: int, n: int, T: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, vocab, (n, T), generator=g)}


def make_scorer(estimator: str, a: Args) -> InRunScorer:
    """A scorer valuing one estimator, defaults otherwise, on its own model from seed 0."""
    model = build_model(a.preset, a.vocab_size, a.seq_len, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    val = _data(a.vocab_size, a.val_size, a.seq_len, seed=999)
    return InRunScorer(model, opt, val, estimators=(estimator,))


def measure(a: Args) -> dict:
    """Interleaved timing of sgd-only vs adam-only steps, with a per-phase split."""
    torch.set_num_threads(a.threads)
    scorers = {e: make_scorer(e.removesuffix("-control"), a) for e in RUNS}
    batches = [_data(a.vocab_size, a.batch_size, a.seq_len, seed=s) for s in range(8)]
    for k in range(a.warmup):
        for sc in scorers.values():
            sc.step(batches[k % len(batches)])
    timer = PhaseTimer()
    saved = scorer_mod.record_function
    scorer_mod.record_function = timer
    step_s = {e: [] for e in RUNS}  # per round: mean seconds per step
    phase_s = {e: {p: [] for p in PHASES} for e in RUNS}
    try:
        for r in range(a.rounds):
            order = RUNS[r % len(RUNS) :] + RUNS[: r % len(RUNS)]  # rotate who goes first
            for e in order:
                timer.reset()
                t0 = time.perf_counter()
                for k in range(a.steps_per_round):
                    scorers[e].step(batches[(a.warmup + r * a.steps_per_round + k) % len(batches)])
                step_s[e].append((time.perf_counter() - t0) / a.steps_per_round)
                for p in PHASES:
                    phase_s[e][p].append(timer.totals.get(p, 0.0) / a.steps_per_round)
    finally:
        scorer_mod.record_function = saved
    for e in RUNS:  # the rest of each round's step time
        phase_s[e]["other"] = [
            t - sum(phase_s[e][p][r] for p in PHASES) for r, t in enumerate(step_s[e])
        ]
    out = {"args": asdict(a), "env": environment(), "rounds": {}}
    for e in RUNS:
        out["rounds"][e] = {
            "ms_per_step": 1e3 * statistics.median(step_s[e]),
            "phases_ms": {p: 1e3 * statistics.median(ts) for p, ts in phase_s[e].items()},
            "raw_s": step_s[e],
        }
    # adam - sgd per phase, paired within each round (load shifts between rounds cancel)
    out["extra_ms"] = {
        p: 1e3 * statistics.median(x - y for x, y in zip(phase_s["adam"][p], phase_s["sgd"][p]))
        for p in (*PHASES, "other")
    }
    out["extra_ms"]["step"] = 1e3 * statistics.median(
        x - y for x, y in zip(step_s["adam"], step_s["sgd"])
    )
    # throughput as a fraction of sgd's, per round; the control's spread is the noise floor
    ratios = [x / y for x, y in zip(step_s["sgd"], step_s["adam"])]
    control = [x / y for x, y in zip(step_s["sgd"], step_s[CONTROL])]
    out["ratio_rounds"], out["control_rounds"] = ratios, control
    out["ratio"] = statistics.median(ratios)
    out["control_ratio"] = statistics.median(control)
    out["ops"] = op_diff({e: scorers[e] for e in ESTIMATORS}, batches[0])
    return out


def op_diff(scorers: dict[str, InRunScorer], batch, top: int = 10) -> list[dict]:
    """One profiled step per estimator: the ops whose self time differs most (adam - sgd)."""
    from torch.profiler import ProfilerActivity, profile

    self_ms: dict[str, dict[str, tuple[float, int]]] = {}
    for e, sc in scorers.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            sc.step(batch)
        self_ms[e] = {
            ev.key: (ev.self_cpu_time_total / 1e3, ev.count)
            for ev in prof.key_averages()
            if not ev.key.startswith("adamshap.")
        }
    keys = set(self_ms["sgd"]) | set(self_ms["adam"])
    rows = []
    for k in keys:
        s, sn = self_ms["sgd"].get(k, (0.0, 0))
        ad, an = self_ms["adam"].get(k, (0.0, 0))
        rows.append({"op": k, "sgd_ms": s, "adam_ms": ad, "sgd_calls": sn, "adam_calls": an})
    rows.sort(key=lambda r: abs(r["adam_ms"] - r["sgd_ms"]), reverse=True)
    return rows[:top]


def markdown(runs: dict[str, dict]) -> str:
    """Every recorded run side by side: ratio, per-phase ms of both estimators, op diff."""
    labels = list(runs)
    first = runs[labels[0]]
    a = first["args"]
    lines = [
        "# `adam` vs `sgd` throughput, phase by phase",
        "",
        f"{a['preset']}, seq {a['seq_len']}, batch {a['batch_size']}, target batch "
        f"{a['val_size']}, vocab {a['vocab_size']}, AdamW, scorer defaults (exact contraction, "
        "no clipping, target chunks of 8). One scorer per estimator on its own model from one "
        "seed, same batches; interleaved in one process, the order rotated every round. Ratio: "
        "sgd s/step / adam s/step per round, median over rounds (adam throughput as a "
        "fraction of sgd's). Phase times: median over rounds of the mean per step, "
        "from wall-clock timers on the scorer's phase labels (`python -m benchmarks.adam_vs_sgd`).",
        "",
        "| run | rounds x steps | torch threads | date | sgd ms/step | adam ms/step | "
        "adam / sgd throughput | per-round (min-max) | A/A control: sgd / sgd |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lab, r in runs.items():
        ra = r["args"]
        rr = r["ratio_rounds"]
        lines.append(
            f"| {lab} | {ra['rounds']} x {ra['steps_per_round']} | {ra['threads']} | "
            f"{r['env']['date']} | {r['rounds']['sgd']['ms_per_step']:.1f} | "
            f"{r['rounds']['adam']['ms_per_step']:.1f} | **{r['ratio']:.3f}** | "
            f"{min(rr):.3f}-{max(rr):.3f} | {r['control_ratio']:.3f} "
            f"({min(r['control_rounds']):.3f}-{max(r['control_rounds']):.3f}) |"
        )
    lines += [
        "",
        "Per-phase ms per step: sgd / adam (median over rounds) and adam - sgd (median of the "
        "per-round differences, which cancels load that shifts between rounds):",
        "",
    ]
    lines.append("| phase | " + " | ".join(labels) + " |")
    lines.append("|---|" + "---|" * len(labels))
    for p in (*PHASES, "other", "step"):
        cells = []
        for lab in labels:
            run = runs[lab]
            if p == "step":
                ph = {e: run["rounds"][e]["ms_per_step"] for e in ESTIMATORS}
            else:
                ph = {e: run["rounds"][e]["phases_ms"].get(p, 0.0) for e in ESTIMATORS}
            cells.append(
                f"{ph['sgd']:.1f} / {ph['adam']:.1f} (adam - sgd {run['extra_ms'][p]:+.1f})"
            )
        lines.append(f"| {'whole step' if p == 'step' else p} | " + " | ".join(cells) + " |")
    for lab in labels:
        lines += [
            "",
            f"Ops whose self time differs most, one profiled step each ({lab}):",
            "",
            "| op | sgd ms (calls) | adam ms (calls) |",
            "|---|---|---|",
        ]
        for o in runs[lab]["ops"]:
            lines.append(
                f"| `{o['op']}` | {o['sgd_ms']:.1f} ({o['sgd_calls']}) | "
                f"{o['adam_ms']:.1f} ({o['adam_calls']}) |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = Args()
    for f, v in asdict(d).items():
        ap.add_argument("--" + f.replace("_", "-"), type=type(v), default=v)
    ap.add_argument("--name", default="adam_vs_sgd", help="results file stem")
    ns = vars(ap.parse_args(argv))
    name = ns.pop("name")
    a = Args(**ns)
    res = measure(a)
    path = RESULTS / f"{name}.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else {}
    runs[a.label] = res
    jp, mp = write_results(name, {"runs": runs}, markdown(runs))
    print(markdown({a.label: res}))
    print(f"wrote {jp} and {mp}")


if __name__ == "__main__":
    main()
