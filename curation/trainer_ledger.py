"""Write an `InRunTrainer` run's values as the same run folder `adamshap score` writes.

`TrainerLedger(run_dir, estimators)` is the `on_step_values` callback: it buffers each step's
rows in a `LedgerWriter` (one Parquet part per `flush_every` steps) and, on `close()`, writes
`examples.parquet`, the per-example and per-source values and `trainer.json`, so that
`adamshap report RUN_DIR` reads it like a scoring run's folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from adamshap_core.estimators import DEFAULT_ORDER

from .aggregate import aggregate_run
from .atomic import atomic_write_parquet, atomic_write_text
from .ledger import LedgerWriter
from .run_dir import RunDir

TRAINER_RECORD = "trainer.json"


class TrainerLedger:
    """Callback for `InRunTrainer(on_step_values=...)` writing a run folder (ledger + values)."""

    def __init__(
        self,
        run_dir: str | Path,
        estimators: Iterable[str] = DEFAULT_ORDER,
        flush_every: int = 50,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.estimators = tuple(estimators)
        self.flush_every = int(flush_every)
        self.writer = LedgerWriter(self.run_dir, self.estimators)
        self._examples: dict[str, tuple[str, int]] = {}
        self._steps = 0

    def __call__(self, rec: Any) -> None:
        """Buffer one step's rows (a `StepValues`); flush every `flush_every` steps."""
        self.writer.add_step(
            rec.step,
            rec.epoch,
            rec.ids,
            rec.sources,
            float(rec.lr),
            np.asarray(rec.losses.double().numpy()),
            {e: rec.values[e].double().numpy() for e in self.estimators},
        )
        for i, s, t in zip(rec.ids, rec.sources, rec.n_tokens.tolist()):
            self._examples.setdefault(i, (s, int(t)))
        self._steps += 1
        if self._steps % self.flush_every == 0:
            self.writer.flush()

    def close(self, meta: dict[str, Any] | None = None) -> Path:
        """Flush, write examples.parquet, the value tables and trainer.json; return the folder."""
        self.writer.flush()
        ids = sorted(self._examples)
        examples = pl.DataFrame(
            {
                "id": ids,
                "source": [self._examples[i][0] for i in ids],
                "n_tokens": np.asarray([self._examples[i][1] for i in ids], dtype=np.int64),
                "truncated": np.zeros(len(ids), dtype=bool),
            }
        )
        atomic_write_parquet(examples, RunDir(self.run_dir).examples)
        if self._steps:
            aggregate_run(self.run_dir)
        record = {"steps": self._steps, "estimators": list(self.estimators), **(meta or {})}
        atomic_write_text(
            self.run_dir / TRAINER_RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n"
        )
        return self.run_dir
