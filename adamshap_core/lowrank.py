"""Low-rank val-side tensors: a seeded randomised SVD of `G̃ = lr·P ⊙ ∇l_val` per 2-D weight.

For a linear layer the exact ghost contraction `Σ_t a_t G̃ b_tᵀ` costs `nT·d_in·d_out` per
estimator column (one extra forward matmul of the layer). With `G̃ ≈ L R` (rank r) it becomes
`Σ_t (a_t L)·(b_t Rᵀ)` (in the weight's storage layout), costing `nT·(d_in + d_out)·r`
(docs/method.md §6). The factorisation itself is a randomised range finder (Halko et al.) with `niter`
power iterations, oversampled and truncated back to rank r by an SVD of the small projected
matrix; its cost is `O(d_in·d_out·r)` per weight and does not grow with the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .choices import CONTRACTIONS

__all__ = ["CONTRACTIONS", "LowRank", "randomized_lowrank", "use_lowrank"]


@dataclass
class LowRank:
    """`G ≈ left @ right` for a stack of E matrices: left [E, m, r], right [E, r, k].

    `residual` is an upper estimate of the relative Frobenius error `‖G − left·right‖/‖G‖`,
    the largest over the E matrices (from the captured singular values; exact when r = rank G).
    """

    left: torch.Tensor
    right: torch.Tensor
    residual: float = 0.0


def use_lowrank(shape: tuple[int, ...], rank: int, mode: str) -> bool:
    """Whether a weight of `shape` gets the low-rank contraction under `mode`.

    `exact`, `gram`: never. `lowrank`: every 2-D matmul weight whose rank-r form is cheaper at all.
    `auto`: only where the rank-r contraction costs under a quarter of the exact one,
    `(d_in + d_out)·r < d_in·d_out / 4`, so the factorisation overhead is clearly paid back.
    """
    if mode in ("exact", "gram") or len(shape) != 2:
        return False
    d0, d1 = shape
    if mode == "auto":
        return (d0 + d1) * rank < d0 * d1 / 4
    return (d0 + d1) * rank < d0 * d1


@torch.no_grad()
def randomized_lowrank(
    G: torch.Tensor,
    rank: int,
    generator: torch.Generator | None = None,
    niter: int = 1,
    oversample: int | None = None,
) -> LowRank:
    """Rank-`rank` approximation of each matrix of `G` [E, m, k] as `left @ right`.

    The singular values are folded into `right`. Deterministic given the generator's state.
    """
    E, m, k = G.shape
    p = rank if oversample is None else oversample
    q = min(rank + p, m, k)
    omega = torch.randn(E, k, q, generator=generator, device=G.device, dtype=G.dtype)
    Y = G @ omega  # [E, m, q]
    for _ in range(niter):
        Q = torch.linalg.qr(Y).Q
        Z = torch.linalg.qr(G.transpose(1, 2) @ Q).Q  # [E, k, q]
        Y = G @ Z
    Q = torch.linalg.qr(Y).Q  # [E, m, q]
    B = Q.transpose(1, 2) @ G  # [E, q, k]
    total = G.double().square().sum((1, 2))  # ‖G‖² per matrix
    if q > rank:
        Ub, S, Vh = torch.linalg.svd(B, full_matrices=False)
        left = Q @ Ub[:, :, :rank]
        right = S[:, :rank, None] * Vh[:, :rank, :]
        kept = S[:, :rank].double().square().sum(1)
    else:
        left, right = Q, B
        kept = B.double().square().sum((1, 2))
    # ‖G − LR‖² = ‖G‖² − ‖LR‖² (LR is G's projection onto an orthonormal basis, then truncated).
    rel = ((total - kept).clamp(min=0) / total.clamp(min=1e-300)).sqrt()
    return LowRank(left.contiguous(), right.contiguous(), float(rel.max()))
