"""TrainerLedger: InRunTrainer step values written as a scoring run's ledger and value tables."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from adamshap_core.hf_trainer import StepValues
from curation.ledger import ledger_schema, read_ledger
from curation.report import write_report
from curation.trainer_ledger import TrainerLedger

EST = ("adam2", "sgd")


def _records(n_steps: int = 5, n: int = 3) -> list[StepValues]:
    g = torch.Generator().manual_seed(0)
    out = []
    for t in range(1, n_steps + 1):
        ids = [f"ex-{(t * n + k) % 7}" for k in range(n)]
        out.append(
            StepValues(
                step=t,
                epoch=(t - 1) // 3,
                ids=ids,
                sources=["even" if int(i[-1]) % 2 == 0 else "odd" for i in ids],
                lr=1e-3,
                losses=torch.rand(n, generator=g),
                values={e: torch.randn(n, generator=g, dtype=torch.float64) for e in EST},
                n_tokens=torch.randint(1, 9, (n,), generator=g),
                loss=1.0,
                grad_norm=None,
                token_denominator=None,
            )
        )
    return out


def test_ledger_and_value_tables_match_the_records(tmp_path):
    recs = _records()
    sink = TrainerLedger(tmp_path / "run", EST, flush_every=2)
    for r in recs:
        sink(r)
    run = sink.close({"model": "tiny"})
    ledger = read_ledger(run)
    assert dict(ledger.schema) == ledger_schema(EST)
    assert ledger.height == sum(len(r.ids) for r in recs)
    by_ex = pl.read_parquet(run / "values_by_example.parquet")
    # Independent sum of the records per example.
    want: dict[str, float] = {}
    for r in recs:
        for i, v in zip(r.ids, r.values["adam2"].tolist()):
            want[i] = want.get(i, 0.0) + v
    got = dict(zip(by_ex["id"].to_list(), by_ex["value_adam2"].to_list()))
    assert set(got) == set(want)
    for i in want:
        assert got[i] == pytest.approx(want[i], rel=1e-12, abs=1e-15)
    by_src = pl.read_parquet(run / "values_by_source.parquet")
    assert set(by_src["source"].to_list()) == {"even", "odd"}
    md, html = write_report(run)
    text = md.read_text()
    assert "Per source" in text and "bootstrap CI" in text and html.exists()
    assert "verdict" in text
