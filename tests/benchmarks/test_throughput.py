"""The throughput benchmark's memory measure and tables (timings themselves are never asserted)."""

from __future__ import annotations

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
