"""adamshap_core: Adam-aware In-Run Data Shapley for GPT-2 style models (pure torch, no I/O)."""

from .batch import per_example_loss, prepare_batch
from .models import PRESETS, build_model
from .training import plain_step, warmup_cosine

__all__ = ["PRESETS", "build_model", "per_example_loss", "plain_step", "prepare_batch", "warmup_cosine"]
