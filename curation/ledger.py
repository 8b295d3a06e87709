"""The score ledger: one row per (step, example), written as Parquet parts, one per checkpoint.

Layout: `RUN_DIR/ledger/part-<first_step:07d>.parquet`. A part holds the rows of the steps since the
previous flush; flushes happen right before each checkpoint, so after a crash every part either
belongs to a checkpointed interval or is removed by `truncate_after` on resume.

With `--momentum-window K` a second ledger, `RUN_DIR/ledger_momentum/`, holds the momentum-
propagated values (`value_<est>_prop`): a step's row is known only when its window closes K
steps later, so these rows carry `closed_at` (the step at which they were written) and are
truncated on resume by that column; `step` is the step the example was drawn in, as in the
ledger, and `steps_covered` the later steps whose carry-over is included (< K for the windows
flushed at the end of the run).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from .atomic import atomic_write_parquet
from .run_dir import LEDGER_DIR, LEDGER_PART_GLOB, MOMENTUM_DIR

PROP_SUFFIX = "_prop"
BASE_SCHEMA: dict[str, pl.DataType] = {
    "step": pl.Int64(),
    "epoch": pl.Int32(),
    "id": pl.String(),
    "source": pl.String(),
    "lr": pl.Float64(),
    "loss": pl.Float64(),
}


def value_column(estimator: str) -> str:
    """Ledger column name of an estimator (`adam-loo` -> `value_adam_loo`)."""
    return "value_" + estimator.replace("-", "_")


def ledger_schema(estimators: Sequence[str]) -> dict[str, pl.DataType]:
    """Column name -> dtype of a ledger with these estimators."""
    schema = dict(BASE_SCHEMA)
    schema.update({value_column(e): pl.Float64() for e in estimators})
    return schema


def prop_column(estimator: str) -> str:
    """Momentum-propagated value column of an estimator (`adam-loo` -> `value_adam_loo_prop`)."""
    return value_column(estimator) + PROP_SUFFIX


def momentum_schema(estimators: Sequence[str]) -> dict[str, pl.DataType]:
    """Column name -> dtype of a momentum ledger with these estimators."""
    schema: dict[str, pl.DataType] = {
        "closed_at": pl.Int64(),
        "step": pl.Int64(),
        "epoch": pl.Int32(),
        "id": pl.String(),
        "source": pl.String(),
        "steps_covered": pl.Int32(),
    }
    schema.update({prop_column(e): pl.Float64() for e in estimators})
    return schema


def _part_path(run_dir: Path, first_step: int, suffix: str = "", folder: str = LEDGER_DIR) -> Path:
    return run_dir / folder / f"part-{first_step:07d}{suffix}.parquet"


def _parts(run_dir: Path, folder: str = LEDGER_DIR) -> list[Path]:
    return sorted((Path(run_dir) / folder).glob(LEDGER_PART_GLOB))


def _part_first_step(path: Path) -> int:
    return int(path.stem.split("-")[1])  # part-<step>[-rank<r>]


class LedgerWriter:
    """Buffer ledger rows in memory and write them as one Parquet part per `flush()`."""

    def __init__(self, run_dir: str | Path, estimators: Sequence[str], suffix: str = "") -> None:
        self.run_dir = Path(run_dir)
        self.suffix = suffix  # "-rank<r>" when each torchrun rank writes its own parts
        self.estimators = tuple(estimators)
        self.schema = ledger_schema(self.estimators)
        self._chunks: list[dict[str, np.ndarray | list]] = []
        (self.run_dir / LEDGER_DIR).mkdir(parents=True, exist_ok=True)

    @property
    def n_buffered(self) -> int:
        """Number of rows waiting for the next flush."""
        return sum(len(c["id"]) for c in self._chunks)

    def add_step(
        self,
        step: int,
        epoch: int,
        ids: Sequence[str],
        sources: Sequence[str],
        lr: float,
        losses: Sequence[float] | np.ndarray,
        values: dict[str, Sequence[float] | np.ndarray],
    ) -> None:
        """Buffer the rows of one training step (one per example of the batch)."""
        n = len(ids)
        if len(sources) != n or len(losses) != n:
            raise ValueError("ids, sources and losses must have the same length")
        missing = [e for e in self.estimators if e not in values]
        if missing:
            raise ValueError(f"values missing for estimators {missing}")
        chunk: dict[str, np.ndarray | list] = {
            "step": np.full(n, step, dtype=np.int64),
            "epoch": np.full(n, epoch, dtype=np.int32),
            "id": list(ids),
            "source": list(sources),
            "lr": np.full(n, lr, dtype=np.float64),
            "loss": np.asarray(losses, dtype=np.float64).reshape(n),
        }
        for e in self.estimators:
            chunk[value_column(e)] = np.asarray(values[e], dtype=np.float64).reshape(n)
        self._chunks.append(chunk)

    def flush(self) -> Path | None:
        """Write the buffered rows as one part (named by its first step); None if nothing buffered."""
        if not self._chunks:
            return None
        cols = {
            name: (
                [x for c in self._chunks for x in c[name]]
                if name in ("id", "source")
                else np.concatenate([c[name] for c in self._chunks])
            )
            for name in self.schema
        }
        df = pl.DataFrame(cols, schema=self.schema)
        path = _part_path(self.run_dir, int(df["step"][0]), self.suffix)
        atomic_write_parquet(df, path)
        self._chunks.clear()
        return path

    def discard(self) -> None:
        """Drop buffered rows without writing them."""
        self._chunks.clear()


class MomentumLedgerWriter:
    """Buffer momentum-propagated rows and write them as one part of `ledger_momentum/` per flush.

    Parts are named by their first `closed_at` step, so `truncate_after(..., MOMENTUM_DIR,
    "closed_at")` drops exactly the rows written after a checkpoint.
    """

    def __init__(self, run_dir: str | Path, estimators: Sequence[str], suffix: str = "") -> None:
        self.run_dir = Path(run_dir)
        self.suffix = suffix
        self.estimators = tuple(estimators)
        self.schema = momentum_schema(self.estimators)
        self._frames: list[pl.DataFrame] = []
        (self.run_dir / MOMENTUM_DIR).mkdir(parents=True, exist_ok=True)

    def add_step(
        self,
        closed_at: int,
        step: int,
        epoch: int,
        ids: Sequence[str],
        sources: Sequence[str],
        steps_covered: int,
        values: dict[str, Sequence[float] | np.ndarray],
    ) -> None:
        """Buffer the propagated values of the examples drawn at `step` (window closed now)."""
        n = len(ids)
        cols: dict[str, object] = {
            "closed_at": [closed_at] * n,
            "step": [step] * n,
            "epoch": [epoch] * n,
            "id": list(ids),
            "source": list(sources),
            "steps_covered": [steps_covered] * n,
        }
        for e in self.estimators:
            cols[prop_column(e)] = np.asarray(values[e], dtype=np.float64).reshape(n)
        self._frames.append(pl.DataFrame(cols, schema=self.schema))

    def flush(self) -> Path | None:
        """Write the buffered rows as one part; None if nothing buffered."""
        if not self._frames:
            return None
        df = pl.concat(self._frames, how="vertical")
        path = _part_path(self.run_dir, int(df["closed_at"][0]), self.suffix, MOMENTUM_DIR)
        atomic_write_parquet(df, path)
        self._frames.clear()
        return path


def read_momentum_ledger(run_dir: str | Path) -> pl.DataFrame | None:
    """Every momentum-propagated row of a run, by drawn step; None when the run has none."""
    parts = _parts(Path(run_dir), MOMENTUM_DIR)
    if not parts:
        return None
    lf = pl.concat([pl.scan_parquet(p) for p in parts], how="vertical")
    return lf.sort("step", maintain_order=True).collect()


def scan_ledger(run_dir: str | Path) -> pl.LazyFrame:
    """All ledger parts of a run as one lazy frame (part order; nothing is read yet)."""
    parts = _parts(Path(run_dir))
    if not parts:
        raise FileNotFoundError(f"no ledger parts under {Path(run_dir) / LEDGER_DIR}")
    return pl.concat([pl.scan_parquet(p) for p in parts], how="vertical")


def read_ledger(run_dir: str | Path, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """Ledger rows of a run, ordered by step (then rank, then batch order); `columns`: only these.

    Only the asked-for columns are read from the Parquet parts (a 10^6-document, 3-epoch ledger
    needs a fraction of the memory when aggregation reads id, source and the values).
    """
    lf = scan_ledger(run_dir)
    if columns is not None:
        lf = lf.select(["step", *(c for c in columns if c != "step")])
    df = lf.sort("step", maintain_order=True).collect()  # stable: per-rank parts interleave
    return df if columns is None or "step" in columns else df.drop("step")


def truncate_after(
    run_dir: str | Path, step: int, folder: str = LEDGER_DIR, column: str = "step"
) -> int:
    """Remove every ledger row with `column` > `step` (parts deleted or rewritten); return rows removed.

    Parts are named by their first value of `column` (`step`; `closed_at` in the momentum ledger).
    """
    removed = 0
    for part in _parts(Path(run_dir), folder):
        if _part_first_step(part) > step:
            removed += pl.scan_parquet(part).select(pl.len()).collect().item()
            part.unlink()
            continue
        df = pl.read_parquet(part)
        keep = df.filter(pl.col(column) <= step)
        if keep.height < df.height:
            removed += df.height - keep.height
            atomic_write_parquet(keep, part)
    return removed
