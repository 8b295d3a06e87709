"""Tokenise a corpus frame into fixed-length arrays the scorer batches from.

Policy: every document starts with the bos (= eos) token and is truncated to `seq_len` tokens
in all; truncated documents are flagged in `EncodedCorpus.truncated` (and counted in reports).
Shorter documents are right-padded with the pad token (attention_mask 0 there). `loss_mask`
is 1 on the tokens that count as prediction targets: every real token after bos for plain text,
only tokens that overlap the response's characters for prompt/response rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from tokenizers import Encoding, Tokenizer
from transformers import PreTrainedTokenizerBase

from curation.corpus import DEFAULT_TEMPLATE, join_template
from curation.errors import UsageError


@dataclass
class EncodedCorpus:
    """Token arrays of a corpus, one row per document, in the frame's order."""

    ids: list[str]
    sources: list[str]
    input_ids: np.ndarray  # int32 [N, T]
    attention_mask: np.ndarray  # int8 [N, T]
    loss_mask: np.ndarray  # int8 [N, T]
    n_tokens: np.ndarray  # int32 [N], counted target tokens
    truncated: np.ndarray  # bool [N]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def seq_len(self) -> int:
        """Context length T."""
        return int(self.input_ids.shape[1])

    def batch(self, idx: np.ndarray | list[int]) -> dict[str, torch.Tensor]:
        """Batch dict of rows `idx`: input_ids, attention_mask, loss_mask (all LongTensor)."""
        idx = np.asarray(idx, dtype=np.int64)
        return {
            "input_ids": torch.from_numpy(self.input_ids[idx].astype(np.int64)),
            "attention_mask": torch.from_numpy(self.attention_mask[idx].astype(np.int64)),
            "loss_mask": torch.from_numpy(self.loss_mask[idx].astype(np.int64)),
        }

    def select(self, idx: np.ndarray | list[int]) -> EncodedCorpus:
        """A new EncodedCorpus holding rows `idx`."""
        idx = np.asarray(idx, dtype=np.int64)
        return EncodedCorpus(
            ids=[self.ids[i] for i in idx],
            sources=[self.sources[i] for i in idx],
            input_ids=self.input_ids[idx],
            attention_mask=self.attention_mask[idx],
            loss_mask=self.loss_mask[idx],
            n_tokens=self.n_tokens[idx],
            truncated=self.truncated[idx],
        )


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if bos is None or pad is None:
        raise UsageError("the tokenizer needs an eos (or bos and pad) token")
    return int(bos), int(pad)


def _plain_backend(tokenizer: PreTrainedTokenizerBase) -> Tokenizer:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UsageError("encode_corpus needs a fast (Rust) tokenizer")
    tok = Tokenizer.from_str(backend.to_str())  # a copy: never change the caller's settings
    tok.no_truncation()
    tok.no_padding()
    return tok


ENCODE_BATCH = 4096  # texts per encode_batch call: the Encoding objects of a whole corpus
# (token strings, offsets, masks) take many times the memory of the ids kept from them


def _encodings(backend: Tokenizer, texts: list[str]) -> Iterator[tuple[int, Encoding]]:
    """(index, encoding) of every text, tokenised ENCODE_BATCH texts at a time."""
    for a in range(0, len(texts), ENCODE_BATCH):
        encs = backend.encode_batch(texts[a : a + ENCODE_BATCH], add_special_tokens=False)
        yield from enumerate(encs, start=a)


def encode_corpus(
    df: pl.DataFrame,
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    template: str = DEFAULT_TEMPLATE,
) -> EncodedCorpus:
    """Tokenise `df` (id, source, text[, prompt, response]) into [N, seq_len] arrays."""
    if not isinstance(seq_len, int) or seq_len < 2:
        raise UsageError(f"seq_len must be an integer >= 2, got {seq_len!r}")
    n = df.height
    bos, pad = _special_ids(tokenizer)
    texts = df["text"].to_list()
    spans: list[tuple[int, int] | None] = [None] * n
    if "prompt" in df.columns and "response" in df.columns:
        for i, (p, r) in enumerate(zip(df["prompt"].to_list(), df["response"].to_list())):
            if p is not None and r is not None:
                texts[i], start, end = join_template(template, p, r)
                spans[i] = (start, end)
    backend = _plain_backend(tokenizer)

    input_ids = np.full((n, seq_len), pad, dtype=np.int32)
    attention = np.zeros((n, seq_len), dtype=np.int8)
    loss = np.zeros((n, seq_len), dtype=np.int8)
    truncated = np.zeros(n, dtype=bool)
    for i, enc in _encodings(backend, texts):
        toks = enc.ids
        keep = min(len(toks), seq_len - 1)
        truncated[i] = len(toks) > keep
        input_ids[i, 0] = bos
        input_ids[i, 1 : keep + 1] = toks[:keep]
        attention[i, : keep + 1] = 1
        span = spans[i]
        if span is None:
            loss[i, 1 : keep + 1] = 1
        else:
            offs = np.asarray(enc.offsets[:keep], dtype=np.int64).reshape(-1, 2)
            loss[i, 1 : keep + 1] = (offs[:, 1] > span[0]) & (offs[:, 0] < span[1])
    return EncodedCorpus(
        ids=df["id"].to_list(),
        sources=df["source"].to_list(),
        input_ids=input_ids,
        attention_mask=attention,
        loss_mask=loss,
        n_tokens=loss.sum(axis=1, dtype=np.int32),
        truncated=truncated,
    )
