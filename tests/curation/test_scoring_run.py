"""Scored training runs: arguments, determinism, kill-and-resume, instruction data, guards, report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from curation.errors import UsageError
from curation.ledger import read_ledger
from curation.scoring_run import (
    NonFiniteError,
    ScoreArgs,
    _run_record,
    epoch_order,
    run_scoring,
    target_batch_indices,
)
from tests.fixtures import fixture_docs

REPO = Path(__file__).resolve().parents[2]
PER_SOURCE = 6


def _docs() -> dict[str, list[dict]]:
    return fixture_docs(40)


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("data")
    by = _docs()
    train = [r for s in sorted(by) for r in by[s][:PER_SOURCE]]
    target = by["bible"][20:28]
    return {
        "corpus": _write(d / "corpus.jsonl", train),
        "target": _write(d / "target.jsonl", target),
    }


def _args(data: dict[str, str], out: Path, **kw) -> ScoreArgs:
    base = dict(
        corpus=data["corpus"],
        target=data["target"],
        out=str(out),
        seq_len=32,
        vocab_size=320,
        batch_size=8,
        target_batch_size=4,
        warm_start_steps=3,
        epochs=3,
        checkpoint_every=3,
        progress=False,
    )
    base.update(kw)
    return ScoreArgs(**base)


@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    return run_scoring(_args(data, out))


# ----------------------------------------------------------------------------- fast


def test_args_json_roundtrip(tmp_path) -> None:
    a = ScoreArgs(corpus="c", target="t", out="o", estimators=("adam2", "sgd"), betas=(0.8, 0.9))
    b = ScoreArgs.from_json(a.to_json())
    assert a == b and b.betas == (0.8, 0.9) and b.estimators == ("adam2", "sgd")
    with pytest.raises(UsageError):
        ScoreArgs.from_json(json.dumps({"corpus": "c", "target": "t", "out": "o", "nope": 1}))
    with pytest.raises(UsageError):
        ScoreArgs(corpus="c", target="t", out="o", estimators=("adam3",)).validate()
    with pytest.raises(UsageError, match="contraction must be one of"):
        ScoreArgs(corpus="c", target="t", out="o", contraction="ghost").validate()
    with pytest.raises(UsageError, match="preset must be one of tiny, cpu-small, gpt2"):
        ScoreArgs(corpus="c", target="t", out="o", preset="gpt3").validate()
    with pytest.raises(UsageError, match="rank: must be >= 1"):
        ScoreArgs(corpus="c", target="t", out="o", contraction="lowrank", rank=0).validate()
    with pytest.raises(UsageError, match="gram values sgd and adam only"):
        ScoreArgs(corpus="c", target="t", out="o", contraction="gram").validate()
    ScoreArgs(corpus="c", target="t", out="o", contraction="gram", estimators=("adam",)).validate()
    with pytest.raises(UsageError, match="target_chunk: must be >= 0"):
        ScoreArgs(corpus="c", target="t", out="o", target_chunk=-1).validate()


def test_orders_are_seeded_permutations() -> None:
    o = epoch_order(37, seed=3, epoch=1)
    assert sorted(o.tolist()) == list(range(37))
    assert np.array_equal(o, epoch_order(37, seed=3, epoch=1))
    assert not np.array_equal(o, epoch_order(37, seed=3, epoch=2))
    t = target_batch_indices(10, 4, seed=0, step=5)
    assert len(set(t.tolist())) == 4 and np.array_equal(t, target_batch_indices(10, 4, 0, 5))
    assert len(target_batch_indices(3, 8, 0, 1)) == 3


def test_other_run_in_run_dir_is_an_error(data, tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    rec = _run_record(_args(data, out, seed=1))
    (out / "run.json").write_text(json.dumps(rec))
    with pytest.raises(UsageError, match="different run.*seed"):
        run_scoring(_args(data, out, seed=2))


# ----------------------------------------------------------------------------- runs


@pytest.mark.integration
def test_run_outputs_and_rerun_is_noop(reference_run) -> None:
    run = reference_run
    for name in ("run.json", ".complete", "values_by_example.parquet", "values_by_source.parquet"):
        assert (run / name).exists(), name
    assert (run / "final_model" / "config.json").exists()
    assert (run / "tokenizer" / "tokenizer.json").exists()
    rec = json.loads((run / "run.json").read_text())
    assert set(rec["versions"]) >= {"python", "torch", "transformers", "adamshap"}
    assert len(rec["corpus_sha256"]) == 64
    led = read_ledger(run)
    n = 6 * PER_SOURCE
    assert led.height == 3 * n  # every example scored once per epoch, last partial batch included
    assert led.group_by("epoch").agg(pl.col("id").n_unique())["id"].to_list() == [n] * 3
    assert led["step"].min() == 4 and led["step"].max() == 3 + 3 * 5
    for c in ("value_adam2", "value_adam_loo", "value_adam", "value_sgd", "loss", "lr"):
        assert led[c].is_finite().all(), c
    assert (led["value_adam2"] != 0).any()
    parts = sorted(p.name for p in (run / "ledger").iterdir())
    before = [(p, (run / "ledger" / p).stat().st_mtime_ns) for p in parts]
    run_scoring(ScoreArgs.from_json((run / "run.json").read_text()))
    assert before == [(p, (run / "ledger" / p).stat().st_mtime_ns) for p in parts]


@pytest.mark.integration
def test_same_seed_same_values(data, reference_run, tmp_path) -> None:
    again = run_scoring(_args(data, tmp_path / "again"))
    a, b = read_ledger(reference_run), read_ledger(again)
    assert a.equals(b)


def _spawn(args_file: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.Popen(
        [sys.executable, "-m", "curation.scoring_run", "--args-json", str(args_file)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path_glob: tuple[Path, str], proc: subprocess.Popen, timeout: float = 300) -> bool:
    folder, pattern = path_glob
    t0 = time.time()
    while time.time() - t0 < timeout:
        if folder.exists() and list(folder.glob(pattern)):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


@pytest.mark.integration
def test_sigint_then_sigkill_then_resume_equals_uninterrupted(
    data, reference_run, tmp_path
) -> None:
    out = tmp_path / "run"
    args_file = tmp_path / "args.json"
    args_file.write_text(_args(data, out).to_json())
    ckpts = out / "checkpoints"

    # 1. SIGINT after the warm-start checkpoint: clean stop, checkpoint, exit 130.
    p = _spawn(args_file)
    assert _wait_for((ckpts, "step-0000003.pt"), p), p.communicate()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130, err
    assert "resume" in err.lower() and not (out / ".complete").exists()

    # 2. SIGKILL during scored training, after a scored-phase checkpoint (scorer state saved).
    p = _spawn(args_file)
    assert _wait_for((ckpts, "step-0000006.pt"), p), p.communicate()
    p.kill()
    p.communicate(timeout=60)
    assert not (out / ".complete").exists()

    # 3. Same command again, to the end.
    p = _spawn(args_file)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert (out / ".complete").exists()
    a, b = read_ledger(reference_run), read_ledger(out)
    assert a.select("step", "epoch", "id", "source").equals(
        b.select("step", "epoch", "id", "source")
    )
    # The reference run is computed in the pytest process, the resumed one in a fresh process;
    # in the full suite their float32 contractions differ by up to ~5e-6 of a column's scale
    # (never in isolation: summation order, not state). So: bit-exact rows and lr, numbers to
    # 1e-5 of the column's scale. A lost or stale scorer state (the cached target gradient)
    # changes values by O(1) of that scale, far outside this.
    assert a["lr"].equals(b["lr"])
    for c in a.columns:
        if c.startswith("value_") or c == "loss":
            x, y = b[c].to_numpy(), a[c].to_numpy()
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * np.abs(y).max(), err_msg=c)


@pytest.mark.integration
def test_instruction_data_counts_response_tokens_only(tmp_path) -> None:
    by = _docs()
    rows = []
    for src in ("wordnet", "devil"):
        for r in by[src][:12]:
            head, _, rest = r["text"].partition(":" if src == "wordnet" else ",")
            if rest.strip():
                rows.append(
                    {
                        "id": r["id"],
                        "source": src,
                        "prompt": f"define {head.strip()[:40]}",
                        "response": rest.strip(),
                    }
                )
    train, target = rows[:-6], rows[-6:]
    data = {
        "corpus": _write(tmp_path / "c.jsonl", train),
        "target": _write(tmp_path / "t.jsonl", target),
    }
    run = run_scoring(_args(data, tmp_path / "run", epochs=1, estimators=("adam2", "sgd")))
    ex = pl.read_parquet(run / "examples.parquet")
    from curation.corpus import read_corpus
    from curation.encode import encode_corpus
    from curation.tokenizer import load_tokenizer

    enc = encode_corpus(read_corpus(data["corpus"]).df, load_tokenizer(run / "tokenizer"), 32)
    real = enc.attention_mask.sum(axis=1)
    assert (ex["n_tokens"].to_numpy() < real - 1).all()  # prompt tokens do not count
    led = read_ledger(run)
    assert set(led["id"]) == {r["id"] for r in train}
    assert led["value_adam2"].is_finite().all() and (led["value_adam2"] != 0).any()
    assert "value_adam" not in led.columns


@pytest.mark.integration
def test_non_finite_value_stops_and_keeps_checkpoint(data, tmp_path, monkeypatch) -> None:
    import curation.scoring_run as sr

    real = sr._make_scorer

    def poisoned(*a, **kw):
        scorer = real(*a, **kw)
        step = scorer.step
        calls = {"n": 0}

        def bad_step(batch):
            out = step(batch)
            calls["n"] += 1
            if calls["n"] == 4:  # global step 7
                out.values["adam"] = out.values["adam"].clone().fill_(float("nan"))
            return out

        scorer.step = bad_step
        return scorer

    monkeypatch.setattr(sr, "_make_scorer", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match="step 7.*checkpoint: step 6"):
        run_scoring(_args(data, out))
    assert (out / "checkpoints" / "step-0000006.pt").exists()
    assert not (out / ".complete").exists()
    ck = torch.load(out / "checkpoints" / "step-0000006.pt", weights_only=True)
    assert ck["step"] == 6 and "scorer" in ck


@pytest.mark.integration
def test_report_files(reference_run) -> None:
    from curation.report import write_report

    md, html = write_report(reference_run)
    text = html.read_text()
    assert text.count("data:image/png;base64,") == 4
    assert "Top 10 examples" in text and "bible" in text
    assert "report_plots/" in md.read_text()
    assert all(
        (reference_run / "report_plots" / f).exists()
        for f in ("value_by_source.png", "cumulative_value.png")
    )


def test_bad_corpus_fails_before_any_work(data, tmp_path) -> None:
    from curation.errors import CorpusError

    bad = tmp_path / "bad.jsonl"
    bad.write_text(Path(data["corpus"]).read_text() + '{"id": "x", "source": "s"}\n')
    out = tmp_path / "run"
    with pytest.raises(CorpusError, match="text"):
        run_scoring(_args(data, out, corpus=str(bad)))
    assert not (out / "run.json").exists() and not (out / "checkpoints").exists()
    # fixing the input then works in the same folder (no stale run.json blocks it)
    assert not (out / "tokenizer").exists()


@pytest.mark.integration
def test_gram_contraction_run_matches_exact(data, tmp_path) -> None:
    """A whole scoring run with `--contraction gram`: sgd equals exact (its P is constant),
    adam follows exact closely (rank-1 P), on the same trajectory and target batches."""
    kw = dict(estimators=("adam", "sgd"), epochs=1)
    exact = read_ledger(run_scoring(_args(data, tmp_path / "exact", **kw)))
    gram = read_ledger(run_scoring(_args(data, tmp_path / "gram", contraction="gram", **kw)))
    assert exact.select("step", "id", "loss").equals(gram.select("step", "id", "loss"))
    x, y = gram["value_sgd"].to_numpy(), exact["value_sgd"].to_numpy()
    np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4 * np.abs(y).max())
    x, y = gram["value_adam"].to_numpy(), exact["value_adam"].to_numpy()
    r = np.corrcoef(x, y)[0, 1]
    assert r > 0.99, r


# ----------------------------------------------------------------------------- momentum window

MOMENTUM = dict(momentum_window=3, epochs=2, estimators=("adam2", "adam-loo", "adam", "sgd"))


@pytest.fixture(scope="module")
def momentum_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("momentum") / "run"
    return run_scoring(_args(data, out, **MOMENTUM))


def _momentum_rows(run: Path) -> pl.DataFrame:
    from curation.ledger import read_momentum_ledger

    return read_momentum_ledger(run).sort("step", "id")


@pytest.mark.integration
def test_momentum_run_writes_propagated_values(momentum_run) -> None:
    """Every scored row gets one propagated row; the last K steps are flushed short and said so."""
    K, run = MOMENTUM["momentum_window"], momentum_run
    led, mom = read_ledger(run).sort("step", "id"), _momentum_rows(run)
    assert led.select("step", "epoch", "id", "source").equals(
        mom.select("step", "epoch", "id", "source")
    )
    last = int(led["step"].max())  # 3 warm + 2 epochs x 5 steps
    want = np.minimum(K, last - mom["step"].to_numpy())
    assert np.array_equal(mom["steps_covered"].to_numpy(), want)
    assert (mom["closed_at"] == (mom["step"] + K).clip(upper_bound=last)).all()
    for e in ("adam2", "adam_loo", "adam", "sgd"):
        own, prop = led[f"value_{e}"].to_numpy(), mom[f"value_{e}_prop"].to_numpy()
        assert np.isfinite(prop).all()
        # a window that saw no later step adds nothing; the others carry something
        flat = mom["steps_covered"].to_numpy() == 0
        np.testing.assert_array_equal(prop[flat], own[flat])
        assert (np.abs(prop - own)[~flat] > 0).mean() > 0.9, e
    by_ex = pl.read_parquet(run / "values_by_example.parquet")
    sums = mom.group_by("id").agg(pl.col("value_adam_prop").sum()).sort("id")
    np.testing.assert_allclose(
        by_ex.sort("id")["value_adam_prop"].to_numpy(), sums["value_adam_prop"].to_numpy()
    )
    assert {"value_adam_prop", "mean_adam_prop", "value_adam"} <= set(by_ex.columns)
    by_src = pl.read_parquet(run / "values_by_source.parquet")
    assert {"total_adam2_prop", "share_adam2_prop"} <= set(by_src.columns)
    rec = json.loads((run / "run.json").read_text())
    assert rec["args"]["momentum_window"] == K
    flushed = rec["momentum"]["flushed_at_end"]
    assert [f["step"] for f in flushed] == list(range(last - K + 1, last + 1))
    assert [f["steps_covered"] for f in flushed] == [K - 1 - j for j in range(K)]

    from curation.report import write_report

    md, _ = write_report(run)
    assert f"flushed at the end of the run with {K - 1}–0 later steps instead of {K}" in (
        md.read_text()
    )


@pytest.mark.integration
def test_momentum_run_interrupted_and_resumed_equals_uninterrupted(
    data, momentum_run, tmp_path, monkeypatch
) -> None:
    """Stop (as on Ctrl-C) after step 11, with windows of steps 9-11 open, then lose that
    checkpoint so the run resumes from step 9 (windows 7-9 open, rows closed at 10-11 on disk
    to drop): the propagated values equal the uninterrupted run's."""
    import curation.scoring_run as sr
    from curation.errors import Interrupted
    from curation.ledger import read_momentum_ledger

    flags: list = []

    class StopFlag(sr._SigintFlag):
        def __enter__(self):
            flags.append(self)
            return super().__enter__()

    real = sr._make_scorer

    def stopping(*a, **kw):
        scorer = real(*a, **kw)
        step = scorer.step

        def step_then_stop(batch):
            out = step(batch)
            if scorer._steps_done == 8:  # global step 3 + 8 = 11
                flags[-1].raised = True
            return out

        scorer.step = step_then_stop
        return scorer

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(sr, "_SigintFlag", StopFlag)
        m.setattr(sr, "_make_scorer", stopping)
        with pytest.raises(Interrupted):
            run_scoring(_args(data, out, **MOMENTUM))
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000009.pt", "step-0000011.pt"]
    ck = torch.load(ckpts / "step-0000011.pt", weights_only=True)
    assert [w["step"] for w in ck["scorer"]["momentum"]] == [5, 6, 7]  # scored steps 9-11
    assert int(read_momentum_ledger(out)["closed_at"].max()) == 11
    (ckpts / "step-0000011.pt").write_bytes(b"damaged")  # resume falls back to step 9

    run_scoring(_args(data, out, **MOMENTUM))
    assert (out / ".complete").exists()
    a, b = _momentum_rows(momentum_run), _momentum_rows(out)
    cols = ["closed_at", "step", "epoch", "id", "source", "steps_covered"]
    assert a.select(cols).equals(b.select(cols))
    for c in [c for c in a.columns if c.endswith("_prop")]:
        x, y = b[c].to_numpy(), a[c].to_numpy()
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6 * np.abs(y).max(), err_msg=c)
    ex_a = pl.read_parquet(momentum_run / "values_by_example.parquet")
    ex_b = pl.read_parquet(out / "values_by_example.parquet")
    assert ex_a.columns == ex_b.columns and ex_a["id"].equals(ex_b["id"])
    for c in [c for c in ex_a.columns if c.endswith("_prop")]:
        x, y = ex_b[c].to_numpy(), ex_a[c].to_numpy()
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6 * np.abs(y).max(), err_msg=c)
    ra = json.loads((momentum_run / "run.json").read_text())["momentum"]
    assert json.loads((out / "run.json").read_text())["momentum"] == ra
