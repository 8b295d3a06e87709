"""LedgerWriter parts, read-back, dtypes and truncation."""

from __future__ import annotations

import numpy as np
import polars as pl

from curation.ledger import LedgerWriter, read_ledger, truncate_after, value_column

ESTS = ("adam2", "adam-loo", "sgd")


def _write_steps(w: LedgerWriter, steps: range, n: int = 3) -> None:
    for s in steps:
        ids = [f"d{s}-{i}" for i in range(n)]
        vals = {e: np.arange(n, dtype=float) * (k + 1) + s for k, e in enumerate(ESTS)}
        w.add_step(s, 0, ids, ["a"] * n, 1e-3, np.full(n, 2.0), vals)


def test_value_column_names() -> None:
    assert value_column("adam-loo") == "value_adam_loo"
    assert value_column("sgd") == "value_sgd"


def test_parts_and_schema(tmp_path) -> None:
    w = LedgerWriter(tmp_path, ESTS)
    _write_steps(w, range(1, 4))
    p1 = w.flush()
    _write_steps(w, range(4, 6))
    p2 = w.flush()
    assert w.flush() is None
    assert p1.name == "part-0000001.parquet" and p2.name == "part-0000004.parquet"
    df = read_ledger(tmp_path)
    assert df.height == 15
    assert df.schema["step"] == pl.Int64 and df.schema["epoch"] == pl.Int32
    assert df.schema["value_adam_loo"] == pl.Float64
    assert df["step"].to_list() == sorted(df["step"].to_list())
    assert not list((tmp_path / "ledger").glob(".*tmp*"))


def test_truncate_after(tmp_path) -> None:
    w = LedgerWriter(tmp_path, ESTS)
    _write_steps(w, range(1, 4))
    w.flush()
    _write_steps(w, range(4, 8))
    w.flush()
    removed = truncate_after(tmp_path, 5)
    assert removed == 6
    df = read_ledger(tmp_path)
    assert df["step"].max() == 5 and df.height == 15
    truncate_after(tmp_path, 3)
    assert sorted((tmp_path / "ledger").glob("*.parquet"))[-1].name == "part-0000001.parquet"
    assert read_ledger(tmp_path)["step"].max() == 3


def test_momentum_ledger_truncates_by_closed_at(tmp_path) -> None:
    """Propagated rows are written when their window closes: a resume drops them by `closed_at`
    (the step they were written at), not by the step their examples were drawn in."""
    from curation.ledger import (
        MOMENTUM_DIR,
        MomentumLedgerWriter,
        prop_column,
        read_momentum_ledger,
    )

    assert read_momentum_ledger(tmp_path) is None
    w = MomentumLedgerWriter(tmp_path, ["adam", "adam-loo"])
    for closed in range(4, 10):
        drawn = closed - 3
        vals = {e: np.arange(2.0) + drawn for e in ("adam", "adam-loo")}
        w.add_step(closed, drawn, 0, [f"a{drawn}", f"b{drawn}"], ["s", "s"], 3, vals)
        if closed in (5, 7, 9):
            w.flush()
    df = read_momentum_ledger(tmp_path)
    assert df.height == 12 and prop_column("adam-loo") == "value_adam_loo_prop"
    assert df["step"].to_list() == sorted(df["step"].to_list())
    assert truncate_after(tmp_path, 6, MOMENTUM_DIR, "closed_at") == 6
    df = read_momentum_ledger(tmp_path)
    assert df["closed_at"].max() == 6 and df["step"].max() == 3
    assert df["value_adam_loo_prop"].to_list() == [1.0, 2.0, 2.0, 3.0, 3.0, 4.0]
    assert sorted(set(df["id"].to_list())) == ["a1", "a2", "a3", "b1", "b2", "b3"]
