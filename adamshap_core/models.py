"""Proxy GPT-2 presets, built from a config (no hub access needed)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GPT2Config, GPT2LMHeadModel


@dataclass(frozen=True)
class Preset:
    """Shape of a proxy GPT-2."""

    n_layer: int
    n_embd: int
    n_head: int


PRESETS: dict[str, Preset] = {
    "tiny": Preset(n_layer=2, n_embd=128, n_head=4),
    "cpu-small": Preset(n_layer=4, n_embd=256, n_head=4),
    "gpt2": Preset(n_layer=12, n_embd=768, n_head=12),
}


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
