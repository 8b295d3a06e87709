"""adamshap_core: Adam-aware In-Run Data Shapley for GPT-2 style models (pure torch, no I/O)."""

from .batch import per_example_loss, prepare_batch
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
from .scorer import ESTIMATORS, InRunScorer, StepOutput
from .training import plain_step, warmup_cosine
from .unrolled import UnrolledWindow, unrolled_window_values

__all__ = [
    "ESTIMATORS",
    "PRESETS",
    "PropagatedStep",
    "InRunScorer",
    "ShapleyTruth",
    "StepOutput",
    "UnrolledWindow",
    "UnsupportedModuleError",
    "build_model",
    "leave_one_out",
    "leave_one_out_carry",
    "leave_one_out_window",
    "monte_carlo_shapley",
    "per_example_loss",
    "plain_step",
    "prepare_batch",
    "unrolled_window_values",
    "warmup_cosine",
]
