"""The scoring loop's handlers: what happens after each optimizer step, one concern per class.

`run_steps` takes the steps of a run one at a time and hands each outcome (a `StepEnd`) to every
handler's `on_step_end`, in list order; a handler answers CONTINUE or STOP (the loop ends right
after a STOP). When the last step is done every handler's `on_run_end` runs; the caller closes
them (`close`) whatever happens. In the spirit of transformers' `TrainerCallback`, but the order
is fixed and matters (`curation.scoring_run` builds this list):

    NonFiniteGuard          NaN/inf loss or value: raise NonFiniteError before anything is written
    LedgerHandler           buffer the step's ledger rows
    MomentumLedgerHandler   buffer the rows of the momentum windows that closed at this step
    ProgressHandler         the progress bar
    SnapshotHandler         save the snapshots the checkpoint values are computed at (rank 0)
    Checkpointer            flush the ledgers, then checkpoint every N steps and at the end
    InterruptHandler        SIGINT/SIGTERM seen by any rank: checkpoint (if not just done), STOP

Under torchrun every rank runs the same handlers in the same order, so the collectives inside
them (the checkpoint barriers, the all-reduce of the stop flag) line up. Handlers know nothing
of file names or of the model: what to save is passed in as a callable.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .errors import AdamshapError, Interrupted

CONTINUE = "continue"
STOP = "stop"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class NonFiniteError(AdamshapError):
    """A loss or value became NaN/inf; the last good checkpoint is kept."""


@dataclass
class Propagated:
    """Momentum-propagated values of the examples drawn at step `drawn` (their window closed)."""

    drawn: int
    epoch: int
    ids: list[str]
    sources: list[str]
    steps_covered: int
    values: dict[str, torch.Tensor]


@dataclass
class StepEnd:
    """What one optimizer step produced: all a handler sees of it.

    A warm-start step has only `step` and `loss`; a scored one has the rest (`values` and
    `example_losses` as the scorer returned them, one entry per example of this rank's batch).
    """

    step: int  # the global step just taken (1-based)
    loss: float
    epoch: int | None = None  # None: a warm-start step
    target_loss: float = math.nan
    lr: float = math.nan
    ids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    example_losses: Any = None
    values: dict[str, Any] = field(default_factory=dict)
    propagated: list[Propagated] = field(default_factory=list)

    @property
    def scored(self) -> bool:
        """Whether the step was scored (past the warm start)."""
        return self.epoch is not None


class Handler:
    """One concern of the loop; every method does nothing unless overridden."""

    def on_step_end(self, end: StepEnd) -> str:
        """Called after every step; return CONTINUE or STOP."""
        return CONTINUE

    def on_run_end(self, total: int) -> None:
        """Called once after the last of `total` steps (not after a STOP)."""

    def close(self) -> None:
        """Release what the handler holds (called always, also on an error)."""


def run_steps(
    take_step: Callable[[int], StepEnd], start: int, total: int, handlers: Sequence[Handler]
) -> bool:
    """Take steps start+1 .. total, each followed by the handlers; False when one stopped it."""
    step = start
    while step < total:
        step += 1
        end = take_step(step)
        for h in handlers:
            if h.on_step_end(end) == STOP:
                return False
    for h in handlers:
        h.on_run_end(total)
    return True


# ----------------------------------------------------------------------------- NaN guard


def check_finite(step: int, what: str, x: float | torch.Tensor, last_ckpt: int) -> None:
    """Raise NonFiniteError when `x` (a float or a tensor) holds a NaN or an inf."""
    ok = math.isfinite(x) if isinstance(x, float) else bool(torch.isfinite(x).all())
    if not ok:
        where = f"step {last_ckpt}" if last_ckpt > 0 else "none yet"
        raise NonFiniteError(
            f"non-finite {what} at step {step}; stopped. Last good checkpoint: {where}. "
            "Try a lower --lr, a smaller --max-grad-norm, or more --warm-start-steps."
        )


class NonFiniteGuard(Handler):
    """Stop the run with NonFiniteError on a NaN/inf loss or value (first in the list)."""

    def __init__(self, estimators: Iterable[str], last_checkpoint: Callable[[], int]) -> None:
        self.estimators = tuple(estimators)
        self.last_checkpoint = last_checkpoint  # named in the error: where a resume starts

    def on_step_end(self, end: StepEnd) -> str:
        last, t = self.last_checkpoint(), end.step
        if not end.scored:
            check_finite(t, "warm-start loss", end.loss, last)
            return CONTINUE
        check_finite(t, "training loss", end.loss, last)
        check_finite(t, "target loss", end.target_loss, last)
        for e in self.estimators:
            check_finite(t, f"{e} value", end.values[e], last)
        for ps in end.propagated:
            for e in self.estimators:
                check_finite(t, f"{e} propagated value", ps.values[e], last)
        return CONTINUE


# ----------------------------------------------------------------------------- ledgers


class Flushable(Protocol):
    def flush(self) -> Any: ...


class LedgerHandler(Handler):
    """Buffer one ledger row per example of every scored step (the Checkpointer flushes)."""

    def __init__(self, writer: Any, estimators: Iterable[str]) -> None:
        self.writer = writer  # a curation.ledger.LedgerWriter
        self.estimators = tuple(estimators)

    def on_step_end(self, end: StepEnd) -> str:
        if end.scored:
            self.writer.add_step(
                end.step,
                end.epoch,
                end.ids,
                end.sources,
                end.lr,
                end.example_losses.detach().double().cpu().numpy(),
                {e: end.values[e].detach().double().cpu().numpy() for e in self.estimators},
            )
        return CONTINUE


class MomentumLedgerHandler(Handler):
    """Buffer the momentum-propagated rows of the windows that closed at this step."""

    def __init__(self, writer: Any, estimators: Iterable[str]) -> None:
        self.writer = writer  # a curation.ledger.MomentumLedgerWriter
        self.estimators = tuple(estimators)

    def on_step_end(self, end: StepEnd) -> str:
        for ps in end.propagated:
            for e in self.estimators:
                if len(ps.values[e]) != len(ps.ids):
                    raise RuntimeError(f"propagated values of step {ps.drawn} do not fit its batch")
            self.writer.add_step(
                end.step,
                ps.drawn,
                ps.epoch,
                ps.ids,
                ps.sources,
                ps.steps_covered,
                {e: ps.values[e].numpy() for e in self.estimators},
            )
        return CONTINUE


# ----------------------------------------------------------------------------- progress


class ProgressHandler(Handler):
    """A tqdm bar over the run's steps: the phase (or epoch) and the latest losses."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool, **tqdm_kw: Any) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total, initial=initial, desc=desc, unit="step", disable=not enabled, **tqdm_kw
        )

    def on_step_end(self, end: StepEnd) -> str:
        if end.scored:
            self.bar.set_postfix(
                epoch=end.epoch, loss=f"{end.loss:.3f}", target=f"{end.target_loss:.3f}"
            )
        else:
            self.bar.set_postfix(phase="warm", loss=f"{end.loss:.3f}")
        self.bar.update(1)
        return CONTINUE

    def close(self) -> None:
        self.bar.close()


