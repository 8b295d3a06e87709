"""Names a caller chooses from (model presets, ghost contractions), importable without torch.

The command line builds its `--preset` and `--contraction` choices from these, so a new preset or
contraction is added here once and every layer offers it.
"""

from __future__ import annotations

from dataclasses import dataclass


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
# the names alone, in the order above: what a command line or a settings check offers
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)

CONTRACTIONS: tuple[str, ...] = ("exact", "lowrank", "gram", "auto")
