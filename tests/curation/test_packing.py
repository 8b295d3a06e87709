"""Token-budget batches: the rows' real tokens end to end, every batch full, nothing lost."""

import numpy as np
import pytest
import torch

from curation.packing import TokenPacker
from curation.verify import Arrays, ProxyRun, TrainConfig, epoch_order, train_proxy


def _rows(lengths: list[int], seq_len: int, seed: int = 0) -> Arrays:
    """Padded rows with `lengths` real tokens each (token ids from 1, pad 0), loss on all but BOS."""
    rng = np.random.default_rng(seed)
    n = len(lengths)
    ids = np.zeros((n, seq_len), np.int32)
    attn = np.zeros((n, seq_len), np.int8)
    loss = np.zeros((n, seq_len), np.int8)
    for i, k in enumerate(lengths):
        ids[i, :k] = rng.integers(1, 50, k)
        attn[i, :k] = 1
        loss[i, 1:k] = rng.integers(0, 2, k - 1)  # a response-only mask, as instruction rows
    return Arrays(ids, attn, loss)


def test_packed_batches_are_the_rows_real_tokens_end_to_end() -> None:
    rows = _rows([5, 8, 3, 8, 6, 2], seq_len=8)
    packer = TokenPacker(rows.input_ids, rows.attention_mask, rows.loss_mask)
    visit = iter([2, 0, 5, 1, 4, 3])
    got_ids, got_loss = [], []
    for _ in range(4):  # 4 batches of 2 x 3 = 24 tokens; the six rows hold 32
        b = packer.fill(2, 3, lambda: next(visit))
        assert b["input_ids"].shape == (2, 3) and bool((b["attention_mask"] == 1).all())
        got_ids.append(b["input_ids"].reshape(-1).numpy())
        got_loss.append(b["loss_mask"].reshape(-1).numpy())
    order = [2, 0, 5, 1, 4, 3]
    want_ids = np.concatenate([rows.input_ids[r, : rows.attention_mask[r].sum()] for r in order])
    want_loss = np.concatenate([rows.loss_mask[r, : rows.attention_mask[r].sum()] for r in order])
    n = 4 * 6
    assert (np.concatenate(got_ids) == want_ids[:n]).all()
    assert (np.concatenate(got_loss) == want_loss[:n]).all()
    assert packer.buffered == 0  # rows 2, 0, 5, 1, 4 hold exactly 24 tokens: row 3 not pushed yet
    packer.push(3)
    packer.push(0)
    with pytest.raises(ValueError, match="buffered"):
        packer.pop(2, 8)  # 13 tokens buffered, 16 asked: nothing handed out, nothing lost
    rest = packer.pop(1, 10)["input_ids"].reshape(-1).numpy()
    assert (rest == np.r_[want_ids[n:], rows.input_ids[0, :2]]).all()
    assert packer.buffered == 3


def test_packed_training_feeds_every_step_the_same_token_count_in_visiting_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """train_proxy(packed) steps on batch x seq_len real tokens, taken from the arm's rows in the
    order epoch_order visits them (epochs wrapping), with each row's loss mask kept."""
    import adamshap_core

    seen: list[dict[str, torch.Tensor]] = []
    real = adamshap_core.plain_step

    def spy(model, opt, batch, max_grad_norm=None):  # noqa: ANN001, ANN202
        seen.append({k: v.clone() for k, v in batch.items()})
        return real(model, opt, batch, max_grad_norm)

    monkeypatch.setattr(adamshap_core, "plain_step", spy)
    seq_len, batch = 16, 4
    train = _rows([16, 3, 9, 12, 5, 16, 7], seq_len, seed=1)
    cfg = TrainConfig(seq_len=seq_len, batch_size=batch, lr=1e-3)
    run = ProxyRun(6, cfg, seed=2, vocab_size=64, packed=True, n_evals=1)
    train_proxy(train, train, run)
    assert len(seen) == 6
    rng = np.random.default_rng(2)
    order = np.concatenate([epoch_order(run, len(train), e, rng) for e in range(8)])
    real_len = train.attention_mask.sum(axis=1)
    stream = np.concatenate([train.input_ids[r, : real_len[r]] for r in order])
    stream_loss = np.concatenate([train.loss_mask[r, : real_len[r]] for r in order])
    got = np.concatenate([b["input_ids"].reshape(-1).numpy() for b in seen])
    got_loss = np.concatenate([b["loss_mask"].reshape(-1).numpy() for b in seen])
    assert len(got) == 6 * batch * seq_len  # one token budget, every step
    assert (got == stream[: len(got)]).all()
    assert (got_loss == stream_loss[: len(got)]).all()
    assert all(bool((b["attention_mask"] == 1).all()) for b in seen)


def test_unpacked_training_still_steps_on_whole_padded_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import adamshap_core

    seen: list[torch.Tensor] = []
    real = adamshap_core.plain_step

    def spy(model, opt, batch, max_grad_norm=None):  # noqa: ANN001, ANN202
        seen.append(batch["attention_mask"].sum())
        return real(model, opt, batch, max_grad_norm)

    monkeypatch.setattr(adamshap_core, "plain_step", spy)
    train = _rows([16, 3, 9, 12], 16)
    run = ProxyRun(2, TrainConfig(seq_len=16, batch_size=4), seed=0, vocab_size=64, n_evals=1)
    train_proxy(train, train, run)
    assert [int(x) for x in seen] == [40, 40]  # all four rows each step, padding not counted
