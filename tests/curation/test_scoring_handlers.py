"""The scoring loop's handlers, each on its own (no model, no scoring run)."""

from __future__ import annotations

import io
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from curation.errors import Interrupted
from curation.ledger import LedgerWriter, MomentumLedgerWriter, read_ledger, read_momentum_ledger
from curation.scoring_handlers import (
    CONTINUE,
    STOP,
    Checkpointer,
    Handler,
    InterruptHandler,
    LedgerHandler,
    MomentumLedgerHandler,
    NonFiniteError,
    NonFiniteGuard,
    ProgressHandler,
    Propagated,
    SignalFlag,
    SnapshotHandler,
    StepEnd,
    run_steps,
)

ESTS = ("adam", "sgd")


def _scored(step: int, n: int = 3, **kw) -> StepEnd:
    base = dict(
        step=step,
        loss=2.5,
        epoch=0,
        target_loss=3.0,
        lr=1e-3,
        ids=[f"d{i}" for i in range(n)],
        sources=["s"] * n,
        example_losses=torch.arange(n, dtype=torch.float32),
        values={e: torch.full((n,), 0.5 + j) for j, e in enumerate(ESTS)},
    )
    base.update(kw)
    return StepEnd(**base)


class FakeRanks:
    """A one-process Ranks that records its collectives; `others_stopped` fakes another rank."""

    def __init__(self, main: bool = True, others_stopped: bool = False) -> None:
        self.main, self.active, self.world = main, False, 1
        self.others_stopped = others_stopped
        self.calls: list[str] = []

    def barrier(self) -> None:
        self.calls.append("barrier")

    def any(self, flag: bool) -> bool:
        self.calls.append("any")
        return flag or self.others_stopped


class Recorder(Handler):
    def __init__(self, log: list, name: str, stop_at: int | None = None) -> None:
        self.log, self.name, self.stop_at = log, name, stop_at

    def on_step_end(self, end: StepEnd) -> str:
        self.log.append((self.name, end.step))
        return STOP if end.step == self.stop_at else CONTINUE

    def on_run_end(self, total: int) -> None:
        self.log.append((self.name, "end", total))


# ----------------------------------------------------------------------------- the loop


def test_run_steps_calls_handlers_in_order_then_run_end() -> None:
    log: list = []
    taken: list[int] = []

    def take(t: int) -> StepEnd:
        taken.append(t)
        return StepEnd(step=t, loss=1.0)

    assert run_steps(take, 2, 4, [Recorder(log, "a"), Recorder(log, "b")]) is True
    assert taken == [3, 4]  # a resumed run starts after its checkpoint
    assert log == [("a", 3), ("b", 3), ("a", 4), ("b", 4), ("a", "end", 4), ("b", "end", 4)]


def test_run_steps_stop_skips_later_handlers_and_run_end() -> None:
    log: list = []
    handlers = [Recorder(log, "a", stop_at=2), Recorder(log, "b")]
    assert run_steps(lambda t: StepEnd(step=t, loss=1.0), 0, 5, handlers) is False
    assert log == [("a", 1), ("b", 1), ("a", 2)]


def test_run_steps_with_nothing_to_do_still_ends_the_run() -> None:
    log: list = []
    assert run_steps(lambda t: pytest.fail("no step"), 0, 0, [Recorder(log, "a")]) is True
    assert log == [("a", "end", 0)]


# ----------------------------------------------------------------------------- NaN guard


def test_non_finite_guard_passes_finite_steps() -> None:
    guard = NonFiniteGuard(ESTS, lambda: 0)
    assert guard.on_step_end(StepEnd(step=1, loss=3.2)) == CONTINUE
    assert guard.on_step_end(_scored(5)) == CONTINUE


