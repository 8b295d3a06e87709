"""Byte-level BPE training, saving and loading."""

from __future__ import annotations

import pytest

from curation.errors import UsageError
from curation.tokenizer import EOS, load_tokenizer, save_tokenizer, train_tokenizer
from tests.fixtures import fixture_rows


def _real_texts() -> list[str]:
    """Every text of the test corpus's first 40 documents per source (tests/fixtures.py)."""
    return [r["text"] for r in fixture_rows(40)]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return _real_texts()


def test_train_special_tokens_and_round_trip(texts):
    tok = train_tokenizer(texts, vocab_size=1000)
    assert len(tok) == 1000
    assert tok.eos_token == tok.bos_token == tok.pad_token == EOS
    assert tok.eos_token_id == tok.pad_token_id == tok.bos_token_id == 0
    sample = "Ünïcode ✓ and code: def f(x): return x**2\n\ttabs"
    ids = tok.encode(sample, add_special_tokens=False)
    assert tok.decode(ids) == sample  # byte-level: any text round-trips
    assert EOS not in tok.decode(tok.encode("plain text"))
    assert tok.convert_tokens_to_ids(EOS) == 0


def test_training_is_deterministic(texts):
    a = train_tokenizer(texts, vocab_size=800, seed=1)
    b = train_tokenizer(texts, vocab_size=800, seed=1)
    assert a.get_vocab() == b.get_vocab()
    c = train_tokenizer(texts, vocab_size=800, seed=1, max_texts=100)
    d = train_tokenizer(texts, vocab_size=800, seed=1, max_texts=100)
    assert c.get_vocab() == d.get_vocab()


def test_small_corpus_gives_smaller_vocab():
    tok = train_tokenizer(["tiny corpus", "tiny text"], vocab_size=4096)
    assert 257 <= len(tok) < 4096


@pytest.mark.parametrize("bad", [0, 100, 256, "4096"])
def test_bad_vocab_size(bad):
    with pytest.raises(UsageError, match="vocab size"):
        train_tokenizer(["some text"], vocab_size=bad)


def test_no_texts():
    with pytest.raises(UsageError):
        train_tokenizer([], vocab_size=300)


def test_save_load(tmp_path, texts):
    tok = train_tokenizer(texts[:100], vocab_size=500)
    folder = save_tokenizer(tok, tmp_path / "tok")
    assert (folder / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]
    loaded = load_tokenizer(folder)
    for t in texts[:20]:
        assert loaded.encode(t) == tok.encode(t)
    assert loaded.pad_token_id == loaded.eos_token_id == 0


def test_load_errors_name_the_folder(tmp_path):
    with pytest.raises(UsageError, match=str(tmp_path / "missing")):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not a tokenizer folder"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    with pytest.raises(UsageError, match="cannot load the tokenizer"):
        load_tokenizer(tmp_path / "bad")
