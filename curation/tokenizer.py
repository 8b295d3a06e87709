"""Byte-level BPE tokenizer trained on the corpus, saved and loaded as an HF tokenizer folder."""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from curation.atomic import atomic_dir
from curation.errors import UsageError

EOS = "<|endoftext|>"
MIN_VOCAB = 257  # 256 bytes + the special token


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    seed: int = 0,
    max_texts: int | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE; `<|endoftext|>` (id 0) is eos, bos and pad.

    The result may hold fewer than `vocab_size` tokens on a small corpus: size the model with
    `len(tokenizer)`. With `max_texts`, a seeded random sample of that many texts is used.
    """
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
        raise UsageError(f"vocab size must be an integer >= {MIN_VOCAB}, got {vocab_size!r}")
    texts = list(texts)
    if max_texts is not None and len(texts) > max_texts:
        texts = random.Random(seed).sample(texts, max_texts)
    if not texts:
        raise UsageError("cannot train a tokenizer on no texts")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return _wrap(tok)


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=1_000_000_000,
    )


def save_tokenizer(tok: PreTrainedTokenizerFast, folder: str | Path) -> Path:
    """Save a tokenizer folder atomically (tokenizer.json and its configs); returns the folder."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        tok.save_pretrained(str(tmp))
    return folder


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer folder; pad falls back to eos. Raises UsageError naming the folder."""
    folder = Path(folder)
    if not folder.is_dir() or not (folder / "tokenizer.json").is_file():
        raise UsageError(
            f"{folder} is not a tokenizer folder (it needs a tokenizer.json, as written by "
            "save_pretrained or by `adamshap score`)"
        )
    try:
        tok = PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # tokenizers/transformers raise several types on bad files
        raise UsageError(f"cannot load the tokenizer in {folder}: {exc}") from None
    if tok.eos_token_id is None:
        raise UsageError(f"the tokenizer in {folder} has no eos token; set eos_token in its config")
    if tok.bos_token_id is None:
        tok.bos_token = tok.eos_token
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