# ----------------------------------------------------------------------------- snapshots, checkpoints


class SnapshotHandler(Handler):
    """Save a snapshot (`save(step)`) at each of the given steps, on the main rank only."""

    def __init__(self, steps: Iterable[int], save: Callable[[int], Any], main: bool = True) -> None:
        self.steps = set(steps)
        self.save = save
        self.main = main

    def on_step_end(self, end: StepEnd) -> str:
        if self.main and end.step in self.steps:
            self.save(end.step)
        return CONTINUE


class Checkpointer(Handler):
    """Checkpoint every `every` steps, at the last step, and (a run of 0 steps) at step 0.

    A checkpoint first flushes the ledger writers, so every row up to its step is on disk before
    it says so (on every rank: a barrier); then the main rank calls `save(step)`. `last` is the
    step of the latest checkpoint (where a resume would start).
    """

    def __init__(
        self,
        every: int,
        total: int,
        ranks: Any,
        writers: Sequence[Flushable],
        save: Callable[[int], Any],
        last: int = 0,
    ) -> None:
        self.every, self.total, self.ranks = every, total, ranks  # ranks: curation.ranks.Ranks
        self.writers = list(writers)
        self.save = save
        self.last = last

    def checkpoint(self, at: int) -> None:
        """Flush the ledgers and save the state of step `at` (rank 0; every rank waits)."""
        for w in self.writers:
            w.flush()
        self.ranks.barrier()  # every rank's rows up to `at` are on disk before the checkpoint
        self.last = at
        if self.ranks.main:
            self.save(at)
        self.ranks.barrier()

    def on_step_end(self, end: StepEnd) -> str:
        if end.step % self.every == 0 or end.step == self.total:
            self.checkpoint(end.step)
        return CONTINUE

    def on_run_end(self, total: int) -> None:
        if total == 0:  # nothing was trained: the (unchanged) start state is the checkpoint
            self.checkpoint(0)


# ----------------------------------------------------------------------------- interruption


class SignalFlag:
    """Turn SIGINT and SIGTERM into a flag checked between steps (main thread only).

    Schedulers and container runtimes stop jobs with SIGTERM: it checkpoints like Ctrl-C.
    A second signal stops at once (raises Interrupted).
    """

    def __init__(self) -> None:
        self.raised = False
        self.signum = int(signal.SIGINT)
        self._old: dict[int, Any] = {}

    def __enter__(self) -> SignalFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised:  # a second signal: stop now
            raise Interrupted(signum)
        self.raised = True
        self.signum = signum
        name = signal.Signals(signum).name
        print(f"\n{name}: finishing this step, then checkpointing ...", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class InterruptHandler(Handler):
    """After a stop signal on any rank: checkpoint this step (unless just done) and STOP.

    The caller then calls `raise_if_stopped`, which says how to resume and raises Interrupted
    (the CLI exits 128 + signum: 130 for SIGINT, 143 for SIGTERM). Last in the handler list.
    """

    def __init__(
        self, flag: Any, ranks: Any, checkpointer: Checkpointer, total: int, run_dir: Path
    ) -> None:
        self.flag = flag  # a SignalFlag, or anything with `raised` and `signum`
        self.ranks = ranks
        self.checkpointer = checkpointer
        self.total = total
        self.run_dir = run_dir
        self.stopped_at: int | None = None

    def on_step_end(self, end: StepEnd) -> str:
        if not self.ranks.any(self.flag.raised):  # a collective: every rank asks every step
            return CONTINUE
        if self.checkpointer.last != end.step:
            self.checkpointer.checkpoint(end.step)
        self.stopped_at = end.step
        return STOP

    def raise_if_stopped(self) -> None:
        """After the loop: raise Interrupted (with how to resume) if a signal stopped it."""
        if self.stopped_at is None:
            return
        print(
            f"interrupted at step {self.stopped_at}/{self.total}; checkpoint saved. Resume with "
            f"the same command (same --out {self.run_dir}).",
            file=sys.stderr,
        )
        raise Interrupted(self.flag.signum, "checkpoint saved")
