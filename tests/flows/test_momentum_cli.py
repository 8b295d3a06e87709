"""`adamshap score --momentum-window K` through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from curation.ledger import read_ledger, read_momentum_ledger
from flows import cli
from tests.flows.conftest import write_tiny_docs

TINY = ["--preset", "tiny", "--seq-len", "32", "--vocab-size", "300", "--batch-size", "8"]
TINY += ["--target-batch-size", "4", "--warm-start-steps", "1", "--estimators", "adam2,adam"]
TINY += ["--snapshots", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("momentum_cli")
    docs = write_tiny_docs(d / "docs.jsonl", per_source=4)  # 24 real docs: 3 scored steps
    rows = [json.loads(x) for x in docs.read_text().splitlines()]
    (d / "target.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[-4:]))
    return {"corpus": str(docs), "target": str(d / "target.jsonl")}


def _score(data: dict[str, str], out: Path, *extra: str) -> list[str]:
    return ["score", data["corpus"], "--target", data["target"], "--out", str(out), *TINY, *extra]


@pytest.mark.integration
def test_score_momentum_window_writes_propagated_columns(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_score(data, out, "--momentum-window", "3")) == 0
    capsys.readouterr()
    led, mom = read_ledger(out), read_momentum_ledger(out)
    assert mom is not None and mom.height == led.height
    assert {"value_adam2_prop", "value_adam_prop", "steps_covered"} <= set(mom.columns)
    # 3 scored steps and K = 3: every window is cut short by the end of the run
    assert sorted(set(mom["steps_covered"].to_list())) == [0, 1, 2]
    by_ex = pl.read_parquet(out / "values_by_example.parquet")
    for e in ("adam2", "adam"):
        assert {f"value_{e}", f"value_{e}_prop", f"mean_{e}_prop"} <= set(by_ex.columns)
        assert by_ex[f"value_{e}_prop"].is_finite().all()
        assert (by_ex[f"value_{e}_prop"] != by_ex[f"value_{e}"]).any()
    rec = json.loads((out / "run.json").read_text())
    assert rec["args"]["momentum_window"] == 3
    assert [f["steps_covered"] for f in rec["momentum"]["flushed_at_end"]] == [2, 1, 0]


@pytest.mark.integration
def test_score_without_momentum_window_has_no_propagated_columns(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_score(data, out)) == 0
    capsys.readouterr()
    assert read_momentum_ledger(out) is None
    by_ex = pl.read_parquet(out / "values_by_example.parquet")
    assert not [c for c in by_ex.columns if c.endswith("_prop")]
    assert "momentum" not in json.loads((out / "run.json").read_text())


@pytest.mark.parametrize("bad", ["-1", "-7"])
def test_negative_momentum_window_is_one_line_exit_2(data, tmp_path, capsys, bad):
    out = tmp_path / "run"
    assert cli.main(_score(data, out, "--momentum-window", bad)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("adamshap score: error: "), err
    assert "--momentum-window" in err and f"got {bad}" in err
    assert not (out / "run.json").exists()


def test_momentum_window_reaches_score_args(monkeypatch, tmp_path):
    import curation.scoring_run as scoring_run

    seen = {}
    monkeypatch.setattr(scoring_run, "run_scoring", lambda a: seen.setdefault("a", a) and a.out)
    for name in ("c.jsonl", "t.jsonl"):
        (tmp_path / name).write_text("")
    argv = ["score", str(tmp_path / "c.jsonl"), "--target", str(tmp_path / "t.jsonl")]
    assert cli.main([*argv, "--out", str(tmp_path / "r"), "--momentum-window", "10"]) == 0
    assert seen["a"].momentum_window == 10
    assert scoring_run.ScoreArgs(corpus="c", target="t", out="o").momentum_window == 0
