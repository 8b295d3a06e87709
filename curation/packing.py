"""Token-budget batches: training rows laid end to end and cut into full rows of `seq_len` tokens.

A row-per-document batch spends the same number of *rows* on every arm, so an arm that keeps
longer documents trains on more real tokens (on the pruning benchmark's pool the default's
kept set holds 108 real tokens per row, DSIR's 93-94). Packing gives every step exactly
`batch_size * seq_len` tokens whatever the arm kept: the token budget the arms are compared at,
as language-model pretraining spends it. Each document keeps its own leading BOS, which separates
it from the one before; the first token of a packed row has no prefix and is never a loss target
(the loss predicts position t from the positions before it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


class TokenPacker:
    """Real tokens of training rows, appended in visiting order, handed out as full rows."""

    def __init__(self, input_ids: np.ndarray, attention_mask: np.ndarray, loss_mask: np.ndarray):
        self._ids, self._attn, self._loss = input_ids, attention_mask, loss_mask
        self._lengths = np.asarray(attention_mask, np.int64).sum(axis=1)
        self._buf_ids: list[np.ndarray] = []
        self._buf_loss: list[np.ndarray] = []
        self.buffered = 0  # tokens appended and not yet handed out

    def push(self, row: int) -> None:
        """Append row `row`'s real tokens (its attention span) to the stream."""
        n = int(self._lengths[row])
        if n == 0:
            return
        self._buf_ids.append(np.asarray(self._ids[row, :n]))
        self._buf_loss.append(np.asarray(self._loss[row, :n]))
        self.buffered += n

    def pop(self, rows: int, seq_len: int) -> dict[str, torch.Tensor]:
        """The next `rows` x `seq_len` tokens as a batch dict; the rest stays buffered."""
        need = rows * seq_len
        if self.buffered < need:
            raise ValueError(f"{self.buffered} tokens buffered, {need} needed")
        ids, loss = np.concatenate(self._buf_ids), np.concatenate(self._buf_loss)
        self._buf_ids, self._buf_loss = [ids[need:]], [loss[need:]]
        self.buffered -= need
        shape = (rows, seq_len)
        return {
            "input_ids": torch.as_tensor(ids[:need].reshape(shape)).long(),
            "attention_mask": torch.ones(shape, dtype=torch.long),
            "loss_mask": torch.as_tensor(loss[:need].reshape(shape)).long(),
        }

    def fill(self, rows: int, seq_len: int, next_row: Callable[[], int]) -> dict[str, torch.Tensor]:
        """Push rows from `next_row()` until `rows` x `seq_len` tokens are buffered; pop them."""
        while self.buffered < rows * seq_len:
            self.push(next_row())
        return self.pop(rows, seq_len)
