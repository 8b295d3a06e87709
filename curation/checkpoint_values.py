"""Checkpoint values: every document valued at the same few snapshots of the scoring run.

The in-run ledger credits a document with the steps at which it happened to be drawn, so its
value mixes *what* it is with *when* it was seen (values flag junk early in training and flip
sign later; `benchmarks/results/pruning_phase_probe.md`). Here every training document is
re-valued, with no update, at each of a few shared snapshots (model + AdamW state) saved during
the run, against every target document:

    v_c(i, j) = cos_P(g_i, h_j) = <P^½ g_i, P^½ h_j> / (|P^½ g_i| |P^½ h_j|),

with `P = 1/(sqrt(v̂)+ε)` from the snapshot's optimizer state (the same Adam-aware metric as the
in-run `adam` estimator), `g_i`, `h_j` the per-document loss gradients, computed from Kronecker
sketches of the ghost factors (`adamshap_core.sketch`; no per-example gradient is formed). The
cosine removes the length / gradient-norm bias; the direction that every document shares
(mostly "emit frequent tokens") is projected out (`n_common` top principal directions of the
pool's sketches: all of them while they fit in `basis_bytes`, else a seeded random subset,
and the rest are streamed batch by batch, so memory does not grow with the pool); target
documents are aggregated by a trimmed mean (the middle half of `v_c(i, ·)`), so a minority of
odd target documents (a held-out slice of a junk-laden corpus) cannot vouch for documents like
themselves. A document's checkpoint value is the mean over snapshots. The sketch size matters:
at k = 16 most of a value's spread between documents was projection noise (two sketch seeds of
the same snapshots agreed at Spearman 0.26); `benchmarks/value_reliability.py` measures it. See
docs/method.md, "Checkpoint values", and the pruning benchmark for the measured comparison with
the in-run sums.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .run_dir import RunDir

CKPT_COLUMN = "value_ckpt"


@dataclass
class CheckpointValueConfig:
    """How checkpoint values are formed (saved in run.json through ScoreArgs)."""

    sketch_dim: int = 64
    n_common: int = 1
    trim: float = 0.25  # drop this fraction of target documents at each end (0 = plain mean)
    skip: tuple[str, ...] = ()
    batch_size: int = 32
    seed: int = 0
    basis_bytes: int = 1 << 30  # pool sketches held at once for the shared direction
    basis_min_rows: int = 256  # ... but never fewer rows than this


def snapshot_steps(warm_start_steps: int, n_scored: int, n_snapshots: int) -> list[int]:
    """Global steps at which snapshots are saved: evenly spread over the whole run, the last at
    its end (early snapshots see the documents a young model finds odd, late ones a trained one)."""
    total = warm_start_steps + n_scored
    if n_snapshots <= 0 or total <= 0:
        return []
    pts = np.linspace(0, total, n_snapshots + 1)[1:]
    return sorted({max(1, int(round(p))) for p in pts})


def _sketch_rows(
    sk: Any, enc: Any, rows: np.ndarray, sqrt_p: Any, batch_size: int, device: Any
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(row indices, [b, dim] float64 sketches) of `rows` of an encoded corpus, batch by batch."""
    for s in range(0, len(rows), batch_size):
        idx = rows[s : s + batch_size]
        batch = {k: v.to(device) for k, v in enc.batch(idx).items()}
        z, _ = sk.sketch(batch, sqrt_p)
        yield idx, z.double().cpu()


def _sketch_all(sk: Any, enc: Any, sqrt_p: Any, batch_size: int, device: Any) -> torch.Tensor:
    """[N, dim] float64 sketches of every document of an encoded corpus."""
    out = [z for _, z in _sketch_rows(sk, enc, np.arange(len(enc)), sqrt_p, batch_size, device)]
    return torch.cat(out) if out else torch.zeros(0, sk.dim, dtype=torch.float64)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-30)


def top_directions(a: torch.Tensor, n: int) -> torch.Tensor:
    """[dim, n] top right singular vectors of `a` [N, dim], from the eigenvectors of the smaller
    Gram matrix (exact, and far cheaper than a full SVD when dim >> N)."""
    if a.shape[0] >= a.shape[1]:
        return torch.linalg.eigh(a.T @ a)[1][:, -n:].flip(1)
    u = torch.linalg.eigh(a @ a.T)[1][:, -n:].flip(1)
    return _unit((a.T @ u).T).T  # a^T u_j = sigma_j v_j; the Gram matrix is at most N x N


