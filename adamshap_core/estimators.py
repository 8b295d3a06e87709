"""The estimator table: everything estimator-specific, one `Estimator` entry per estimator.

`InRunScorer` reads from this table which target gradients a step takes, whether Adam's
preconditioner is formed, each estimator's target-side column, its clipping default, whether the
Gram form may serve it and how the momentum carry treats it. Adding an estimator is one
`register_estimator(Estimator(...))` call with its column formula (docs/architecture.md).

An estimator's value of example i at step t is `⟨U, g_i⟩` with `U` its column (a tensor per
parameter, the learning rate included) and `g_i` example i's share of the batch gradient; the
scorer contracts every column at once without forming `g_i` (ghost.py).

Importing this module does not import torch (the CLI reads the names for a fast `--help`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import MappingProxyType

Column = dict  # id(param) -> torch.Tensor

# Where a target gradient ∇l_val can be taken in one step: w_t (before the step), the midpoint
# w_t + Δ_0 (the step with this batch's gradient removed, Adam's state held) and w_{t+1} (after).
TARGET_POINTS: tuple[str, ...] = ("start", "mid", "end")

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


@dataclass
class Targets:
    """What the columns of one step are formed from (filled by the scorer).

    `start`/`mid`/`end`: the target gradients at `TARGET_POINTS` (None when no chosen estimator
    needs that point); `lr`: each parameter's learning rate; `P`: Adam's fixed-state
    preconditioner with this step's clipping coefficient κ (lr not included; empty when no
    chosen estimator is `preconditioned`); `P_loo`: P with each example's effect on the second
    moment linearised (only with the scorer's `loo_second_moment`).
    """

    lr: dict
    start: Column | None = None
    mid: Column | None = None
    end: Column | None = None
    P: Column | None = None
    P_loo: Column | None = None
    loo_second_moment: bool = False
    # set by the scorer when nothing after the single preconditioned column reads P: that
    # column's `precondition` then writes into P's memory (one parameter-sized allocation fewer)
    consume_P: bool = False
    _consumed: bool = False

    def lr_times(self, g: Column) -> Column:
        """lr ⊙ g (plain gradient descent)."""
        return {k: self.lr[k] * v for k, v in g.items()}

    def precondition(self, g: Column) -> Column:
        """P ⊙ g. Call it once per column (combine target gradients first, as adam2 does)."""
        if self._consumed:
            raise RuntimeError("P was already consumed by this column; call precondition once")
        P = self.P or {}
        if not self.consume_P:
            return {k: P[k] * v for k, v in g.items() if k in P}
        self._consumed = True
        out = {k: P[k].mul_(v) for k, v in g.items() if k in P}
        self.P = {}
        return out

    def precondition_loo(self, g: Column) -> Column:
        """P_loo ⊙ g (P with the example's effect on Adam's second moment linearised)."""
        P = self.P_loo or {}
        return {k: P[k] * v for k, v in g.items() if k in P}


ColumnFn = Callable[[Targets], Column]
CarryFn = Callable[[Targets, Column], Column]
# (targets, weight id, d_in, d_out, conv, dtype, device) -> rank-1 factors (r [d_in], c [d_out])
# of the elementwise multiplier M in `column = M ⊙ ∇l_val(w_t)`, in [d_in, d_out] layout
GramFactorsFn = Callable[..., tuple]


@dataclass(frozen=True)
class Estimator:
    """One estimator's row of the table."""

    name: str
    # target gradients the column is formed from: a subset of TARGET_POINTS
    targets: frozenset[str]
    # the column U (lr included) from this step's `Targets`
    column: ColumnFn
    # reads Adam's preconditioner P (the scorer forms P when any chosen estimator does)
    preconditioned: bool = True
    # with the scorer's `loo_second_moment`, it reads P_loo (formed only then)
    reads_loo_P: bool = False
    # in the default `clip_linearised` set: its value includes the example's linearised effect
    # on the clipping coefficient κ
    clip_linearised: bool = False
    # the Gram form may serve it (column = M ⊙ ∇l_val(w_t) with M factored rank-1); None: never
    gram_factors: GramFactorsFn | None = None
    # its column holds κ_s through Adam's P: the momentum carry is U_s/κ_s, scaled back by κ_t
    adam_family: bool = True
    # momentum carry val side from (targets, own column); None: the own column
    carry: CarryFn | None = None
    # position in the order the CLI, scoring runs and prune present estimators (lower first;
    # ties keep registration order)
    cli_rank: int = 100
    # position of its column in the stacked contraction (lower first; ties keep registration
    # order). Exact contractions do not depend on it, but the low-rank option draws one seeded
    # random sketch [E, ...] for the stack, so the order pins its values.
    column_rank: int = 100
    summary: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(
                f"estimator name {self.name!r} must be lower-case letters, digits, '-' or '_'"
            )
        targets = frozenset(self.targets)
        if not targets or targets - set(TARGET_POINTS):
            raise ValueError(
                f"estimator {self.name!r}: targets must be a non-empty subset of "
                f"{TARGET_POINTS}, got {sorted(self.targets)}"
            )
        if self.gram_factors is not None and targets != {"start"}:
            raise ValueError(
                f"estimator {self.name!r}: the Gram form keeps the target tokens of the start "
                "gradient only, so gram_factors needs targets={'start'}"
            )
        object.__setattr__(self, "targets", targets)


_REGISTRY: dict[str, Estimator] = {}
# name -> Estimator in registration order (read-only view; use register/unregister_estimator)
ESTIMATORS = MappingProxyType(_REGISTRY)


def register_estimator(est: Estimator, replace: bool = False) -> Estimator:
    """Add `est` to the table (after the others); `replace=True` swaps an entry in place."""
    if not isinstance(est, Estimator):
        raise TypeError(f"register_estimator needs an Estimator, got {type(est).__name__}")
    if est.name in _REGISTRY and not replace:
        raise ValueError(f"estimator {est.name!r} is already registered (pass replace=True)")
    _REGISTRY[est.name] = est
    return est


def unregister_estimator(name: str) -> Estimator:
    """Remove an estimator from the table and return its entry."""
    get_estimator(name)
    return _REGISTRY.pop(name)


def get_estimator(name: str) -> Estimator:
    """The table entry of `name`; a ValueError naming the registered ones when there is none."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown estimator {name!r}; choose from {list(_REGISTRY)}") from None


def check_estimators(names: Iterable[str]) -> tuple[str, ...]:
    """`names` without repeats, in the given order; ValueError when empty or any is unknown."""
    out = tuple(dict.fromkeys(names))
    unknown = [e for e in out if e not in _REGISTRY]
    if unknown or not out:
        raise ValueError(f"unknown estimators {unknown}; choose from {list(_REGISTRY)}")
    return out


def preferred_order() -> tuple[str, ...]:
    """Every registered name in the order the CLI, scoring runs and prune present them."""
    ranked = sorted(enumerate(_REGISTRY.values()), key=lambda ie: (ie[1].cli_rank, ie[0]))
    return tuple(e.name for _, e in ranked)


def column_order(names: Iterable[str]) -> tuple[str, ...]:
    """`names` in the order their columns are stacked for the contraction."""
    index = {n: i for i, n in enumerate(_REGISTRY)}
    chosen = [get_estimator(n) for n in names]
    return tuple(e.name for e in sorted(chosen, key=lambda e: (e.column_rank, index[e.name])))


def gram_estimators() -> tuple[str, ...]:
    """The registered names the Gram contraction may serve."""
    return tuple(n for n, e in _REGISTRY.items() if e.gram_factors is not None)


def default_clip_linearised() -> frozenset[str]:
    """The names whose values linearise clipping unless the scorer is told otherwise."""
    return frozenset(n for n, e in _REGISTRY.items() if e.clip_linearised)


# ----------------------------------------------------------------------------- the built-ins
# docs/method.md §3 derives each; tests/adamshap_core/test_scorer.py checks them against
# torch.func per-example gradients and real optimizer steps.


def _sgd_gram(t: Targets, k, d_in, d_out, conv, dtype, device):
    import torch

    # constant P = lr: the factorisation is exact
    return torch.full((d_in,), float(t.lr[k]), dtype=dtype, device=device), torch.ones(
        d_out, dtype=dtype, device=device
    )


def _adam_gram(t: Targets, k, d_in, d_out, conv, dtype, device):
    from .gram import rank1_factors

    return rank1_factors(t.P[k] if conv else t.P[k].T)  # P in [d_in, d_out] layout


def _adam_loo_column(t: Targets) -> Column:
    return t.precondition_loo(t.end) if t.loo_second_moment else t.precondition(t.end)


def _adam_loo_carry(t: Targets, own: Column) -> Column:
    # the carry moves m only: P held (not P_loo), κ_s not moved by an example of step t
    return t.precondition(t.end) if t.loo_second_moment else own


def _adam2_column(t: Targets) -> Column:
    # linear in the target side: contract P ⊙ ½(mid + end) once, not two columns (each column
    # costs one forward-sized matmul per layer)
    return t.precondition({k: 0.5 * (t.mid[k] + t.end[k]) for k in t.P})


register_estimator(
    Estimator(
        "sgd",
        frozenset({"start"}),
        lambda t: t.lr_times(t.start),
        preconditioned=False,
        gram_factors=_sgd_gram,
        adam_family=False,
        cli_rank=3,
        column_rank=0,
        summary="lr · ∇l_val(w_t): plain In-Run Data Shapley, Adam's state ignored",
    )
)
register_estimator(
    Estimator(
        "adam",
        frozenset({"start"}),
        lambda t: t.precondition(t.start),
        gram_factors=_adam_gram,
        cli_rank=2,
        column_rank=1,
        summary="lr·P ⊙ ∇l_val(w_t): first order in the fixed-state Adam step",
    )
)
register_estimator(
    Estimator(
        "adam2",
        frozenset({"mid", "end"}),
        _adam2_column,
        cli_rank=0,
        column_rank=3,
        summary="lr·P ⊙ ½(∇l_val(w_t + Δ_0) + ∇l_val(w_{t+1})): midpoint, second order",
    )
)
register_estimator(
    Estimator(
        "adam-loo",
        frozenset({"end"}),
        _adam_loo_column,
        reads_loo_P=True,
        clip_linearised=True,
        carry=_adam_loo_carry,
        cli_rank=1,
        column_rank=2,
        summary="lr·P ⊙ ∇l_val(w_{t+1}): linearised leave-one-out of the real step",
    )
)

# The built-ins in registration order (InRunScorer's default) and in the order the CLI, scoring
# runs and prune present them (their default).
BUILTIN_ORDER: tuple[str, ...] = tuple(_REGISTRY)
DEFAULT_ORDER: tuple[str, ...] = preferred_order()
