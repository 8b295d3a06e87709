"""`adamshap score` across two torchrun "nodes": the README's multi-node command, on one machine.

Two launcher processes with `--nnodes=2 --node_rank=0/1` and the same master address stand in for
two machines that share the run directory (as a shared filesystem would). The ledger must hold
every training example exactly once per epoch, written by both ranks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from curation.ledger import read_ledger
from tests.curation.test_scoring_ddp import _data

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.integration
def test_two_nodes_score_one_run(tmp_path: Path) -> None:
    data = _data(tmp_path)
    out = tmp_path / "run"
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    score = ["-m", "flows.cli", "score", data["corpus"], "--target", data["target"]]
    score += ["--out", str(out), "--device", "cpu", "--preset", "tiny", "--seq-len", "32"]
    score += ["--vocab-size", "320", "--batch-size", "8", "--target-batch-size", "4"]
    score += ["--warm-start-steps", "2", "--epochs", "1", "--estimators", "adam2,sgd"]
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1"]
        cmd += [f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}"]
        procs.append(
            subprocess.Popen(
                cmd + score,
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(x[-3000:] for x in logs)
    parts = sorted(p.name for p in (out / "ledger").glob("*.parquet"))
    assert any(p.endswith("-rank0.parquet") for p in parts), parts
    assert any(p.endswith("-rank1.parquet") for p in parts), parts
    assert json.loads((out / ".complete").read_text())["ranks"] == 2
    ledger = read_ledger(out)
    assert ledger.height == 36 and ledger["id"].n_unique() == 36
    assert (out / "values_by_example.parquet").exists()
