"""InRunTrainer: a transformers.Trainer run valued example by example, training unchanged."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("accelerate")
datasets = pytest.importorskip("datasets")

from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments  # noqa: E402

from adamshap_core import InRunScorer, build_model  # noqa: E402
from adamshap_core.hf_trainer import InRunTrainer, trainer_batch  # noqa: E402
from curation.tokenizer import train_tokenizer  # noqa: E402

WORDS = (
    "the cat sat on a mat while the dog ran far away and a bird sang in the old tree near "
    "the river where fish swim under bright light of the summer sun"
).split()
ESTIMATORS = ("adam2", "adam-loo", "adam", "sgd")
CLIP = 4.0  # the first steps' gradients are larger: clipping on some steps, not others
STEPS = 6


def _texts(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(4, 18, (1,), generator=g))
        idx = torch.randint(0, len(WORDS), (k,), generator=g).tolist()
        out.append(" ".join(WORDS[i] for i in idx))
    return out


@pytest.fixture(scope="module")
def setup():
    tok = train_tokenizer(_texts(200, 1) + [" ".join(WORDS)], vocab_size=300)

    def ds(texts: list[str], prefix: str):
        enc = tok(texts, truncation=True, max_length=24)
        return datasets.Dataset.from_dict(
            {
                "id": [f"{prefix}-{i}" for i in range(len(texts))],
                "source": ["a" if i % 2 else "b" for i in range(len(texts))],
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
            }
        )

    train = ds(_texts(14, 2), "tr")
    target = ds(_texts(5, 3), "val")
    collator = DataCollatorForLanguageModeling(tok, mlm=False)
    model = build_model("tiny", len(tok), 32, seed=0, eos_token_id=tok.eos_token_id).double()
    return tok, train, target, collator, model


def _args(tmp_path, name: str, **over) -> TrainingArguments:
    kw = dict(
        output_dir=str(tmp_path / name),
        per_device_train_batch_size=4,
        max_steps=STEPS,
        learning_rate=3e-3,
        lr_scheduler_type="linear",
        warmup_steps=2,
        weight_decay=0.1,
        adam_beta2=0.95,
        max_grad_norm=CLIP,
        optim="adamw_torch",
        seed=0,
        data_seed=0,
        report_to=[],
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    kw.update(over)
    return TrainingArguments(**kw)


def test_values_equal_inrunscorer_and_weights_equal_plain_trainer(setup, tmp_path):
    tok, train, target, collator, model0 = setup
    plain_model = copy.deepcopy(model0)
    plain = Trainer(
        model=plain_model,
        args=_args(tmp_path, "plain"),
        train_dataset=train,
        data_collator=collator,
    )
    plain.train()

    scored_model = copy.deepcopy(model0)
    seen = []
    trainer = InRunTrainer(
        model=scored_model,
        args=_args(tmp_path, "scored"),
        train_dataset=train,
        data_collator=collator,
        target_dataset=target,
        estimators=ESTIMATORS,
        on_step_values=seen.append,
        keep_batches=True,
    )
    trainer.train()
    assert [r.step for r in seen] == list(range(1, STEPS + 1))
    norms = [r.grad_norm for r in seen]
    assert any(g > CLIP for g in norms) and any(g < CLIP for g in norms), norms
    # The Trainer logs the same per-step losses and pre-clip gradient norms as a plain run.
    logged = [h for h in plain.state.log_history if "loss" in h]
    mine = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == len(mine) == STEPS
    for h, k in zip(logged, mine):
        assert k["loss"] == pytest.approx(h["loss"], rel=1e-5)
        assert k["grad_norm"] == pytest.approx(h["grad_norm"], rel=1e-5)
    # Every example of the first epoch (14 rows, batches of 4) is seen exactly once.
    first = [i for r in seen[:4] for i in r.ids]
    assert sorted(first) == sorted(train["id"])
    assert {s for r in seen for s in r.sources} == {"a", "b"}

    # The trained weights are a plain Trainer run's (its loss takes the logits in float32).
    for (name, p), q in zip(plain_model.named_parameters(), scored_model.parameters()):
        scale = p.detach().abs().max().item()
        assert torch.allclose(q, p, rtol=0, atol=1e-6 * max(scale, 1.0)), name

    # Oracle: InRunScorer by hand on the same batches, with the Trainer's own optimizer/schedule.
    ref_model = copy.deepcopy(model0)
    ref = Trainer(model=ref_model, args=_args(tmp_path, "ref"), train_dataset=train)
    ref.create_optimizer_and_scheduler(num_training_steps=STEPS)
    val = trainer_batch(
        collator([{k: r[k] for k in ("input_ids", "attention_mask")} for r in target])
    )
    scorer = InRunScorer(
        ref_model,
        ref.optimizer,
        val,
        estimators=ESTIMATORS,
        max_grad_norm=CLIP,
        loss_reduction="token",
    )
    for r in seen:
        out = scorer.step(r.batch, token_denominator=r.token_denominator)
        ref.lr_scheduler.step()
        assert out.lr == pytest.approx(r.lr, rel=1e-12)
        for e in ESTIMATORS:
            a, b = r.values[e], out.values[e]
            assert a.dtype == torch.float64
            assert (a - b).abs().max() <= 1e-6 * b.abs().max(), (r.step, e)
    scorer.close()
    for p, q in zip(ref_model.parameters(), scored_model.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-12)


def test_token_loss_matches_the_models_own_labels_loss(setup):
    tok, train, target, collator, model0 = setup
    model = copy.deepcopy(model0)
    rows = [{k: train[i][k] for k in ("input_ids", "attention_mask")} for i in range(4)]
    batch = collator(rows)
    b = trainer_batch(batch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scorer = InRunScorer(model, opt, b, estimators=("sgd",), loss_reduction="token")
    hf = model(**batch).loss.item()
    out = scorer.step(b)
    scorer.close()
    assert out.loss == pytest.approx(hf, rel=1e-6)


def test_refuses_gradient_accumulation(setup, tmp_path):
    tok, train, target, collator, model0 = setup
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        InRunTrainer(
            model=copy.deepcopy(model0),
            args=_args(tmp_path, "ga", gradient_accumulation_steps=2),
            train_dataset=train,
            data_collator=collator,
            target_dataset=target,
        )


def test_refuses_labels_that_are_not_the_inputs():
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="labels differ"):
        trainer_batch({"input_ids": ids, "labels": torch.tensor([[2, 3, -100]])})
    with pytest.raises(ValueError, match="token_type_ids"):
        trainer_batch({"input_ids": ids, "labels": ids, "token_type_ids": ids})
