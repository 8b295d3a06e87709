"""Per-example sketches of Adam-preconditioned gradients, formed from the ghost factors.

At a fixed model state (a checkpoint, no update), example i's Adam-aware value against a target
example j is `<g_i, P ⊙ h_j>` with `P = 1/(sqrt(v̂)+ε)` from the optimizer state (docs/method.md,
"Checkpoint values"). Writing `P^½` for its elementwise square root, that is the plain inner
product of `P^½ ⊙ g_i` and `P^½ ⊙ h_j`. This module maps each example's `P^½ ⊙ g_i` to a short
vector (its *sketch*) whose inner products approximate those values, without materialising any
per-example gradient:

- a weight `W` with per-example gradient `Σ_t x_tᵀ y_t` in its own layout (Linear: `x = b`,
  `y = a`; Conv1D: `x = a`, `y = b`; Embedding: `x = onehot(id)`, `y = b`) is sketched as
  `R_0ᵀ (√r ⊙ x)ᵀ (√c ⊙ y) R_1` ([k, k]), with Gaussian `R_0`, `R_1` of variance 1/k and the
  Adafactor factorisation `P ≈ r cᵀ` (`gram.rank1_factors`) folded into the two sides. Its
  expected inner product with another sketch is the exact inner product of the (rank-1
  preconditioned) gradients (a Kronecker-structured Johnson-Lindenstrauss projection);
- vectors (biases, LayerNorm weights) are kept exactly (`√P ⊙ g`) when at most k² long, and
  projected by a dense Gaussian [d, k²] otherwise;
- a tied parameter (GPT-2's `wte` = `lm_head`) shares its projections, so the sketches of its
  two uses add up to the sketch of its total gradient.

The only approximation beyond the random projection is the rank-1 preconditioner on 2-D weights
(exact for a constant P, i.e. SGD); tests check both against `torch.func` per-example gradients.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .batch import per_example_loss, prepare_batch
from .ghost import Conv1D, GhostCapture
from .gram import rank1_factors

__all__ = ["GradientSketch", "adam_sqrt_preconditioner"]


@torch.no_grad()
def adam_sqrt_preconditioner(optimizer: torch.optim.Optimizer) -> dict[int, torch.Tensor]:
    """`sqrt(1 / (sqrt(v̂) + ε))` per parameter (keyed by id) from an Adam/AdamW state (no step)."""
    out: dict[int, torch.Tensor] = {}
    for group in optimizer.param_groups:
        beta2, eps = group["betas"][1], group["eps"]
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            if "exp_avg_sq" not in st:
                out[id(p)] = torch.ones_like(p)
                continue
            t = float(st["step"])
            vhat = st["exp_avg_sq"] / (1 - beta2**t)
            out[id(p)] = (1.0 / (vhat.sqrt() + eps)).sqrt()
    return out


class GradientSketch:
    """Sketches of `P^½ ⊙ ∇l_i` for every example of a batch (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        k: int = 16,
        seed: int = 0,
        skip: tuple[str, ...] = (),
        dtype: torch.dtype = torch.float32,
    ):
        if k < 1:
            raise ValueError(f"sketch size k must be >= 1, got {k}")
        self.model = model
        self.k = k
        self.seed = seed
        self.dtype = dtype
        self.capture = GhostCapture(model)
        self.skip = {id(p) for n, p in model.named_parameters() if any(s in n for s in skip)}
        self._proj: dict[tuple[int, int], torch.Tensor] = {}
        self._order = {id(p): i for i, p in enumerate(model.parameters())}
        self.dim = self._layout()

    def __enter__(self) -> GradientSketch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hooks from the model."""
        self.capture.remove()

    def _params(self) -> list[nn.Parameter]:
        seen: dict[int, nn.Parameter] = {}
        for use in self.capture.uses:
            for p in use.module.parameters(recurse=False):
                if p.requires_grad and id(p) not in self.skip:
                    seen.setdefault(id(p), p)
        return sorted(seen.values(), key=lambda p: self._order[id(p)])

    def _layout(self) -> int:
        """Assign each sketched parameter its slice of the sketch vector; returns the length."""
        self.slices: dict[int, slice] = {}
        at = 0
        for p in self._params():
            size = self.k * self.k if p.dim() == 2 or p.numel() > self.k * self.k else p.numel()
            self.slices[id(p)] = slice(at, at + size)
            at += size
        return at

    def _gauss(self, p: torch.Tensor, axis: int, rows: int, cols: int) -> torch.Tensor:
        key = (id(p), axis)
        if key not in self._proj:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self._order[id(p)] * 7 + axis)
            m = torch.randn(rows, cols, generator=g, dtype=torch.float64) / cols**0.5
            self._proj[key] = m.to(self.dtype)
        return self._proj[key].to(p.device)

    def sketch(
        self, batch: Mapping[str, torch.Tensor], sqrt_p: Mapping[int, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """([n, dim] sketches of `P^½ ⊙ ∇l_i`, [n] losses) for one batch; the model is unchanged.

        `sqrt_p` maps id(param) to `P^½` (`adam_sqrt_preconditioner`); None means P = 1 (SGD).
        Parameter `.grad`s are left as they were.
        """
        device = next(self.model.parameters()).device
        b = prepare_batch(batch, device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        saved = [p.grad for p in params]
        cap = self.capture
        cap.clear()
        cap.active = True
        try:
            losses = per_example_loss(self.model, b)
            torch.autograd.grad(losses.sum(), params, allow_unused=True)
        finally:
            cap.active = False
        for p, g in zip(params, saved):
            p.grad = g
        n = losses.shape[0]
        out = torch.zeros(n, self.dim, dtype=self.dtype, device=device)
        for use in cap.uses:
            for rec in use.records:
                if rec.b is not None:
                    self._add(out, use.module, rec, sqrt_p)
        cap.clear()
        return out, losses.detach()

    def _vec(self, out: torch.Tensor, p: torch.Tensor, g: torch.Tensor, sqrt_p) -> None:
        """Add per-example vector gradients g [n, d] of a 1-D parameter."""
        if id(p) not in self.slices:
            return
        g = g.to(self.dtype)
        if sqrt_p is not None:
            g = g * sqrt_p[id(p)].to(self.dtype)
        if g.shape[1] > self.k * self.k:
            g = g @ self._gauss(p, 0, g.shape[1], self.k * self.k)
        out[:, self.slices[id(p)]] += g

    def _add(self, out: torch.Tensor, mod: nn.Module, rec, sqrt_p) -> None:
        dt = self.dtype
        if isinstance(mod, nn.LayerNorm):
            if rec.gw is not None:
                self._vec(out, mod.weight, rec.gw, sqrt_p)
            if rec.gb is not None:
                self._vec(out, mod.bias, rec.gb, sqrt_p)
            return
        w = mod.weight
        n = rec.b.shape[0]
        bb = rec.b.reshape(n, -1, rec.b.shape[-1]).to(dt)  # [n, T, d_out]
        if getattr(mod, "bias", None) is not None and mod.bias.requires_grad:
            self._vec(out, mod.bias, bb.sum(1), sqrt_p)
        if id(w) not in self.slices:
            return
        s0 = s1 = None
        if sqrt_p is not None:
            r, c = rank1_factors(sqrt_p[id(w)].to(torch.float64) ** 2)
            s0, s1 = r.sqrt().to(dt), c.sqrt().to(dt)
        r0 = self._gauss(w, 0, w.shape[0], self.k)
        r1 = self._gauss(w, 1, w.shape[1], self.k)
        if isinstance(mod, nn.Embedding):
            ids = rec.a.reshape(n, -1)
            left = (r0 if s0 is None else r0 * s0[:, None])[ids]  # [n, T, k]
            if mod.padding_idx is not None:
                left = left * (ids != mod.padding_idx).unsqueeze(-1).to(dt)
            right = bb if s1 is None else bb * s1
        else:
            x = rec.a.reshape(n, -1, rec.a.shape[-1]).to(dt)
            is_conv1d = Conv1D is not None and isinstance(mod, Conv1D)
            rows, cols = (x, bb) if is_conv1d else (bb, x)
            left = rows if s0 is None else rows * s0
            right = cols if s1 is None else cols * s1
            left = left @ r0
            right_proj = right @ r1
            out[:, self.slices[id(w)]] += torch.bmm(left.transpose(1, 2), right_proj).reshape(n, -1)
            return
        out[:, self.slices[id(w)]] += torch.bmm(left.transpose(1, 2), right @ r1).reshape(n, -1)
