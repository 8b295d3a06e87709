"""Momentum-propagated values: follow each example's gradient through Adam's first moment.

AdamW puts example i's clipped gradient `κ_t g_i` (drawn at step t) into `m` with weight
`(1-β1)`; at step `s = t+k` it is still there with weight `β1^k (1-β1)`, and it pushes the
weights by `-η_s β1^k (1-β1)/(1-β1^s) κ_t g_i ⊘ (sqrt(v̂_s)+ε)`. Under the fixed state that is
the same preconditioner as step s's own examples get, `lr·P_s = η_s (1-β1)/(1-β1^s) κ_s ⊘ (...)`,
scaled by `β1^k κ_t/κ_s`. So the first-order value of i's carry-over at step s is

    carry_{i,s} = β1^k (κ_t / κ_s) ⟨U_s, g_i⟩,

with `U_s` step s's own val-side tensor for the estimator (`adam`: lr·P_s ⊙ ∇l_val(w_s);
`adam-loo`: lr·P_s ⊙ ∇l_val(w_{s+1}); `adam2`: lr·P_s ⊙ the midpoint gradient; the clip term
of `adam-loo` is not carried, since κ_s does not depend on an example of an earlier batch).
`sgd` ignores Adam's state, so its carry is heavy-ball momentum: `β1^k ⟨lr_s ∇l_val(w_s), g_i⟩`.

The propagated value of i is its own value at step t plus `Σ_{k=1..K} carry_{i,t+k}`. It is
exact without materialising a per-example gradient: step t's ghost records (layer inputs and
output gradients) are kept while the window is open, the window's val side
`X_t = Σ_k β1^k (κ_t/κ_s) U_s` is accumulated as steps arrive (one parameter-sized tensor per
estimator and pending step), and it is contracted once against the records when the window
closes: one contraction per step, as for the own values, and memory of K steps' records.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .estimators import get_estimator
from .ghost import _Record

_RECORD_FIELDS = ("a", "b", "gw", "gb")

Contract = Callable[[dict[int, torch.Tensor], int, list], torch.Tensor]


@dataclass
class PropagatedStep:
    """Momentum-propagated values of the examples of one earlier step, once its window closed."""

    step: int  # index of the scored step the examples were drawn in (0 = first `step()` call)
    values: dict[str, torch.Tensor]  # estimator -> float64 [n]: own value + carry-over
    carry: dict[str, torch.Tensor]  # estimator -> float64 [n]: the carry-over alone
    steps_covered: int  # later steps whose carry is included (K, fewer when flushed early)


@dataclass
class _Pending:
    step: int
    n: int
    kappa: float
    records: list
    own: dict[str, torch.Tensor]
    acc: dict[int, torch.Tensor] | None = None  # id(param) -> [E, *shape]
    k: int = 0
    # clipped step with clip-linearised estimators: the clipped batch gradient ĝ_t and ĝ_t·g_i
    ghat: dict[int, torch.Tensor] | None = None
    gg_col: torch.Tensor | None = None
    lin: frozenset[str] = frozenset()


@dataclass
class MomentumWindow:
    """Keeps the last K steps' ghost records and their accumulated carry-over val sides."""

    window: int
    estimators: tuple[str, ...]
    beta1: dict[int, float]  # id(param) -> β1 of its group
    dtype: torch.dtype = torch.float32
    pending: deque = field(default_factory=deque)
    # estimators whose own column holds κ_s (Adam's preconditioner; sgd's does not); None: as
    # the estimator table says
    adam_family: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if int(self.window) < 1:
            raise ValueError(f"momentum window must be a positive integer, got {self.window}")
        self.window = int(self.window)
        if self.adam_family is None:
            self.adam_family = frozenset(e for e in self.estimators if get_estimator(e).adam_family)

    def state_dict(self, modules: list[nn.Module], params: list[torch.Tensor]) -> list[dict]:
        """The open windows as plain tensors and lists (a checkpoint loadable with weights_only).

        Modules and parameters are stored by their index in `modules` / `params` (the capture's
        layer uses and the optimizer's parameters), tensors on the CPU. Holds K steps' records.
        """
        index = {id(m): j for j, m in enumerate(modules)}

        def per_param(d: dict[int, torch.Tensor] | None) -> list | None:
            return None if d is None else [_cpu(d.get(id(q))) for q in params]

        return [
            {
                "step": p.step,
                "n": p.n,
                "kappa": p.kappa,
                "k": p.k,
                "records": [
                    [index[id(mod)], [{f: _cpu(getattr(r, f)) for f in _RECORD_FIELDS} for r in rs]]
                    for mod, rs in p.records
                ],
                "own": {e: _cpu(v) for e, v in p.own.items()},
                "acc": per_param(p.acc),
                "ghat": per_param(p.ghat),
                "gg_col": _cpu(p.gg_col),
                "lin": sorted(p.lin),
            }
            for p in self.pending
        ]

    def load_state_dict(
        self,
        state: list[dict],
        modules: list[nn.Module],
        params: list[torch.Tensor],
        device: torch.device,
    ) -> None:
        """Replace the open windows by those of `state_dict` (same model layout)."""
        to = lambda t: None if t is None else t.to(device)  # noqa: E731

        def per_param(xs: list | None) -> dict[int, torch.Tensor] | None:
            if xs is None:
                return None
            return {id(q): to(x) for q, x in zip(params, xs, strict=True) if x is not None}

        self.pending.clear()
        for d in state:
            records = [
                (modules[j], [_Record(**{f: to(r[f]) for f in _RECORD_FIELDS}) for r in rs])
                for j, rs in d["records"]
            ]
            self.pending.append(
                _Pending(
                    step=int(d["step"]),
                    n=int(d["n"]),
                    kappa=float(d["kappa"]),
                    records=records,
                    own=dict(d["own"]),
                    acc=per_param(d["acc"]),
                    k=int(d["k"]),
                    ghat=per_param(d["ghat"]),
                    gg_col=d["gg_col"],
                    lin=frozenset(d["lin"]),
                )
            )

    def carry_column(
        self, cols: dict[str, dict[int, torch.Tensor]], kappa: float
    ) -> dict[int, torch.Tensor]:
        """Step s's carry val side per parameter, [E, *shape]: U_s/κ_s (Adam family), U_s (sgd)."""
        out: dict[int, torch.Tensor] = {}
        keys = set().union(*(c.keys() for c in cols.values()))
        for k in keys:
            parts = []
            ref = next(c[k] for c in cols.values() if k in c)
            for e in self.estimators:
                u = cols[e].get(k)
                if u is None:
                    parts.append(torch.zeros_like(ref, dtype=self.dtype))
                    continue
                u = u.to(self.dtype)
                parts.append(u / kappa if e in self.adam_family else u)
            out[k] = torch.stack(parts)
        return out

    @torch.no_grad()
    def add_step(self, carry: dict[int, torch.Tensor]) -> None:
        """Credit step s's carry val side to every open window: X_t += β1^(s-t) · carry."""
        for p in self.pending:
            p.k += 1
            if p.acc is None:
                p.acc = {k: (self.beta1[k] ** p.k) * v for k, v in carry.items()}
            else:
                for k, v in carry.items():
                    p.acc[k].add_(v, alpha=self.beta1[k] ** p.k)

    def open(
        self,
        step: int,
        n: int,
        kappa: float,
        records: list,
        own: dict[str, torch.Tensor],
        lin: frozenset[str] = frozenset(),
        ghat: dict[int, torch.Tensor] | None = None,
        gg_col: torch.Tensor | None = None,
    ) -> None:
        """Open the window of a new step (its records are kept until the window closes).

        `lin` names the estimators whose carry also linearises the clipping coefficient of
        step t (removing g_i moves κ_t, and κ_t scales the whole batch gradient in m):
        the carry becomes ⟨X, g_i⟩ − (ĝ·g_i/‖ĝ‖²)⟨X, ĝ⟩, with ĝ (`ghat`) the clipped batch
        gradient and `gg_col` = ĝ·g_i from the step's own contraction.
        """
        keep = ghat if lin else None
        self.pending.append(
            _Pending(step, n, kappa, records, own, ghat=keep, gg_col=gg_col, lin=lin)
        )

    def close_due(self, contract: Contract, force: bool = False) -> list[PropagatedStep]:
        """Contract and drop every window that has seen K later steps (all of them if `force`)."""
        out = []
        while self.pending and (force or self.pending[0].k >= self.window):
            out.append(self._close(self.pending.popleft(), contract))
        return out

    def _close(self, p: _Pending, contract: Contract) -> PropagatedStep:
        if p.acc is None:
            carry = {e: torch.zeros(p.n, dtype=torch.float64) for e in self.estimators}
        else:
            C = contract(p.acc, p.n, p.records).detach().cpu().double()
            carry = {}
            for j, e in enumerate(self.estimators):
                scale = p.kappa if e in self.adam_family else 1.0
                carry[e] = C[:, j] * scale
                if p.ghat is not None and e in p.lin:
                    xg = sum((p.acc[k][j].double() * g.double()).sum() for k, g in p.ghat.items())
                    gg = sum((g.double() ** 2).sum() for g in p.ghat.values())
                    carry[e] = carry[e] - float(scale * xg / gg) * p.gg_col
        values = {e: p.own[e] + carry[e] for e in self.estimators}
        return PropagatedStep(step=p.step, values=values, carry=carry, steps_covered=p.k)


def _cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().cpu()