def _project_out(x: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """Unit rows of `x` with the `basis` directions removed (unit rows in, unit rows out)."""
    if basis is None:
        return x
    return _unit(x - (x @ basis) @ basis.T)


def trimmed_cosine(a: torch.Tensor, b: torch.Tensor, trim: float) -> np.ndarray:
    """Per row of `a`: the mean of its cosines with the rows of `b`, `trim` cut at each end."""
    cos = a @ b.T  # [N, M]
    m = cos.shape[1]
    lo = int(np.floor(trim * m))
    hi = m - lo
    if hi <= lo:
        return cos.median(dim=1).values.numpy()
    return torch.sort(cos, dim=1).values[:, lo:hi].mean(dim=1).numpy()


def score_from_sketches(
    train: torch.Tensor, target: torch.Tensor, n_common: int = 1, trim: float = 0.25
) -> np.ndarray:
    """Per training document: trimmed mean over target documents of the cosine, common part removed."""
    a, b = _unit(train), _unit(target)
    basis = top_directions(a, n_common) if 0 < n_common < a.shape[0] else None
    return trimmed_cosine(_project_out(a, basis), _project_out(b, basis), trim)


def basis_rows(n: int, dim: int, cfg: CheckpointValueConfig) -> np.ndarray:
    """Pool rows whose sketches define the shared direction: all of them when they fit in
    `cfg.basis_bytes`, else a seeded random subset that does (at least `cfg.basis_min_rows`)."""
    fit = max(cfg.basis_min_rows, cfg.basis_bytes // max(1, 8 * dim))
    if n <= fit:
        return np.arange(n)
    return np.sort(np.random.default_rng(cfg.seed).choice(n, fit, replace=False))


def _snapshot_values(
    sk: Any, train_enc: Any, target_enc: Any, sqrt_p: Any, cfg: CheckpointValueConfig, bar: Any
) -> np.ndarray:
    """[N] values at one snapshot, holding at most `cfg.basis_bytes` of pool sketches at a time."""
    dev = next(sk.model.parameters()).device
    n = len(train_enc)
    b = _unit(_sketch_all(sk, target_enc, sqrt_p, cfg.batch_size, dev))
    bar.update(len(target_enc))
    rows = basis_rows(n, sk.dim, cfg)
    held = torch.cat(
        [z for _, z in _sketch_rows(sk, train_enc, rows, sqrt_p, cfg.batch_size, dev)]
        or [torch.zeros(0, sk.dim, dtype=torch.float64)]
    )
    held = _unit(held)
    bar.update(len(rows))
    basis = top_directions(held, cfg.n_common) if 0 < cfg.n_common < n else None
    b = _project_out(b, basis)
    out = np.zeros(n)
    out[rows] = trimmed_cosine(_project_out(held, basis), b, cfg.trim)
    if len(rows) == n:
        return out
    del held
    rest = np.setdiff1d(np.arange(n), rows)
    for idx, z in _sketch_rows(sk, train_enc, rest, sqrt_p, cfg.batch_size, dev):
        out[idx] = trimmed_cosine(_project_out(_unit(z), basis), b, cfg.trim)
        bar.update(len(idx))
    return out


def checkpoint_values(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    snapshots: list[dict[str, Any]],
    train_enc: Any,
    target_enc: Any,
    cfg: CheckpointValueConfig,
    progress: bool = True,
) -> np.ndarray:
    """[n_snapshots, N] checkpoint values of every training document (see the module docstring)."""
    from tqdm.auto import tqdm

    from adamshap_core.sketch import GradientSketch, adam_sqrt_preconditioner

    rows = []
    with (
        GradientSketch(model, k=cfg.sketch_dim, seed=cfg.seed, skip=cfg.skip) as sk,
        tqdm(
            total=len(snapshots) * (len(train_enc) + len(target_enc)),
            desc="checkpoint values",
            unit="doc",
            disable=not progress,
        ) as bar,
    ):
        for snap in snapshots:
            model.load_state_dict(snap["model"])
            optimizer.load_state_dict(snap["optimizer"])
            sqrt_p = adam_sqrt_preconditioner(optimizer)
            rows.append(_snapshot_values(sk, train_enc, target_enc, sqrt_p, cfg, bar))
    return np.stack(rows) if rows else np.zeros((0, len(train_enc)))


def snapshot_paths(run_dir: Path) -> list[Path]:
    """Saved snapshots of a run, oldest first."""
    return RunDir(run_dir).snapshot_files()
