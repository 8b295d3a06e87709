"""Throughput and memory of momentum-propagated values (`InRunScorer(momentum_window=K)`).

Same shapes as the throughput table (batch 16, target batch 16, vocab 4096, AdamW + clip 1.0,
exact contraction, target chunks of 8). Every variant has its own model and optimizer from
one seed; each first takes K+1 untimed steps so its window is full, then all variants take
the same steps interleaved round by round (median seconds per step, as a fraction of plain).
Memory, each variant in its own process after its window filled: the peak of live tensor
bytes during one step (model, optimizer state and the held window included), and the bytes
the window itself holds (kept records of K steps + their accumulated val sides).

    python -m benchmarks.momentum_cost
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time

import torch

from adamshap_core import InRunScorer, build_model, plain_step

from .common import RESULTS, environment, write_results
from .throughput import _data, _rss_mib, tensor_peak_mib

VARIANTS: dict[str, tuple[tuple[str, ...] | None, int]] = {
    "plain": (None, 0),
    "adam": (("adam",), 0),
    "adam K=10": (("adam",), 10),
    "adam K=20": (("adam",), 20),
    "all four": (("adam2", "adam-loo", "adam", "sgd"), 0),
    "all four K=20": (("adam2", "adam-loo", "adam", "sgd"), 20),
}
CONFIGS = (("tiny", 128, 4),)  # (preset, seq, timed rounds)
VOCAB, BATCH, VAL = 4096, 16, 16


def _runner(variant: str, preset: str, T: int):
    ests, K = VARIANTS[variant]
    model = build_model(preset, VOCAB, T, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    if ests is None:
        return (lambda b: plain_step(model, opt, b, 1.0)), None
    sc = InRunScorer(
        model, opt, _data(VOCAB, VAL, T, 999), estimators=ests, max_grad_norm=1.0,
        momentum_window=K,
    )  # fmt: skip
    return sc.step, sc


def held_mib(sc: InRunScorer | None) -> float:
    """Bytes held by the open momentum windows: kept records and accumulated val sides."""
    if sc is None or sc.momentum is None:
        return 0.0
    seen: dict[int, int] = {}  # storage pointer -> bytes (views of one storage counted once)

    def add(t: torch.Tensor | None) -> None:
        if t is not None and t.numel():
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()

    for p in sc.momentum.pending:
        for _, recs in p.records:
            for r in recs:
                for t in (r.a, r.b, r.gw, r.gb):
                    add(t)
        for t in list((p.acc or {}).values()) + list((p.ghat or {}).values()):
            add(t)
    return sum(seen.values()) / 2**20


def time_config(preset: str, T: int, rounds: int) -> dict:
    """Median s/step of every variant, interleaved, after each variant's window filled."""
    runners = {v: _runner(v, preset, T) for v in VARIANTS}
    for v, (run, _) in runners.items():
        for s in range(VARIANTS[v][1] + 1):
            run(_data(VOCAB, BATCH, T, seed=s))
    times = {v: [] for v in VARIANTS}
    for r in range(rounds):
        b = _data(VOCAB, BATCH, T, seed=100 + r)
        for v, (run, _) in runners.items():
            t0 = time.perf_counter()
            run(b)
            times[v].append(time.perf_counter() - t0)
    med = {v: statistics.median(ts) for v, ts in times.items()}
    return {
        "preset": preset,
        "seq_len": T,
        "rounds": rounds,
        "s_per_step": med,
        "x_plain": {v: med["plain"] / med[v] for v in VARIANTS},
        "held_mib": {v: held_mib(sc) for v, (_, sc) in runners.items()},
    }


def _memory_child(variant: str, preset: str, T: int) -> None:
    torch.set_num_threads(1)
    run, sc = _runner(variant, preset, T)
    base = _rss_mib()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:  # the peak of the current RSS while the window fills and runs
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    for s in range(VARIANTS[variant][1] + 2):
        run(_data(VOCAB, BATCH, T, seed=s))
    stop.set()
    th.join()
    tensors = tensor_peak_mib(lambda: run(_data(VOCAB, BATCH, T, seed=77)))
    print(
        json.dumps(
            {"rss_mib": peak[0] - base, "tensor_peak_mib": tensors, "held_mib": held_mib(sc)}
        )
    )


