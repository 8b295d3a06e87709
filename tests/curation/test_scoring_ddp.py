"""`run_scoring` under torchrun: two ranks share every batch and give the one-process ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curation.errors import UsageError
from curation.ledger import read_ledger
from curation.ranks import Ranks
from curation.scoring_run import ScoreArgs, _check_shards, run_scoring
from tests.fixtures import fixture_docs

REPO = Path(__file__).resolve().parents[2]


def _data(d: Path) -> dict[str, str]:
    by = fixture_docs(12)
    train = [r for s in sorted(by) for r in by[s][:6]]  # 36 docs: batches of 8, the last of 4
    target = by["pydocs"][6:12]
    out = {}
    for name, rows in (("corpus", train), ("target", target)):
        p = d / f"{name}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        out[name] = str(p)
    return out


def test_shard_check_names_the_batch_that_is_too_small():
    args = ScoreArgs(corpus="c", target="t", out="o", batch_size=8, target_batch_size=4)
    _check_shards(Ranks(0, 1), 9, 1, args)  # one process: anything goes
    _check_shards(Ranks(0, 4), 36, 6, args)  # 36 = 4*8 + 4: every batch has >= 4
    with pytest.raises(UsageError, match="the last batch of each epoch = 1"):
        _check_shards(Ranks(0, 2), 33, 6, args)
    with pytest.raises(UsageError, match="--target-batch-size = 1"):
        _check_shards(Ranks(0, 2), 32, 1, args)
    assert Ranks(1, 2).shard(np.arange(7)).tolist() == [1, 3, 5]
    assert Ranks(1, 2).suffix == "-rank1" and Ranks().suffix == ""


@pytest.mark.integration
def test_two_ranks_write_the_single_process_ledger(tmp_path):
    data = _data(tmp_path)
    base = dict(
        **data,
        seq_len=32,
        vocab_size=320,
        batch_size=8,
        target_batch_size=4,
        warm_start_steps=2,
        epochs=1,
        checkpoint_every=2,
        progress=False,
    )
    one = run_scoring(ScoreArgs(out=str(tmp_path / "one"), **base))

    two = tmp_path / "two"
    args_json = tmp_path / "args.json"
    args_json.write_text(ScoreArgs(out=str(two), **base).to_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "curation.scoring_run", "--args-json", str(args_json)]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]

    parts = sorted(p.name for p in (two / "ledger").glob("*.parquet"))
    assert any(p.endswith("-rank0.parquet") for p in parts), parts
    assert any(p.endswith("-rank1.parquet") for p in parts), parts
    assert json.loads((two / ".complete").read_text())["ranks"] == 2
    a, b = read_ledger(one), read_ledger(two)
    assert a.height == b.height == 36
    j = a.join(b, on=["step", "id"], suffix="_2")
    assert j.height == a.height  # the same example at the same step, every row
    assert (j["source"] == j["source_2"]).all()
    # fp32: the ranks sum the batch gradient in another order, so values agree to ~1e-4, not bits
    np.testing.assert_allclose(j["loss"], j["loss_2"], rtol=1e-4, atol=1e-5)
    for col in [c for c in a.columns if c.startswith("value_")]:
        x, y = j[col].to_numpy(), j[col + "_2"].to_numpy()
        assert np.corrcoef(x, y)[0, 1] > 0.999, col
        assert np.abs(x - y).max() <= 2e-2 * np.abs(x).max(), col
    ex1 = pl.read_parquet(one / "values_by_example.parquet").sort("id")
    ex2 = pl.read_parquet(two / "values_by_example.parquet").sort("id")
    assert ex1["id"].to_list() == ex2["id"].to_list()
