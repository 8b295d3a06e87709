"""The throughput benchmark's memory measure and tables (timings themselves are never asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import throughput


def test_tensor_peak_sees_a_transient_allocation():
    keep = torch.zeros(2**18)  # 1 MiB alive throughout

    def work() -> None:
        x = torch.ones(2**21)  # 8 MiB, freed on return
        (x * 2).sum()  # another 8 MiB while x is alive
        keep.add_(1)

    peak = throughput.tensor_peak_mib(work)
    assert 16.0 <= peak < 20.0


def _adam2_peak(chunk: int | None) -> float:
    a = throughput.ThroughputArgs(vocab_size=512, batch_size=8, val_size=8, target_chunk=chunk)
    run = throughput.make_runner("adam2", "tiny", 64, a)
    b = throughput._data(a.vocab_size, a.batch_size, 64, seed=1)
    run(b)
    return throughput.tensor_peak_mib(lambda: run(b))


@pytest.mark.integration
def test_target_chunks_lower_the_peak_of_live_tensors():
    """adam2 takes two target gradients while the training records are held; chunks shrink them."""
    whole, chunked = _adam2_peak(None), _adam2_peak(2)
    assert chunked < 0.9 * whole, (chunked, whole)


def test_memory_table_shows_both_cpu_measures():
    mem = {
        "preset": "tiny",
        "seq_len": 64,
        "measures": ["tensor_peak_mib", "peak_mib"],
        "variants": {
            v: {
                "tensor_peak_mib": 100.0 * k,
                "tensor_peak_mib_ratio_vs_plain": float(k),
                "peak_mib": 200.0 * k,
                "peak_mib_ratio_vs_plain": float(k),
            }
            for v, k in (("plain", 1), ("adam", 2))
        },
    }
    env = {"threads": 2, "device": "cpu", "cpu_count": 2}
    md = throughput.markdown([], mem, throughput.ThroughputArgs(), env)
    assert "| variant | live tensors MiB | x plain | RSS MiB | x plain |" in md
    assert "| adam | 200 | 2.00 | 400 | 2.00 |" in md
    assert "8 examples at a time" in md


@pytest.mark.integration
def test_realistic_mode_writes_its_table_beside_the_grid(tmp_path):
    """`--realistic --quick` (tiny preset, 1 round, batch 4): the JSON shape and the tables.

    The grid's rows already in the file are kept; timings are only checked to be positive.
    """
    grid_row = {
        "preset": "tiny",
        "seq_len": 64,
        "rounds": 1,
        "steps_per_round": 1,
        "seconds_per_step": {"plain": 0.1, "adam": 0.2},
        "steps_per_s": {"plain": 10.0, "adam": 5.0},
        "ratio_vs_plain": {"plain": 1.0, "adam": 0.5},
    }
    env = {"threads": 2, "device": "cpu", "cpu_count": 2, "date": "x"}
    prior = {"args": {}, "environment": env, "rows": [grid_row], "memory": {}}
    (tmp_path / "throughput_quick.json").write_text(json.dumps(prior))
    throughput.main(["--realistic", "--quick", "--out", str(tmp_path)])

    out = json.loads((tmp_path / "throughput_quick.json").read_text())
    assert out["rows"] == [grid_row]  # the grid is not redone
    res = out["realistic"]
    assert res["partial"] is False
    qa = throughput.QUICK_REALISTIC
    assert [(c["preset"], c["batch_size"], c["target_rows"]) for c in res["cells"]] == [
        ("tiny", 4, 1),
        ("tiny", 4, 2),
    ]
    variants = set(throughput.realistic_variants(qa))
    assert variants == {"plain", "adam exact", "adam lowrank", "adam auto", "sgd exact"}
    for c in res["cells"]:
        assert set(c["ratio_vs_plain"]) == variants
        assert c["ratio_vs_plain"]["plain"] == 1.0
        assert all(s > 0 for s in c["seconds_per_step"].values())
        assert set(c["fidelity_pearson_vs_exact"]) == {"adam lowrank", "adam auto"}
        assert all(-1.0 <= r <= 1.0 for r in c["fidelity_pearson_vs_exact"].values())
        assert c["fidelity_steps"] == qa.warmup + qa.rounds * qa.steps_per_round
        assert c["adam_vs_sgd_exact"] > 0
        assert c["layout"]["adam exact"] == {"lowrank_weights": 0, "gram_weights": 0}
        assert c["layout"]["adam lowrank"]["lowrank_weights"] > 0
    m = res["momentum"]
    assert (m["window"], m["target_rows"]) == (2, 2)
    assert set(m["ratio_vs_plain"]) == {"plain", "adam", "adam K=2"}
    [mem] = res["memory"]
    assert (mem["preset"], mem["target_rows"]) == ("tiny", 2)
    assert set(mem["variants"]) == set(qa.memory_variants)
    for v in mem["variants"].values():
        assert v["tensor_peak_mib"] > 0
        assert v["tensor_peak_mib_ratio_vs_plain"] > 0
    assert mem["variants"]["plain"]["tensor_peak_mib_ratio_vs_plain"] == 1.0

    md = (tmp_path / "throughput_quick.md").read_text()
    assert "| tiny | 64 | 10.00 | 0.500 |" in md  # the grid's table is still there
    assert "**Realistic settings**" in md
    assert "| preset | batch | seq | target rows | plain s/step | adam exact |" in md
    assert "(R " in md
    assert "| plain | adam | adam K=2 |" in md
    assert "| variant | live tensors MiB | x plain | RSS MiB | x plain |" in md


def test_realistic_bars_read_gpt2_batch_64_small_targets():
    from dataclasses import asdict

    cell = {
        "preset": "gpt2",
        "batch_size": 64,
        "seq_len": 128,
        "target_rows": 4,
        "ratio_vs_plain": {"plain": 1.0, "adam exact": 0.8, "adam auto": 0.95},
        "fidelity_pearson_vs_exact": {"adam auto": 0.999},
        "adam_vs_sgd_exact": 0.98,
        "seconds_per_step": {"plain": 10.0, "adam exact": 12.5, "adam auto": 10.5},
        "same_layout_as": {},
    }
    mem = {
        "preset": "gpt2",
        "batch_size": 64,
        "seq_len": 128,
        "target_rows": 4,
        "measures": ["tensor_peak_mib", "peak_mib"],
        "variants": {"adam exact": {"tensor_peak_mib_ratio_vs_plain": 1.2}},
    }
    other = dict(cell, target_rows=16)
    [bar] = throughput.realistic_bars({"cells": [cell, other], "memory": [mem]})
    assert bar == {
        "seq_len": 128,
        "target_rows": 4,
        "adam_vs_plain": 0.8,
        "adam_vs_sgd": 0.98,
        "auto_vs_plain": 0.95,
        "auto_r": 0.999,
        "live_peak_vs_plain": 1.2,
    }
    md = throughput.realistic_markdown(
        {
            "cells": [cell],
            "memory": [],
            "args": asdict(throughput.RealisticArgs()),
            "environment": throughput.environment(),
        }
    )
    assert "with `auto`" in md and "adam/plain 0.950, R 0.9990 vs exact (met" in md
