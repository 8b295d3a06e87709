"""Ghost dot-products: per-example gradient inner products without per-example gradients.

For every supported layer we keep, during the training forward/backward, the layer inputs `a`
and the gradients `b` of the training loss with respect to the layer outputs. The per-example
gradient of a weight is then `a_iᵀ b_i` (or a gather for embeddings), and its inner product with
any val-side matrix `G` is contracted directly from `a`, `b` and `G` (docs/method.md §5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .gram import GramSide, gram_contract
from .lowrank import LowRank

try:  # HF GPT-2 uses a transposed linear layer.
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency, kept optional here
    Conv1D = None  # type: ignore[assignment,misc]

SUPPORTED_TYPES: tuple[type, ...] = tuple(
    t for t in (nn.Linear, Conv1D, nn.Embedding, nn.LayerNorm) if t is not None
)


class UnsupportedModuleError(TypeError):
    """A module holds trainable parameters that the ghost contraction cannot value."""


@dataclass
class _Record:
    a: torch.Tensor | None
    b: torch.Tensor | None = None
    # LayerNorm: the per-example weight/bias gradients [n, d], formed as soon as the output
    # gradient arrives so neither the layer's input nor its output gradient is kept.
    gw: torch.Tensor | None = None
    gb: torch.Tensor | None = None


@dataclass
class _Use:
    name: str
    module: nn.Module
    records: list[_Record] = field(default_factory=list)
    target_records: list[_Record] = field(default_factory=list)  # Gram form: the target pass


def check_supported(model: nn.Module) -> None:
    """Raise `UnsupportedModuleError` naming any module whose trainable parameters we cannot value."""
    for name, mod in model.named_modules():
        own = [n for n, p in mod.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        label = name or "<root>"
        if not isinstance(mod, SUPPORTED_TYPES):
            raise UnsupportedModuleError(
                f"module {label!r} ({type(mod).__name__}) holds trainable parameters {own}; "
                "adamshap values nn.Linear, transformers Conv1D, nn.Embedding and nn.LayerNorm only. "
                "Freeze it (requires_grad=False) or replace it with a supported layer."
            )
        if isinstance(mod, nn.Embedding) and (mod.max_norm is not None or mod.sparse):
            raise UnsupportedModuleError(
                f"module {label!r}: nn.Embedding with max_norm or sparse=True is not supported"
            )
        if isinstance(mod, nn.LayerNorm) and len(mod.normalized_shape) != 1:
            raise UnsupportedModuleError(
                f"module {label!r}: LayerNorm over more than the last dimension is not supported"
            )


class GhostCapture:
    """Forward/backward hooks that keep each supported layer's inputs and output gradients."""

    def __init__(self, model: nn.Module):
        check_supported(model)
        self.active = False
        # Gram contraction: while `target_active`, the modules in `target_modules` (ids) keep
        # their inputs and output gradients of the target pass in `target_records`.
        self.target_active = False
        self.target_modules: set[int] = set()
        self.uses: list[_Use] = []
        self._handles = []
        for name, mod in model.named_modules():
            if isinstance(mod, SUPPORTED_TYPES) and any(
                p.requires_grad for p in mod.parameters(recurse=False)
            ):
                use = _Use(name=name, module=mod)
                self.uses.append(use)
                self._handles.append(mod.register_forward_hook(self._make_hook(use)))

    def _make_hook(self, use: _Use):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not torch.is_grad_enabled():
                return
            if not self.active:
                if self.target_active and id(module) in self.target_modules:
                    trec = _Record(a=inputs[0].detach())
                    use.target_records.append(trec)
                    output.register_hook(lambda g: setattr(trec, "b", g.detach()))
                return
            rec = _Record(a=inputs[0].detach())
            use.records.append(rec)

            def grab(grad: torch.Tensor) -> None:
                rec.b = grad.detach()

            def grab_layernorm(grad: torch.Tensor) -> None:
                _layernorm_per_example(module, rec, grad.detach())

            output.register_hook(grab_layernorm if isinstance(module, nn.LayerNorm) else grab)

        return hook

    def clear(self) -> None:
        """Drop everything captured so far."""
        for use in self.uses:
            use.records.clear()

    def take_records(self) -> list[tuple[nn.Module, list[_Record]]]:
        """Hand over this step's records (per layer use) and start empty, without freeing them."""
        out = [(use.module, use.records) for use in self.uses]
        for use in self.uses:
            use.records = []
        return out

    def clear_target(self) -> None:
        """Drop the target pass's records."""
        for use in self.uses:
            use.target_records.clear()

    def target_tokens(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The target pass's inputs [T_val, d_in] and output gradients [T_val, d_out] of `module`."""
        for use in self.uses:
            if use.module is module:
                recs = [r for r in use.target_records if r.b is not None]
                if not recs:
                    return None
                a = torch.cat([r.a.reshape(-1, r.a.shape[-1]) for r in recs])
                b = torch.cat([r.b.reshape(-1, r.b.shape[-1]) for r in recs])
                return a, b
        return None

    def remove(self) -> None:
        """Remove the hooks from the model."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def matmul_weights(self) -> dict[int, torch.Tensor]:
        """The 2-D weights used by a Linear/Conv1D layer (candidates for a low-rank val side)."""
        out: dict[int, torch.Tensor] = {}
        for use in self.uses:
            if isinstance(use.module, nn.Embedding | nn.LayerNorm):
                continue
            w = use.module.weight
            if w.requires_grad and w.dim() == 2:
                out[id(w)] = w
        return out

    def contract(
        self,
        val_side: dict[int, torch.Tensor],
        n: int,
        dtype=torch.float32,
        low: dict[int, LowRank] | None = None,
        gram: dict[int, GramSide] | None = None,
        records: list[tuple[nn.Module, list[_Record]]] | None = None,
    ) -> torch.Tensor:
        """Return [n, E]: <G_e, g_i> for each example i and val-side tensor G_e (keyed by id(param)).

        `records` (from `take_records`) contracts an earlier step's kept records instead of the
        live ones (the momentum carry-over, momentum.py).

        `low` optionally maps a Linear/Conv1D weight id to a low-rank form of its val-side stack;
        those layers then contract through the factors (embeddings, tied or not, stay exact).
        `gram` maps a Linear/Conv1D weight id to its target side in Gram form (rank-1 P).
        """
        out = None
        sides = _ValSides(val_side, dtype, low or {}, gram or {})
        if records is None:
            records = [(use.module, use.records) for use in self.uses]
        for module, recs in records:
            for rec in recs:
                if rec.b is None:  # layer output did not reach the loss
                    continue
                part = _contract_one(module, rec, sides)
                if part is None:
                    continue
                out = part.double() if out is None else out + part.double()
        if out is None:
            e = next(iter(val_side.values())).shape[0]
            out = torch.zeros(n, e, dtype=torch.float64)
        return out


_REACHED = torch.empty(0)


def _layernorm_per_example(mod: nn.LayerNorm, rec: _Record, grad: torch.Tensor) -> None:
    """Per-example LayerNorm weight and bias gradients, [n, d] each; frees the record's input."""
    n, d = grad.shape[0], grad.shape[-1]
    dt = torch.promote_types(grad.dtype, torch.float32)
    if mod.weight is not None and mod.weight.dtype == torch.float64:
        dt = torch.float64
    bb = grad.reshape(n, -1, d).to(dt)
    if mod.weight is not None and mod.weight.requires_grad:
        x = rec.a.reshape(n, -1, d).to(dt)
        xhat = F.layer_norm(x, (d,), eps=mod.eps)  # the normalised input, fused
        rec.gw = (xhat * bb).sum(1)
    if mod.bias is not None and mod.bias.requires_grad:
        rec.gb = bb.sum(1)
    rec.a = None
    rec.b = _REACHED  # the output reached the loss; its gradient is not kept


def _rowdot(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[n, T, E, d] · [n, T, d] summed over T and d -> [n, E], as one batched matmul."""
    n, T, E, d = p.shape
    lhs = (
        p.reshape(n, T * d, 1).transpose(1, 2) if E == 1 else p.transpose(1, 2).reshape(n, E, T * d)
    )
    return torch.bmm(lhs, x.reshape(n, T * d, 1)).squeeze(-1)


def _stack_matrix(F: torch.Tensor) -> torch.Tensor:
    """[E, m, k] -> [m, E*k] (column block e is F[e]), a view when E == 1."""
    E, m, k = F.shape
    return F.permute(1, 0, 2).reshape(m, E * k)


@dataclass
class _ValSides:
    """The val side of one contraction: exact stacks by parameter id, low-rank and Gram forms."""

    exact: dict[int, torch.Tensor]
    dtype: torch.dtype
    low: dict[int, LowRank]
    gram: dict[int, GramSide]


def _contract_one(mod: nn.Module, rec: _Record, sides: _ValSides) -> torch.Tensor | None:
    """[n, E] for one layer call, by the contraction registered for the layer's type."""
    for kind in type(mod).__mro__:
        if kind in LAYER_CONTRACTIONS:
            return LAYER_CONTRACTIONS[kind](mod, rec, sides)
    raise UnsupportedModuleError(f"no ghost contraction for {type(mod).__name__}")


def _contract_embedding(mod: nn.Embedding, rec: _Record, sides: _ValSides) -> torch.Tensor | None:
    """Embedding: gather the val-side rows of the example's token ids."""
    G = sides.exact.get(id(mod.weight))
    if G is None:
        return None
    dtype = sides.dtype
    n = rec.b.shape[0]
    ids = rec.a.reshape(n, -1)
    bb = rec.b.reshape(n, ids.shape[1], -1).to(dtype)
    gathered = G.to(dtype)[:, ids]  # [E, n, T, d]
    if mod.padding_idx is not None:
        gathered = gathered * (ids != mod.padding_idx).unsqueeze(-1).to(dtype)
    return torch.einsum("entd,ntd->ne", gathered, bb)


def _contract_layernorm(mod: nn.LayerNorm, rec: _Record, sides: _ValSides) -> torch.Tensor | None:
    """LayerNorm: the per-example weight/bias gradients formed in the backward, dotted."""
    res = None
    for grad, param in ((rec.gw, mod.weight), (rec.gb, mod.bias)):
        if grad is not None and id(param) in sides.exact:
            part = grad.to(sides.dtype) @ sides.exact[id(param)].to(sides.dtype).T
            res = part if res is None else res + part
    return res


def _contract_matmul(mod: nn.Module, rec: _Record, sides: _ValSides) -> torch.Tensor | None:
    """Linear (weight [out, in]) or Conv1D (weight [in, out]): weight in one of three forms."""
    dtype, key = sides.dtype, id(mod.weight)
    n = rec.b.shape[0]
    bb = rec.b.reshape(n, -1, rec.b.shape[-1]).to(dtype)  # [n, T, out]
    x = rec.a.reshape(n, -1, rec.a.shape[-1]).to(dtype)  # [n, T, in]
    is_conv1d = Conv1D is not None and isinstance(mod, Conv1D)
    res = None
    if key in sides.gram:
        res = gram_contract(x, bb, sides.gram[key])
    elif key in sides.low:
        res = _lowrank_weight(sides.low[key], x, bb, is_conv1d, dtype)
    elif key in sides.exact:
        res = _exact_weight(sides.exact[key].to(dtype), x, bb, is_conv1d)
    if getattr(mod, "bias", None) is not None and id(mod.bias) in sides.exact:
        gb = bb.sum(1) @ sides.exact[id(mod.bias)].to(dtype).T
        res = gb if res is None else res + gb
    return res


def _lowrank_weight(
    lr_: LowRank, x: torch.Tensor, bb: torch.Tensor, is_conv1d: bool, dtype: torch.dtype
) -> torch.Tensor:
    """G ≈ L R in the weight's layout: Linear [out, in] (rows meet b), Conv1D [in, out]."""
    L, R = lr_.left.to(dtype), lr_.right.to(dtype)
    E, _, r = L.shape
    n, T = x.shape[:2]
    rows, cols = (x, bb) if is_conv1d else (bb, x)
    p1 = rows.reshape(n * T, -1) @ _stack_matrix(L)  # [nT, E*r]
    p2 = cols.reshape(n * T, -1) @ _stack_matrix(R.transpose(1, 2))  # [nT, E*r]
    return (p1 * p2).view(n, T, E, r).sum((1, 3))


def _exact_weight(
    G: torch.Tensor, x: torch.Tensor, bb: torch.Tensor, is_conv1d: bool
) -> torch.Tensor:
    """The exact val-side stack G: project through the narrower side of the weight."""
    if not is_conv1d:
        G = G.transpose(1, 2)  # -> [E, in, out]
    E, d_in, d_out = G.shape
    n, T = x.shape[:2]
    if d_in <= d_out:
        # project the output grads through G: [nT, out] @ [out, E*in] -> [n, T, E, in]
        proj = bb.reshape(n * T, d_out) @ _stack_matrix(G.transpose(1, 2))
        return _rowdot(proj.view(n, T, E, d_in), x)
    proj = x.reshape(n * T, d_in) @ _stack_matrix(G)
    return _rowdot(proj.view(n, T, E, d_out), bb)


# The per-layer-type contraction, looked up along the module's class hierarchy: a new layer
# type is one function here plus its capture in GhostCapture (and SUPPORTED_TYPES).
LAYER_CONTRACTIONS: dict[type, Callable[[nn.Module, _Record, _ValSides], torch.Tensor | None]] = {
    nn.Embedding: _contract_embedding,
    nn.LayerNorm: _contract_layernorm,
    nn.Linear: _contract_matmul,
}
if Conv1D is not None:
    LAYER_CONTRACTIONS[Conv1D] = _contract_matmul