def memory(preset: str, T: int) -> dict:
    """Live-tensor peak of one step of each variant, each in its own process."""
    out = {}
    for v in VARIANTS:
        res = subprocess.run(
            [sys.executable, "-m", "benchmarks.momentum_cost", "--memory-child", v, preset, str(T)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[v] = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"  memory {v}: {out[v]}", flush=True)
    return out


def markdown(rows: list[dict], mem: dict, mem_cfg: tuple[str, int], env: dict) -> str:
    """Throughput ratios and the memory table."""
    names = list(VARIANTS)
    lines = [
        "# Momentum-propagated values: throughput and memory",
        "",
        f"Batch {BATCH}, target batch {VAL}, vocab {VOCAB}, AdamW + clipping 1.0, exact "
        f"contraction, target chunks of 8, {env['threads']} torch thread(s) on "
        f"{env['cpu_count']} CPU cores shared with other jobs ({env['date']}). Each variant on "
        "its own model from one seed, window filled first (K+1 untimed steps), then timed "
        "interleaved; cell: throughput as a fraction of plain training (median s/step in "
        "brackets). `K=k`: momentum window of k steps.",
        "",
        "| preset | seq | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for r in rows:
        cells = [f"{r['x_plain'][v]:.3f} ({r['s_per_step'][v]:.3f} s)" for v in names]
        lines.append(f"| {r['preset']} | {r['seq_len']} | " + " | ".join(cells) + " |")
    base = mem["plain"]["tensor_peak_mib"]
    lines += [
        "",
        f"Memory ({mem_cfg[0]}, seq {mem_cfg[1]}, each variant in its own process, one step "
        "after its window filled): the peak of live tensor bytes (model, optimizer state and "
        "the window included, but only the tensors the profiler sees touched in that step, "
        "so it misses most of the held window), the peak RSS above the process baseline "
        "while the window fills and runs (everything, plus what glibc keeps cached), and "
        "what the open windows hold, counted storage by storage (K steps' kept layer inputs "
        "and output gradients, plus one accumulated val side per estimator and open step).",
        "",
        "| variant | live tensors MiB | x plain | RSS MiB | x plain | held by the window MiB |",
        "|---|---|---|---|---|---|",
    ]
    rbase = mem["plain"]["rss_mib"]
    for v in names:
        m = mem[v]
        lines.append(
            f"| {v} | {m['tensor_peak_mib']:.0f} | {m['tensor_peak_mib'] / base:.2f} "
            f"| {m['rss_mib']:.0f} | {m['rss_mib'] / rbase:.2f} | {m['held_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Time and measure every variant; write benchmarks/results/momentum_cost.{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory-child", nargs=3, metavar=("VARIANT", "PRESET", "SEQ"))
    ap.add_argument("--quick", action="store_true", help="tiny seq 64, 2 rounds")
    ap.add_argument("--memory-only", action="store_true", help="redo memory, keep timed rows")
    ns = ap.parse_args(argv)
    if ns.memory_child:
        v, preset, T = ns.memory_child
        _memory_child(v, preset, int(T))
        return
    torch.set_num_threads(1)
    configs = (("tiny", 64, 2),) if ns.quick else CONFIGS
    name = "momentum_cost_quick" if ns.quick else "momentum_cost"
    rows = []
    if ns.memory_only:
        rows = json.loads((RESULTS / f"{name}.json").read_text())["rows"]
        configs = ()
    for preset, T, rounds in configs:
        t0 = time.time()
        rows.append(time_config(preset, T, rounds))
        print(f"{preset} seq {T}: {rows[-1]['x_plain']} ({time.time() - t0:.0f}s)", flush=True)
    mem_cfg = (rows[0]["preset"], rows[0]["seq_len"])
    mem = memory(*mem_cfg)
    env = environment()
    md = markdown(rows, mem, mem_cfg, env)
    write_results(name, {"rows": rows, "memory": mem, "env": env}, md)
    print(md)


if __name__ == "__main__":
    main()
