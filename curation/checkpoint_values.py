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
pool's sketches); target documents are aggregated by a trimmed mean (the middle half of
`v_c(i, ·)`), so a minority of odd target documents (a held-out slice of a junk-laden corpus)
cannot vouch for documents like themselves. A document's checkpoint value is the mean over
snapshots. See docs/method.md, "Checkpoint values", and the pruning benchmark for the measured
comparison with the in-run sums.
"""

from __future__ import annotations

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

    sketch_dim: int = 16
    n_common: int = 1
    trim: float = 0.25  # drop this fraction of target documents at each end (0 = plain mean)
    skip: tuple[str, ...] = ()
    batch_size: int = 32
    seed: int = 0


def snapshot_steps(warm_start_steps: int, n_scored: int, n_snapshots: int) -> list[int]:
    """Global steps at which snapshots are saved: evenly spread over the whole run, the last at
    its end (early snapshots see the documents a young model finds odd, late ones a trained one)."""
    total = warm_start_steps + n_scored
    if n_snapshots <= 0 or total <= 0:
        return []
    pts = np.linspace(0, total, n_snapshots + 1)[1:]
    return sorted({max(1, int(round(p))) for p in pts})


def _sketch_all(sk: Any, enc: Any, sqrt_p: Any, batch_size: int, device: Any) -> torch.Tensor:
    """[N, dim] float64 sketches of every document of an encoded corpus."""
    out = []
    for s in range(0, len(enc), batch_size):
        idx = np.arange(s, min(len(enc), s + batch_size))
        batch = {k: v.to(device) for k, v in enc.batch(idx).items()}
        z, _ = sk.sketch(batch, sqrt_p)
        out.append(z.double().cpu())
    return torch.cat(out) if out else torch.zeros(0, sk.dim, dtype=torch.float64)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-30)


def score_from_sketches(
    train: torch.Tensor, target: torch.Tensor, n_common: int = 1, trim: float = 0.25
) -> np.ndarray:
    """Per training document: trimmed mean over target documents of the cosine, common part removed."""
    a, b = _unit(train), _unit(target)
    if n_common > 0 and a.shape[0] > n_common:
        _, _, vt = torch.linalg.svd(a, full_matrices=False)
        basis = vt[:n_common].T  # [dim, n_common]
        a = _unit(a - (a @ basis) @ basis.T)
        b = _unit(b - (b @ basis) @ basis.T)
    cos = a @ b.T  # [N, M]
    m = cos.shape[1]
    lo = int(np.floor(trim * m))
    hi = m - lo
    if hi <= lo:
        return cos.median(dim=1).values.numpy()
    return torch.sort(cos, dim=1).values[:, lo:hi].mean(dim=1).numpy()


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

    device = next(model.parameters()).device
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
            s_train = _sketch_all(sk, train_enc, sqrt_p, cfg.batch_size, device)
            bar.update(len(train_enc))
            s_target = _sketch_all(sk, target_enc, sqrt_p, cfg.batch_size, device)
            bar.update(len(target_enc))
            rows.append(score_from_sketches(s_train, s_target, cfg.n_common, cfg.trim))
    return np.stack(rows) if rows else np.zeros((0, len(train_enc)))


def snapshot_paths(run_dir: Path) -> list[Path]:
    """Saved snapshots of a run, oldest first."""
    return RunDir(run_dir).snapshot_files()
