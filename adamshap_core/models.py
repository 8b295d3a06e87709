"""Proxy GPT-2 presets, built from a config (no hub access needed)."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from .choices import PRESETS, Preset

__all__ = ["PRESETS", "Preset", "build_model"]


def build_model(
    preset: str,
    vocab_size: int,
    n_positions: int = 1024,
    seed: int | None = None,
    eos_token_id: int = 0,
) -> GPT2LMHeadModel:
    """Build a freshly initialised GPT-2 from a preset name (dropout off, tied embeddings)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=p.n_embd,
        n_layer=p.n_layer,
        n_head=p.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
    )
    if seed is not None:
        torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    model.config.use_cache = False
    return model
