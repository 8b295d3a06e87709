"""`adamshap score --model DIR`: start from a saved checkpoint with that checkpoint's tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from adamshap_core import per_example_loss, prepare_batch
from curation.encode import encode_corpus
from curation.errors import UsageError
from curation.ledger import read_ledger
from curation.report import write_report
from curation.scoring_run import ScoreArgs, run_scoring
from curation.tokenizer import load_tokenizer, train_tokenizer
from flows.cli import main

WORDS = (
    "alpha beta gamma delta river stone light shadow north south east west quick slow bright "
    "dark winter summer garden market window"
).split()


def _text(rng: np.random.Generator, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi))))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("warm")
    rng = np.random.default_rng(0)
    # The checkpoint's tokenizer is trained on other text than the corpus (and is smaller than a
    # corpus-trained one would be), so using the wrong tokenizer shows.
    tok = train_tokenizer([_text(rng, 3, 12) for _ in range(300)], vocab_size=290)
    cfg = GPT2Config(
        vocab_size=len(tok), n_positions=48, n_embd=32, n_layer=1, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(3)
    model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, len(tok), (8, 16))
    for _ in range(5):  # move the weights away from any fresh initialisation
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(d / "ckpt")
    tok.save_pretrained(str(d / "ckpt"))  # beside the weights, as users save checkpoints
    rows = [
        {"id": f"c{i}", "source": "s" + str(i % 2), "text": _text(rng, 4, 14)} for i in range(12)
    ]
    (d / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tgt = [{"id": f"t{i}", "source": "t", "text": _text(rng, 4, 14)} for i in range(4)]
    (d / "target.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tgt))
    return {
        "dir": d,
        "ckpt": d / "ckpt",
        "corpus": d / "corpus.jsonl",
        "target": d / "target.jsonl",
    }


def test_score_model_dir_uses_the_checkpoint_and_its_tokenizer(ckpt, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(
        [
            "score", str(ckpt["corpus"]), "--target", str(ckpt["target"]), "--out", str(run),
            "--model", str(ckpt["ckpt"]), "--epochs", "1", "--warm-start-steps", "0",
            "--seq-len", "32", "--batch-size", "4", "--target-batch-size", "4",
            "--estimators", "adam,sgd",
        ]
    )  # fmt: skip
    assert rc == 0
    ck_tok = json.loads((ckpt["ckpt"] / "tokenizer.json").read_text())["model"]["vocab"]
    run_tok = json.loads((run / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert run_tok == ck_tok
    cfg = json.loads((run / "final_model" / "config.json").read_text())
    assert (cfg["n_layer"], cfg["n_embd"], cfg["vocab_size"]) == (1, 32, len(ck_tok))

    # The first scored step's losses are the checkpoint's own losses on those examples: the
    # weights were loaded (not a fresh preset) and the text was encoded with its tokenizer.
    ledger = read_ledger(run)
    first = ledger.filter(pl.col("step") == ledger["step"].min())
    model = GPT2LMHeadModel.from_pretrained(ckpt["ckpt"]).eval()
    df = pl.read_ndjson(ckpt["corpus"])
    enc = encode_corpus(df, load_tokenizer(ckpt["ckpt"]), 32)
    idx = [enc.ids.index(i) for i in first["id"].to_list()]
    with torch.no_grad():
        want = per_example_loss(model, prepare_batch(enc.batch(idx))).double().numpy()
    np.testing.assert_allclose(first["loss"].to_numpy(), want, rtol=1e-5)

    md, _ = write_report(run)
    text = md.read_text()
    assert f"warm start from checkpoint `{ckpt['ckpt']}`" in text
    assert "(1 layers x 32" in text and "the checkpoint's own" in text


def test_model_without_tokenizer_is_refused(ckpt, tmp_path):
    bare = tmp_path / "bare"
    GPT2LMHeadModel.from_pretrained(ckpt["ckpt"]).save_pretrained(bare)
    args = ScoreArgs(
        corpus=str(ckpt["corpus"]), target=str(ckpt["target"]), out=str(tmp_path / "r"),
        model=str(bare), seq_len=32, warm_start_steps=0, progress=False,
    )  # fmt: skip
    with pytest.raises(UsageError, match="--tokenizer"):
        run_scoring(args)
