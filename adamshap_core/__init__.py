"""adamshap_core: Adam-aware In-Run Data Shapley for GPT-2 style models (pure torch, no I/O).

The names below are imported on first use (PEP 562), so a light submodule such as
`adamshap_core.estimators` (which the CLI reads for its `--help`) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_WHERE = {
    "per_example_loss": "batch",
    "prepare_batch": "batch",
    "UnsupportedModuleError": "ghost",
    "ShapleyTruth": "ground_truth",
    "leave_one_out": "ground_truth",
    "leave_one_out_carry": "ground_truth",
    "leave_one_out_window": "ground_truth",
    "monte_carlo_shapley": "ground_truth",
    "PRESETS": "models",
    "build_model": "models",
    "PropagatedStep": "momentum",
    "ReplayWindow": "window",
    "DEFAULT_ORDER": "estimators",
    "ESTIMATORS": "estimators",
    "Estimator": "estimators",
    "Targets": "estimators",
    "register_estimator": "estimators",
    "unregister_estimator": "estimators",
    "InRunScorer": "scorer",
    "StepOutput": "scorer",
    "UnrolledWindow": "unrolled",
    "unrolled_window_values": "unrolled",
    "plain_step": "training",
    "warmup_cosine": "training",
}

__all__ = [
    "DEFAULT_ORDER",
    "ESTIMATORS",
    "Estimator",
    "InRunScorer",
    "PRESETS",
    "PropagatedStep",
    "ReplayWindow",
    "ShapleyTruth",
    "StepOutput",
    "Targets",
    "UnsupportedModuleError",
    "build_model",
    "leave_one_out",
    "leave_one_out_carry",
    "leave_one_out_window",
    "monte_carlo_shapley",
    "per_example_loss",
    "plain_step",
    "prepare_batch",
    "register_estimator",
    "unregister_estimator",
    "unrolled_window_values",
    "UnrolledWindow",
    "warmup_cosine",
]


def __getattr__(name: str):
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{where}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .batch import per_example_loss, prepare_batch
    from .estimators import (
        DEFAULT_ORDER,
        ESTIMATORS,
        Estimator,
        Targets,
        register_estimator,
        unregister_estimator,
    )
    from .ghost import UnsupportedModuleError
    from .ground_truth import (
        ShapleyTruth,
        leave_one_out,
        leave_one_out_carry,
        leave_one_out_window,
        monte_carlo_shapley,
    )
    from .models import PRESETS, build_model
    from .momentum import PropagatedStep
    from .scorer import InRunScorer, StepOutput
    from .training import plain_step, warmup_cosine
    from .unrolled import UnrolledWindow, unrolled_window_values
    from .window import ReplayWindow
