"""Small models for the core tests: an HF GPT-2 and a model built from plain torch layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adamshap_core import build_model

V = 53


class TinyLM(nn.Module):
    """Embedding + positions + LayerNorm + Linear (biased) + tied output head."""

    def __init__(self, vocab: int = V, d: int = 12, n_pos: int = 32, tied: bool = True):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(n_pos, d)
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(2 * d, d, bias=False)
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.head.weight = self.wte.weight

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        h = self.wte(input_ids) + self.wpe(position_ids)
        h = h + self.proj(torch.tanh(self.fc(self.ln(h))))
        # a causal mixing step without parameters, so tokens interact
        h = torch.cumsum(h, dim=1) / torch.arange(1, h.shape[1] + 1).view(1, -1, 1)
        return self.head(self.ln_f(h))


def make_batch(n: int, T: int, vocab: int = V, pad_lengths: list[int] | None = None, seed=0):
    """Random token batch; rows shorter than T are right-padded with attention_mask 0."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, T), generator=g)
    attn = torch.ones(n, T, dtype=torch.long)
    if pad_lengths is not None:
        for i, L in enumerate(pad_lengths):
            attn[i, L:] = 0
            ids[i, L:] = 0
    return {"input_ids": ids, "attention_mask": attn}


@pytest.fixture
def gpt2():
    torch.manual_seed(0)
    return build_model("tiny", V, 32, seed=0).double()


@pytest.fixture
def tinylm():
    torch.manual_seed(0)
    return TinyLM().double()
