"""`adamshap prune --estimator <est>_prop`: rank by a run's momentum-propagated values."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from flows import cli
from tests.curation.test_prune import _corpus, _fake_run


def _run_with_prop(tmp_path: Path) -> tuple[Path, Path, pl.DataFrame]:
    """A fake finished run whose `value_adam2_prop` ranks the documents opposite to `value_adam2`."""
    corpus, run = tmp_path / "c.jsonl", tmp_path / "run"
    _corpus(corpus)
    _fake_run(run, corpus)
    vals = pl.read_parquet(run / "values_by_example.parquet")
    vals = vals.with_columns((-pl.col("value_adam2")).alias("value_adam2_prop"))
    vals.write_parquet(run / "values_by_example.parquet")
    return corpus, run, vals


def _prune(corpus: Path, run: Path, out: Path, estimator: str) -> list[str]:
    argv = ["prune", str(corpus), "--scores", str(run), "--out", str(out), "--keep", "0.5"]
    argv += ["--clusters", "3", "--floor", "0", "--dedup-eps", "0", "--estimator", estimator]
    argv += ["--rank-by", "value", "--quality", "off"]  # the estimator's column alone decides
    return argv


@pytest.mark.integration
def test_prune_ranks_by_the_propagated_column(tmp_path, capsys):
    corpus, run, vals = _run_with_prop(tmp_path)
    kept = {}
    for est in ("adam2", "adam2_prop"):
        out = tmp_path / est
        assert cli.main(_prune(corpus, run, out, est)) == 0
        capsys.readouterr()
        assert json.loads((out / "prune.json").read_text())["summary"]["estimator"] == est
        target = set(pl.read_ndjson(out / "target.jsonl")["id"].to_list())
        kept[est] = set(pl.read_ndjson(out / "kept.jsonl")["id"].to_list()) - target
        excl = pl.read_ndjson(out / "excluded.jsonl")
        scored = excl.filter(pl.col("reason") == "low_value")
        # no floors, no dedup: every kept document outranks every low-value one in that column
        col = dict(zip(vals["id"].to_list(), vals[f"value_{est}"].to_list(), strict=True))
        assert min(col[i] for i in kept[est]) >= max(col[i] for i in scored["id"].to_list())
    # the propagated column is the opposite ranking here, so the kept sets share nothing
    assert kept["adam2"] and not kept["adam2"] & kept["adam2_prop"]


def test_prune_prop_without_momentum_window_is_one_line_exit_2(tmp_path, capsys):
    corpus, run = tmp_path / "c.jsonl", tmp_path / "run"
    _corpus(corpus)
    _fake_run(run, corpus)  # scored without --momentum-window: no value_<est>_prop columns
    capsys.readouterr()
    assert cli.main(_prune(corpus, run, tmp_path / "o", "adam2_prop")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("adamshap prune: error: "), err
    assert "value_adam2_prop" in err and "--momentum-window" in err
    assert "available: ['adam2']" in err
    assert not (tmp_path / "o" / "kept.jsonl").exists()


def test_prune_estimator_offers_the_propagated_spellings(capsys):
    assert cli.main(["prune", "c.jsonl", "--estimator", "adam3_prop"]) == 2
    assert "invalid choice" in capsys.readouterr().err
