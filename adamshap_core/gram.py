"""Gram (T x T) contraction with a rank-1 (Adafactor-style) preconditioner, per linear layer.

The exact ghost contraction of a linear layer costs `nT·d_in·d_out` per estimator column. When
the target batch has few tokens, the val-side tensor `G̃ = P ⊙ Σ_s a'_sᵀ b'_s` (target inputs
`a'`, target output gradients `b'`, `T_val` tokens) can instead be contracted token against
token, but only if the elementwise preconditioner factorises. With `P ≈ r cᵀ`,

    <G̃, Σ_t a_tᵀ b_t> ≈ Σ_t Σ_s (a_t · (r ⊙ a'_s)) (b_t · (c ⊙ b'_s)),

two [nT, T_val] Gram matrices, `nT·T_val·(d_in + d_out)` per column (docs/method.md §6). It pays only
when `T_val < d_in·d_out / (d_in + d_out)`, and `P ≈ r cᵀ` is an approximation of its own
(exact when P is constant, as for `sgd`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GramSide:
    """One layer's target side in Gram form: target tokens and the rank-1 preconditioner factors.

    `a_val` [T_val, d_in] and `b_val` [T_val, d_out] are the target pass's layer inputs and output
    gradients (their product summed over tokens is the layer's target gradient); `r` [E, d_in]
    and `c` [E, d_out] give each estimator column's preconditioner as `r[e] c[e]ᵀ` ([d_in, d_out]).
    """

    a_val: torch.Tensor
    b_val: torch.Tensor
    r: torch.Tensor
    c: torch.Tensor


def rank1_factors(P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adafactor's factorisation of a non-negative [m, k] matrix: `P ≈ r cᵀ` from its row/col sums.

    `r = P·1`, `c = Pᵀ·1 / (1ᵀ P 1)`; exact when P has rank 1 (a constant P included).
    """
    rows, cols = P.sum(1), P.sum(0)
    total = rows.sum()
    return rows, cols / total.clamp(min=torch.finfo(P.dtype).tiny)


def gram_contract(x: torch.Tensor, bb: torch.Tensor, side: GramSide) -> torch.Tensor:
    """[n, T, d_in] inputs and [n, T, d_out] output gradients against a GramSide -> [n, E]."""
    n, T, d_in = x.shape
    d_out = bb.shape[-1]
    E = side.r.shape[0]
    xs = x.reshape(n * T, d_in)
    bs = bb.reshape(n * T, d_out)
    out = []
    for e in range(E):
        ka = xs @ (side.a_val * side.r[e]).T  # [nT, T_val]
        kb = bs @ (side.b_val * side.c[e]).T  # [nT, T_val]
        out.append((ka * kb).view(n, -1).sum(1))
    return torch.stack(out, dim=1)
