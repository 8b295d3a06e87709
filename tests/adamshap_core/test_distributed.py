"""Two processes under torchrun (gloo, CPU) give the single-process values on the same global batches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


@pytest.mark.integration
def test_two_process_values_equal_single_process(tmp_path):
    steps = 3
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        str(HERE / "ddp_worker.py"),
        str(steps),
        str(tmp_path / "rank{rank}.pt"),
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    sys.path.insert(0, str(HERE))
    from ddp_worker import ESTS, run

    single = run(0, 1, steps, None)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for e in ESTS:
        merged = torch.cat([r0["values"][e], r1["values"][e]], dim=1)
        ref = single["values"][e]
        err = (merged - ref).abs().max() / ref.abs().max()
        assert err < 1e-5, (e, float(err))
    assert r0["losses"] == pytest.approx(single["losses"], rel=1e-5)
    for p, q, s in zip(r0["params"], r1["params"], single["params"]):
        assert torch.equal(p, q)  # ranks stay in lockstep
        assert torch.allclose(p, s, rtol=1e-5, atol=1e-6)
