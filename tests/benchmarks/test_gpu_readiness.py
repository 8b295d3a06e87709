"""The GPU script's code paths (device moves, bf16 autocast, CUDA-free imports), checked on CPU."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from benchmarks import amp_check, throughput


def test_amp_check_fp32_matches_fp64_and_bf16_tracks_it():
    res = amp_check.main(["--device", "cpu", "--steps", "2", "--no-write"])
    for e in ("sgd", "adam", "adam2", "adam-loo"):
        assert res["fp32"][e]["pearson_r"] > 0.99999, e
        assert res["fp32"][e]["max_rel_err"] < 1e-4, e
        # bf16 keeps ~3 significant digits; values are contracted in fp32, summed in fp64.
        assert res["bf16_autocast"][e]["pearson_r"] > 0.999, e
        assert res["bf16_autocast"][e]["max_rel_err"] < 2e-2, e
    assert res["fp32"]["max_loss_diff"] < 1e-5
    assert res["bf16_autocast"]["max_loss_diff"] < 1e-2


def test_every_throughput_variant_steps_under_bf16_autocast():
    a = throughput.ThroughputArgs(vocab_size=256, batch_size=2, val_size=2, amp="bf16")
    b = throughput._data(a.vocab_size, a.batch_size, 16, seed=1)
    for v in throughput.VARIANTS:
        out = throughput.make_runner(v, "tiny", 16, a)(b)
        if isinstance(out, torch.Tensor):  # per-example-gradient variant returns its values
            assert torch.isfinite(out).all(), v
        elif out is not None and not isinstance(out, float):
            vals = np.concatenate([x.numpy() for x in out.values.values()])
            assert np.isfinite(vals).all(), v


def test_throughput_imports_without_polars_or_curation():
    # The lent GPU machine has torch + transformers but not polars/prefect/faiss.
    code = (
        "import sys; sys.modules['polars'] = None; sys.modules['curation'] = None; "
        "import benchmarks.throughput, benchmarks.amp_check; print('ok')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_gpu_flag_refuses_clearly_without_cuda():
    if torch.cuda.is_available():  # on a GPU machine the flag runs the grid instead
        return
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.throughput", "--gpu"], capture_output=True, text=True
    )
    assert res.returncode != 0
    assert "needs a CUDA device" in res.stderr


def test_faiss_gpu_check_runs_its_cpu_side_and_the_gpu_script_calls_it():
    from pathlib import Path

    from benchmarks import faiss_gpu_check

    res = faiss_gpu_check.main(
        ["--n", "600", "--dim", "16", "--k", "6", "--cpu-only", "--no-write"]
    )
    assert res["gpu"] is None
    assert 0.9 < res["cpu"]["objective"] <= 1.0  # tight synthetic clusters: rows near centroids
    script = (Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh").read_text()
    assert "benchmarks.faiss_gpu_check" in script