def test_non_finite_guard_names_what_where_and_the_last_checkpoint() -> None:
    last = {"step": 0}
    guard = NonFiniteGuard(ESTS, lambda: last["step"])
    with pytest.raises(NonFiniteError, match="warm-start loss at step 2.*checkpoint: none yet"):
        guard.on_step_end(StepEnd(step=2, loss=float("nan")))
    last["step"] = 6
    with pytest.raises(NonFiniteError, match="target loss at step 7.*checkpoint: step 6"):
        guard.on_step_end(_scored(7, target_loss=float("inf")))
    bad = {"adam": torch.ones(3), "sgd": torch.tensor([1.0, float("nan"), 0.0])}
    with pytest.raises(NonFiniteError, match="non-finite sgd value at step 7"):
        guard.on_step_end(_scored(7, values=bad))
    ps = Propagated(
        5, 0, ["a"], ["s"], 2, {"adam": torch.tensor([float("inf")]), "sgd": bad["adam"]}
    )
    with pytest.raises(NonFiniteError, match="adam propagated value at step 7"):
        guard.on_step_end(_scored(7, propagated=[ps]))


# ----------------------------------------------------------------------------- ledgers


def test_ledger_handler_buffers_scored_steps_only(tmp_path: Path) -> None:
    writer = LedgerWriter(tmp_path, ESTS)
    h = LedgerHandler(writer, ESTS)
    assert h.on_step_end(StepEnd(step=1, loss=2.0)) == CONTINUE  # warm start: no rows
    assert writer.n_buffered == 0
    h.on_step_end(_scored(2, epoch=1))
    assert writer.n_buffered == 3
    writer.flush()
    led = read_ledger(tmp_path)
    assert led["step"].to_list() == [2, 2, 2] and led["epoch"].to_list() == [1, 1, 1]
    assert led["id"].to_list() == ["d0", "d1", "d2"] and led["lr"].to_list() == [1e-3] * 3
    assert np.array_equal(led["loss"].to_numpy(), [0.0, 1.0, 2.0])
    assert led["value_sgd"].to_list() == [1.5] * 3


def test_momentum_ledger_handler_writes_closed_windows(tmp_path: Path) -> None:
    writer = MomentumLedgerWriter(tmp_path, ESTS)
    h = MomentumLedgerHandler(writer, ESTS)
    vals = {e: torch.tensor([1.0, 2.0], dtype=torch.float64) for e in ESTS}
    ps = Propagated(
        drawn=4, epoch=0, ids=["a", "b"], sources=["s", "t"], steps_covered=2, values=vals
    )
    assert h.on_step_end(_scored(6, propagated=[ps])) == CONTINUE
    assert h.on_step_end(_scored(7)) == CONTINUE  # no window closed: nothing
    writer.flush()
    rows = read_momentum_ledger(tmp_path)
    assert rows["closed_at"].to_list() == [6, 6] and rows["step"].to_list() == [4, 4]
    assert rows["id"].to_list() == ["a", "b"] and rows["steps_covered"].to_list() == [2, 2]
    assert rows["value_adam_prop"].to_list() == [1.0, 2.0]
    short = Propagated(4, 0, ["a", "b", "c"], ["s"] * 3, 2, vals)
    with pytest.raises(RuntimeError, match="step 4 do not fit its batch"):
        h.on_step_end(_scored(8, propagated=[short]))


# ----------------------------------------------------------------------------- progress


def test_progress_handler_counts_steps_and_shows_losses() -> None:
    out = io.StringIO()
    h = ProgressHandler(10, 3, "score", enabled=True, file=out, mininterval=0)
    assert h.on_step_end(StepEnd(step=4, loss=1.23456)) == CONTINUE
    assert h.bar.n == 4 and h.bar.postfix == "loss=1.235, phase=warm"
    h.on_step_end(_scored(5, epoch=2))
    assert h.bar.n == 5 and h.bar.postfix == "epoch=2, loss=2.500, target=3.000"
    h.close()
    assert "score" in out.getvalue() and "5/10" in out.getvalue()


def test_progress_handler_disabled_writes_nothing() -> None:
    out = io.StringIO()
    h = ProgressHandler(10, 0, "score", enabled=False, file=out)
    h.on_step_end(StepEnd(step=1, loss=1.0))
    h.close()
    assert out.getvalue() == ""


# ----------------------------------------------------------------------------- snapshots


def test_snapshot_handler_saves_at_its_steps_on_the_main_rank() -> None:
    saved: list[int] = []
    h = SnapshotHandler([2, 5], saved.append)
    for t in range(1, 7):
        assert h.on_step_end(StepEnd(step=t, loss=1.0)) == CONTINUE
    assert saved == [2, 5]
    other = SnapshotHandler([2], saved.append, main=False)
    other.on_step_end(StepEnd(step=2, loss=1.0))
    assert saved == [2, 5]


