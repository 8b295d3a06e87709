"""Checkpoint values: snapshot schedule, the robust cosine score, and a real scoring run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from adamshap_core.gram import rank1_factors
from adamshap_core.sketch import GradientSketch, adam_sqrt_preconditioner
from curation.checkpoint_values import score_from_sketches, snapshot_steps
from tests.fixtures import fixture_docs


def test_snapshot_steps_spread_over_the_run_and_end_at_its_end() -> None:
    assert snapshot_steps(30, 60, 3) == [30, 60, 90]
    assert snapshot_steps(0, 10, 4) == [2, 5, 8, 10]
    assert snapshot_steps(5, 0, 2) in ([2, 5], [3, 5])
    assert snapshot_steps(30, 60, 0) == [] and snapshot_steps(0, 0, 3) == []
    assert snapshot_steps(0, 2, 5) == [1, 2]  # never more snapshots than steps


def test_trimmed_cosine_keeps_a_target_minority_from_vouching_for_its_kind() -> None:
    rng = np.random.default_rng(0)
    d = 32
    u, w = np.eye(d)[0], np.eye(d)[1]
    noise = lambda n: 0.08 * rng.normal(size=(n, d))  # noqa: E731
    target = np.vstack([u + noise(12), w + noise(4)])  # 25% of the target is odd
    train = np.vstack([u + noise(20), w + noise(20)])
    s = score_from_sketches(torch.tensor(train), torch.tensor(target), n_common=0, trim=0.25)
    assert s[:20].min() > 0.5 > 0.2 > s[20:].max()  # the odd quarter is trimmed away
    plain = score_from_sketches(torch.tensor(train), torch.tensor(target), n_common=0, trim=0.0)
    assert plain[20:].mean() > 1.5 * s[20:].mean()  # the plain mean lets it vouch for its kind


def test_common_direction_is_removed_before_the_cosine() -> None:
    rng = np.random.default_rng(1)
    d = 24
    common = np.eye(d)[0]
    eye = np.eye(d)
    noise = lambda n: 0.05 * rng.normal(size=(n, d))  # noqa: E731
    target = 3 * common + eye[2] + noise(10)
    # every document shares the common direction; "loud" ones have much of it and nothing of
    # the target's own direction, "quiet" ones little of it and the target's own direction
    loud = 6 * common + eye[3] + noise(10)
    quiet = 1 * common + eye[2] + noise(10)
    others = 3 * common + eye[rng.integers(4, d, size=20)] + noise(20)
    train = torch.tensor(np.vstack([loud, quiet, others]))
    plain = score_from_sketches(train, torch.tensor(target), n_common=0, trim=0.0)
    fixed = score_from_sketches(train, torch.tensor(target), n_common=1, trim=0.0)
    assert plain[:10].mean() > plain[10:20].mean()  # the shared direction dominates the raw cosine
    assert fixed[10:20].min() > fixed[:10].max() and fixed[10:20].min() > fixed[20:].max()


def test_score_tracks_exact_preconditioned_cosines_from_per_example_gradients() -> None:
    """Oracle: torch.func per-example gradients, rank-1 P, exact cosine; sketches with large k."""
    from oracle import per_example_grads  # tests/adamshap_core/oracle.py (on sys.path)

    from adamshap_core.training import plain_step
    from tests.adamshap_core.conftest import TinyLM, make_batch

    torch.manual_seed(0)
    model = TinyLM(d=8).double()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    for s in range(3):
        plain_step(model, opt, make_batch(4, 10, seed=20 + s), 1.0)
    sqrt_p = adam_sqrt_preconditioner(opt)
    train_b, target_b = make_batch(12, 10, seed=1), make_batch(6, 10, seed=2)

    def exact(batch):
        n = batch["input_ids"].shape[0]
        pe = per_example_grads(model, batch)
        cols = []
        for name, p in model.named_parameters():
            sp = sqrt_p[id(p)]
            if p.dim() == 2:
                r, c = rank1_factors(sp**2)
                sp = (r[:, None] * c[None, :]).sqrt()
            cols.append((pe[name] * n * sp).flatten(1))
        return torch.cat(cols, 1)

    want = score_from_sketches(exact(train_b), exact(target_b), n_common=0, trim=0.0)
    with GradientSketch(model, k=64, seed=0, dtype=torch.float64) as sk:
        got = score_from_sketches(
            sk.sketch(train_b, sqrt_p)[0], sk.sketch(target_b, sqrt_p)[0], n_common=0, trim=0.0
        )
    assert np.corrcoef(want, got)[0, 1] > 0.95


def test_top_directions_match_a_full_svd() -> None:
    """Oracle: torch.linalg.svd; rows share one loud direction, as unit gradient sketches do."""
    from curation.checkpoint_values import top_directions

    g = torch.Generator().manual_seed(3)
    common = torch.randn(400, generator=g, dtype=torch.float64)
    a = 2.0 * torch.randn(600, 1, generator=g, dtype=torch.float64).abs() * common
    a = a + torch.randn(600, 400, generator=g, dtype=torch.float64)
    a[:, :3] *= torch.tensor([6.0, 4.0, 3.0], dtype=torch.float64)  # a spectrum with a few steps
    for rows in (a, a[:300]):  # more rows than columns, and fewer (the two Gram matrices)
        want = torch.linalg.svd(rows, full_matrices=False)[2][:3].T
        got = top_directions(rows, 3)
        assert got.shape == (400, 3)
        overlap = (want.T @ got).abs().diagonal()  # sign-free agreement of each direction
        assert overlap.min() > 1 - 1e-9


class _Rows:
    """An encoded corpus of random token rows: `len` and `batch(idx)`, as `checkpoint_values` reads."""

    def __init__(self, n: int, T: int, seed: int) -> None:
        from tests.adamshap_core.conftest import make_batch

        self.b = make_batch(n, T, seed=seed)

    def __len__(self) -> int:
        return self.b["input_ids"].shape[0]

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        return {k: v[torch.as_tensor(idx)] for k, v in self.b.items()}


def test_values_streamed_past_the_memory_budget_equal_the_in_memory_formula() -> None:
    """A pool larger than `basis_bytes` holds only a random subset for the shared direction and
    streams the rest; oracle: every sketch in memory with that subset's direction."""
    from adamshap_core.training import plain_step
    from curation.checkpoint_values import (
        CheckpointValueConfig,
        _project_out,
        _sketch_all,
        _unit,
        basis_rows,
        checkpoint_values,
        top_directions,
        trimmed_cosine,
    )
    from tests.adamshap_core.conftest import TinyLM, make_batch

    torch.manual_seed(0)
    model = TinyLM(d=8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    for s in range(3):
        plain_step(model, opt, make_batch(4, 10, seed=20 + s), 1.0)
    snap = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    train, target = _Rows(40, 10, seed=1), _Rows(8, 10, seed=2)
    small = CheckpointValueConfig(sketch_dim=4, batch_size=6, basis_bytes=1, basis_min_rows=11)
    got = checkpoint_values(model, opt, [snap], train, target, small, progress=False)[0]
    with GradientSketch(model, k=4, seed=0) as sk:
        sqrt_p = adam_sqrt_preconditioner(opt)
        a = _unit(_sketch_all(sk, train, sqrt_p, 6, "cpu"))
        b = _unit(_sketch_all(sk, target, sqrt_p, 6, "cpu"))
        rows = basis_rows(40, sk.dim, small)
    assert len(rows) == 11 and len(set(rows.tolist())) == 11
    basis = top_directions(a[torch.as_tensor(rows)], 1)
    want = trimmed_cosine(_project_out(a, basis), _project_out(b, basis), small.trim)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    # everything in memory (the default budget) is the plain formula over the whole pool
    full = checkpoint_values(
        model, opt, [snap], train, target, CheckpointValueConfig(sketch_dim=4), progress=False
    )[0]
    np.testing.assert_allclose(full, score_from_sketches(a, b, n_common=1), rtol=1e-9, atol=1e-12)


@pytest.mark.integration
def test_scoring_run_writes_checkpoint_values_and_prune_uses_them(tmp_path: Path) -> None:
    from curation.checkpoint_values import CheckpointValueConfig, checkpoint_values
    from curation.prune import PruneArgs, run_prune
    from curation.scoring_run import ScoreArgs, run_scoring

    by = fixture_docs(40)
    rows = [r for s in sorted(by) for r in by[s][:8]]
    corpus, target = tmp_path / "corpus.jsonl", tmp_path / "target.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    target.write_text("".join(json.dumps(r) + "\n" for r in by["bible"][20:26]), "utf-8")
    args = ScoreArgs(
        corpus=str(corpus),
        target=str(target),
        out=str(tmp_path / "run"),
        seq_len=32,
        vocab_size=300,
        batch_size=8,
        target_batch_size=4,
        warm_start_steps=4,
        estimators=("adam",),
        snapshots=2,
        sketch_dim=4,
        progress=False,
    )
    run = Path(run_scoring(args))
    assert len(list((run / "snapshots").glob("step-*.pt"))) == 2
    ck = pl.read_parquet(run / "checkpoint_values.parquet")
    steps = [c for c in ck.columns if c.startswith("value_ckpt_step")]
    assert len(steps) == 2 and ck.height == len(rows)
    mean = np.mean([ck[c].to_numpy() for c in steps], axis=0)
    np.testing.assert_allclose(ck["value_ckpt"].to_numpy(), mean)
    by_ex = pl.read_parquet(run / "values_by_example.parquet")
    assert by_ex["value_ckpt"].is_finite().all() and by_ex.height == len(rows)

    # the same snapshots valued again give the same numbers (no hidden state)
    from transformers import GPT2LMHeadModel

    from curation.encode import encode_corpus
    from curation.tokenizer import load_tokenizer

    tok = load_tokenizer(run / "tokenizer")
    model = GPT2LMHeadModel.from_pretrained(run / "final_model")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    snaps = [torch.load(p, weights_only=True) for p in sorted((run / "snapshots").glob("*.pt"))]
    df = pl.DataFrame(rows)
    again = checkpoint_values(
        model,
        opt,
        snaps,
        encode_corpus(df, tok, 32),
        encode_corpus(pl.DataFrame(by["bible"][20:26]), tok, 32),
        CheckpointValueConfig(sketch_dim=4, seed=0),
        progress=False,
    )
    lut = dict(zip(ck["id"], ck["value_ckpt"]))
    np.testing.assert_allclose(again.mean(0), [lut[r["id"]] for r in rows], rtol=1e-5, atol=1e-7)

    out = run_prune(
        PruneArgs(
            corpus=str(corpus),
            scores=str(run),
            target=str(target),
            keep=0.5,
            estimator="ckpt",
            clusters=3,
            out=str(tmp_path / "prune"),
            progress=False,
        )
    )
    summary = json.loads((Path(out) / "prune.json").read_text())["summary"]
    assert summary["estimator"] == "ckpt" and summary["n_kept"] == len(rows) // 2
