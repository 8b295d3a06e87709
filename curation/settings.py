"""The rules of the user-facing settings: each numeric setting of each stage, written once.

torch-, numpy- and polars-free, so the command line can apply them while parsing. `RULES` says,
per stage (`score`, `prune`, `verify`: the fields of `ScoreArgs`, `PruneArgs`, `VerifyArgs`),
what values each numeric setting takes. The stage models apply it (`check_settings`), and the
CLI's argparse types (`flows.cli.setting_type`) and the manifest loader (`run.<field>` keys) call
the same `Rule.problem`, so a bad value gets the same words everywhere: `argument --epochs: must
be >= 1, got 0` on the command line, `m.yaml: run.epochs: must be >= 1, got 0` in a manifest,
`epochs: must be >= 1, got 0` from Python. The keep fraction has its own function
(`validate_keep`), also only here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from curation.errors import UsageError

DEFAULT_KEEP = 0.7

# the word-valued settings' allowed values, spelled once (the CLI's `choices` and the stage
# models' checks both read these)
ON_BAD_ROWS = ("error", "skip")
PRECISIONS = ("fp32", "bf16")
RANK_BY = ("auto", "value", "perplexity", "value+perplexity", "value+dsir")
PRUNE_BY = ("row", "source")


def check_choice(option: str, value: object, choices: tuple[str, ...]) -> str:
    """`value` when it is one of `choices`, else UsageError naming `option` (e.g. `--by`)."""
    if value not in choices:
        raise UsageError(f"{option} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


@dataclass(frozen=True)
class Rule:
    """The values one numeric setting takes: an integer or a finite number within bounds.

    `low`/`high` are inclusive unless `low_open`/`high_open`; `optional`: None is allowed (the
    stage's default rule applies); `note` says what special values mean (e.g. `0 = off`).
    """

    integer: bool = False
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    optional: bool = False
    note: str = ""

    def describe(self) -> str:
        """The allowed range in words, e.g. `>= 1`, `in [0, 1)`, `> 0`; empty when unbounded."""
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"in {left}{lo:g}, {hi:g}{right}"
        elif lo is not None:
            text = f"{'>' if self.low_open else '>='} {lo:g}"
        elif hi is not None:
            text = f"{'<' if self.high_open else '<='} {hi:g}"
        else:
            text = ""
        return f"{text} ({self.note})" if self.note and text else text

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` (a message without the setting's name), or None."""
        if value is None and self.optional:
            return None
        kind = numbers.Integral if self.integer else numbers.Real
        bounds = self.describe()
        if not isinstance(value, kind) or isinstance(value, bool):
            what = "an integer" if self.integer else "a number"
            return f"not {what}: {_shown(value)}" + (f" (must be {bounds})" if bounds else "")
        if not self.integer and not math.isfinite(value):
            return f"must be a finite number{' ' + bounds if bounds else ''}, got {value}"
        if self._outside(value):
            return f"must be {bounds}, got {_shown(value)}"
        return None

    def _outside(self, v: float) -> bool:
        lo, hi = self.low, self.high
        below = lo is not None and (v <= lo if self.low_open else v < lo)
        return below or (hi is not None and (v >= hi if self.high_open else v > hi))

    def parse(self, text: str) -> Any:
        """The command-line text as this rule's kind (the text itself when it is not one)."""
        try:
            return int(text) if self.integer else float(text)
        except ValueError:
            return text

    def cli_type(self, kind_only: bool = False) -> Callable[[str], Any]:
        """An argparse type: the text parsed as this rule's kind, then checked by this rule.

        `kind_only`: only the kind here; the stage model applies the range, so a bad value is
        one error line (argparse adds its usage lines) naming the option (`flows.cli.main`).
        Defined here, not in flows.cli, so parsing an option does not bounce between modules.
        """
        import argparse

        def parse(text: str) -> Any:
            value = self.parse(text)
            problem = self.problem(value) if not kind_only or isinstance(value, str) else None
            if problem:
                raise argparse.ArgumentTypeError(problem)
            return value

        return parse


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


# shared rules (one object for the same meaning in several stages)
POSITIVE_INT = Rule(integer=True, low=1)
COUNT = Rule(integer=True, low=0)
ANY_INT = Rule(integer=True)
POSITIVE = Rule(low=0, low_open=True)
NON_NEGATIVE = Rule(low=0)
SEQ_LEN = Rule(integer=True, low=2, note="one input and one target token")
WARMUP_FRAC = Rule(low=0, high=1, high_open=True)
MAX_GRAD_NORM = Rule(low=0, low_open=True, optional=True, note="None: no clipping")
WEIGHT_DECAY = NON_NEGATIVE

RULES: dict[str, dict[str, Rule]] = {
    "score": {
        "vocab_size": POSITIVE_INT,
        "seq_len": SEQ_LEN,
        "batch_size": POSITIVE_INT,
        "target_batch_size": POSITIVE_INT,
        "epochs": Rule(integer=True, low=0, note="0 = warm start only, nothing scored"),
        "warm_start_steps": COUNT,
        "lr": POSITIVE,
        "weight_decay": WEIGHT_DECAY,
        "max_grad_norm": MAX_GRAD_NORM,
        "warmup_frac": WARMUP_FRAC,
        "rank": POSITIVE_INT,
        "target_chunk": Rule(integer=True, low=0, note="0 = the whole target batch"),
        "seed": ANY_INT,
        "checkpoint_every": POSITIVE_INT,
        "snapshots": Rule(integer=True, low=0, note="0 = in-run values only"),
        "sketch_dim": POSITIVE_INT,
        "momentum_window": Rule(integer=True, low=0, note="0 = off"),
    },
    "prune": {
        "clusters": Rule(integer=True, low=1, optional=True),
        "dedup_eps": Rule(low=0, note="0 = no near-duplicate removal"),
        "dedup_jaccard": Rule(low=0, high=1),
        "max_dedup_frac": NON_NEGATIVE,
        "floor": Rule(low=0, high=1, optional=True, note="0 = off"),
        "seed": ANY_INT,
        "target_frac": Rule(low=0, low_open=True, high=1, high_open=True),
        "min_chars": COUNT,
    },
    "verify": {
        "seeds": POSITIVE_INT,
        "steps": Rule(integer=True, low=1, optional=True),
        "epochs": POSITIVE_INT,
        "seq_len": SEQ_LEN,
        "batch_size": POSITIVE_INT,
        "lr": POSITIVE,
        "weight_decay": WEIGHT_DECAY,
        "max_grad_norm": MAX_GRAD_NORM,
        "warmup_frac": WARMUP_FRAC,
        "n_evals": POSITIVE_INT,
        "eval_batch_size": POSITIVE_INT,
        "vocab_size": POSITIVE_INT,
        "seed": ANY_INT,
    },
}


class SettingError(UsageError):
    """A setting with a value its rule refuses; `name` is the field, `problem` the rule's words."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")

    def __reduce__(self):  # type: ignore[override]
        """Pickle with the constructor arguments (Prefect copies errors)."""
        return (type(self), (self.name, self.problem))


def check_value(stage: str, name: str, value: Any) -> Any:
    """`value` when the rule of `stage`'s setting `name` takes it, else SettingError."""
    problem = RULES[stage][name].problem(value)
    if problem:
        raise SettingError(name, problem)
    return value


def check_settings(stage: str, args: Any) -> None:
    """SettingError for the first field of `args` (a stage model) that breaks its rule."""
    for name in RULES[stage]:
        check_value(stage, name, getattr(args, name))


def validate_keep(keep: object) -> float:
    """Parse and check a keep fraction: a number in (0, 1], else UsageError."""
    try:
        k = float(keep)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UsageError(f"--keep must be a number in (0, 1] (e.g. 0.7), got {keep!r}") from None
    if not math.isfinite(k) or k <= 0.0 or k > 1.0:
        raise UsageError(f"--keep must be in (0, 1], got {keep} (e.g. 0.7 keeps 70%)")
    return k


def resolve_keep(keep: float | None, run: dict[str, Any], where: str, hint: str = "") -> float:
    """`keep` (the --keep option), else the manifest's `run.keep` (default 0.7), checked.

    UsageError naming `where` (the manifest) and which of the two was wrong, plus `hint`.
    """
    value = keep if keep is not None else run.get("keep", DEFAULT_KEEP)
    try:
        return validate_keep(value)
    except UsageError as exc:
        what = "--keep" if keep is not None else "run.keep"
        raise UsageError(f"{where}: {what}: {exc}{hint}") from None
