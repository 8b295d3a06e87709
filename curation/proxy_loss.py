"""Per-document loss under a scoring run's final proxy, and the word-order gain built on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from curation.quality import order_gains


class RunProxy:
    """A scoring run's final proxy and tokenizer, ready to give per-document losses."""

    def __init__(self, run_dir: str | Path, device: str = "cpu", batch_size: int = 64) -> None:
        from transformers import GPT2LMHeadModel

        from curation.embed import _run_seq_len
        from curation.run_dir import RunDir
        from curation.tokenizer import load_tokenizer

        run = RunDir(Path(run_dir))
        self.model = GPT2LMHeadModel.from_pretrained(run.final_model).to(device).eval()
        self.tokenizer = load_tokenizer(run.tokenizer)
        self.seq_len, _ = _run_seq_len(run.path)
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def losses(self, texts: list[str]) -> np.ndarray:
        """Mean token loss of each plain text (truncated to the run's context)."""
        from adamshap_core import per_example_loss, prepare_batch
        from curation.encode import encode_corpus

        df = pl.DataFrame(
            {"id": [str(i) for i in range(len(texts))], "source": [""] * len(texts), "text": texts}
        )
        enc = encode_corpus(df, self.tokenizer, self.seq_len)
        out = []
        for s in range(0, len(enc), self.batch_size):
            batch = enc.batch(np.arange(s, min(len(enc), s + self.batch_size)))
            out.append(per_example_loss(self.model, prepare_batch(batch, self.device)).double())
        return torch.cat(out).cpu().numpy() if out else np.zeros(0)

    def fitting_prefixes(self, texts: list[str]) -> list[str]:
        """The part of each text whose tokens fit in the context (after the bos token)."""
        backend: Any = self.tokenizer.backend_tokenizer
        out = []
        for t, enc in zip(texts, backend.encode_batch(texts, add_special_tokens=False)):
            limit = self.seq_len - 1
            out.append(t if len(enc.ids) <= limit else t[: enc.offsets[limit - 1][1]])
        return out


def run_losses_and_order_gains(
    run_dir: str | Path, texts: list[str], device: str = "cpu", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Each text's mean token loss under RUN_DIR's proxy, and what shuffling its words costs."""
    proxy = RunProxy(run_dir, device)
    fits = proxy.fitting_prefixes(texts)
    base = proxy.losses(fits)
    return base, order_gains(proxy.losses, texts, fits, seed=seed, base=base)


def run_order_gains(
    run_dir: str | Path, texts: list[str], device: str = "cpu", seed: int = 0
) -> np.ndarray:
    """Nats per token RUN_DIR's proxy loses when each text's words are shuffled."""
    return run_losses_and_order_gains(run_dir, texts, device, seed)[1]