# ----------------------------------------------------------------------------- checkpoints


class Writer:
    def __init__(self, log: list, name: str) -> None:
        self.log, self.name = log, name

    def flush(self) -> None:
        self.log.append(f"flush {self.name}")


def test_checkpointer_every_n_and_at_the_end_after_flushing() -> None:
    log: list = []
    ranks = FakeRanks()
    ckpt = Checkpointer(
        3, 7, ranks, [Writer(log, "ledger"), Writer(log, "momentum")], lambda at: log.append(at)
    )
    for t in range(1, 8):
        assert ckpt.on_step_end(StepEnd(step=t, loss=1.0)) == CONTINUE
    assert [x for x in log if isinstance(x, int)] == [3, 6, 7]
    assert log[:3] == ["flush ledger", "flush momentum", 3]
    assert ckpt.last == 7 and ranks.calls == ["barrier"] * 6
    ckpt.on_run_end(7)  # the last step is already checkpointed
    assert ckpt.last == 7 and log[-1] == 7


def test_checkpointer_of_a_run_without_steps_saves_step_zero() -> None:
    saved: list[int] = []
    ckpt = Checkpointer(5, 0, FakeRanks(), [], saved.append, last=0)
    ckpt.on_run_end(0)
    assert saved == [0]


def test_checkpointer_off_the_main_rank_flushes_and_waits_but_does_not_save() -> None:
    log: list = []
    ranks = FakeRanks(main=False)
    ckpt = Checkpointer(2, 4, ranks, [Writer(log, "ledger")], lambda at: pytest.fail("saved"))
    ckpt.on_step_end(StepEnd(step=2, loss=1.0))
    assert log == ["flush ledger"] and ranks.calls == ["barrier", "barrier"] and ckpt.last == 2


# ----------------------------------------------------------------------------- interruption


class Flag:
    def __init__(self, raised: bool = False, signum: int = signal.SIGINT) -> None:
        self.raised, self.signum = raised, int(signum)


def _interrupt(flag: Flag, ranks: FakeRanks, last: int, saved: list) -> InterruptHandler:
    ckpt = Checkpointer(100, 50, ranks, [], saved.append, last=last)
    return InterruptHandler(flag, ranks, ckpt, 50, Path("/runs/x"))


def test_interrupt_handler_continues_without_a_signal() -> None:
    ranks, saved = FakeRanks(), []
    h = _interrupt(Flag(), ranks, 0, saved)
    assert h.on_step_end(StepEnd(step=4, loss=1.0)) == CONTINUE
    assert ranks.calls == ["any"] and saved == []  # every rank asks, every step
    h.raise_if_stopped()  # not stopped: nothing


def test_interrupt_handler_checkpoints_stops_and_raises(capsys) -> None:
    saved: list[int] = []
    h = _interrupt(Flag(True, signal.SIGTERM), FakeRanks(), 3, saved)
    assert h.on_step_end(StepEnd(step=4, loss=1.0)) == STOP
    assert saved == [4] and h.checkpointer.last == 4
    with pytest.raises(Interrupted) as exc:
        h.raise_if_stopped()
    assert exc.value.signum == signal.SIGTERM and exc.value.message == "checkpoint saved"
    err = capsys.readouterr().err
    assert "interrupted at step 4/50; checkpoint saved. Resume with the same command" in err
    assert "(same --out /runs/x)" in err


def test_interrupt_handler_does_not_checkpoint_twice_and_obeys_other_ranks() -> None:
    saved: list[int] = []
    # this step was just checkpointed; the signal came to another rank
    h = _interrupt(Flag(False), FakeRanks(others_stopped=True), 6, saved)
    assert h.on_step_end(StepEnd(step=6, loss=1.0)) == STOP
    assert saved == []
    with pytest.raises(Interrupted):
        h.raise_if_stopped()


def test_signal_flag_turns_sigterm_into_a_flag_and_a_second_into_interrupted(capsys) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with SignalFlag() as flag:
        assert not flag.raised
        signal.raise_signal(signal.SIGTERM)
        assert flag.raised and flag.signum == signal.SIGTERM
        assert "SIGTERM: finishing this step, then checkpointing" in capsys.readouterr().err
        with pytest.raises(Interrupted):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before
