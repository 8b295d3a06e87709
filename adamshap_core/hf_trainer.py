"""Value every example of an existing Hugging Face `transformers.Trainer` run.

`InRunTrainer` is a drop-in `Trainer` subclass: the Trainer keeps its data loader, collator,
AdamW optimizer (its own param groups), learning-rate schedule and gradient clipping; only
`training_step` changes. Each step hands the collated batch to an `InRunScorer`, which runs the
forward and backward, clips with `args.max_grad_norm` and takes the real AdamW step of the
Trainer's own optimizer. The Trainer's own `optimizer.step()` that follows then finds no
gradients and changes nothing (torch's Adam/AdamW skip parameters without a gradient), so the
trained weights are those of a plain Trainer run, up to floating-point rounding.

The loss is the Trainer's: the summed cross-entropy of the counted label tokens
(`labels != -100`) divided by the Trainer's `num_items_in_batch` (its own token count; without
one, the number of counted tokens), i.e. `InRunScorer(loss_reduction="token")`. What cannot be reproduced
exactly is refused with a clear error: gradient accumulation, data parallelism, fp16/bf16
mixed precision, labels that are not the inputs, label tokens under attention_mask 0, and
batch keys other than input_ids / attention_mask / labels / position_ids.

Pure torch/transformers: values go to a callback (`on_step_values`); writing them to files is
the caller's business (see `curation.trainer_ledger.TrainerLedger`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer

from .batch import n_target_tokens, prepare_batch
from .estimators import DEFAULT_ORDER
from .scorer import InRunScorer

ID_KEY = "adamshap_ids"
SOURCE_KEY = "adamshap_sources"
ALLOWED_KEYS = frozenset({"input_ids", "attention_mask", "labels", "position_ids"})


@dataclass
class StepValues:
    """The values of one optimizer step of a Trainer run (one entry per example of its batch)."""

    step: int  # global optimizer step, 1-based (Trainer's state.global_step after the step)
    epoch: int  # 0-based epoch the step belongs to
    ids: list[str]
    sources: list[str]
    lr: float
    losses: torch.Tensor  # [n] per-example training losses at w_t
    values: dict[str, torch.Tensor]  # estimator -> float64 [n]
    n_tokens: torch.Tensor  # [n] counted target tokens per example
    loss: float  # the batch's training loss (token mean), as the Trainer logs it
    grad_norm: float | None
    token_denominator: float | None  # what the summed token loss was divided by
    batch: dict[str, torch.Tensor] | None = None  # the scored batch, when keep_batches=True


class _TaggingCollator:
    """Take the id/source fields off each feature, collate the rest, and attach them as lists."""

    def __init__(self, inner: Callable, id_column: str, source_column: str) -> None:
        self.inner = inner
        self.id_column = id_column
        self.source_column = source_column

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Collate `features`, keeping their ids and sources beside the tensors."""
        ids, sources, rest = [], [], []
        for f in features:
            if self.id_column not in f:
                raise ValueError(
                    f"InRunTrainer: a training row has no {self.id_column!r} field; give the "
                    "dataset an id column (a datasets.Dataset without one gets row numbers)"
                )
            ids.append(str(f[self.id_column]))
            sources.append(str(f.get(self.source_column, "train")))
            rest.append(
                {k: v for k, v in f.items() if k not in (self.id_column, self.source_column)}
            )
        batch = dict(self.inner(rest))
        batch[ID_KEY] = ids
        batch[SOURCE_KEY] = sources
        return batch


def trainer_batch(inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Convert a collated causal-LM Trainer batch into an InRunScorer batch (refusing what differs)."""
    extra = sorted(set(inputs) - ALLOWED_KEYS)
    if extra:
        raise ValueError(
            f"InRunTrainer scores causal-LM batches of {sorted(ALLOWED_KEYS)}; this batch also "
            f"has {extra}, which the scorer's forward would ignore"
        )
    if "input_ids" not in inputs or "labels" not in inputs:
        raise ValueError(
            "InRunTrainer needs batches with input_ids and labels (a causal-LM collator)"
        )
    ids = inputs["input_ids"]
    labels = inputs["labels"]
    attn = inputs.get("attention_mask")
    attn = torch.ones_like(ids) if attn is None else attn.long()
    counted = labels != -100
    if not torch.equal(labels[counted], ids[counted]):
        raise ValueError(
            "InRunTrainer: labels differ from input_ids on counted tokens; the scorer's loss "
            "predicts each token from the ones before it (labels = input_ids, -100 = ignored)"
        )
    if bool((counted & (attn == 0)).any()):
        raise ValueError("InRunTrainer: some label tokens lie under attention_mask 0")
    batch = {"input_ids": ids, "attention_mask": attn, "loss_mask": counted.long()}
    pos = inputs.get("position_ids")
    if pos is not None:
        if not torch.equal(pos.to(ids.device), prepare_batch(batch)["position_ids"]):
            raise ValueError(
                "InRunTrainer: position_ids differ from the running count of real tokens, "
                "which is what the scorer uses"
            )
    return batch


@dataclass(frozen=True)
class Valuation:
    """What `InRunTrainer` adds to a Trainer (each also an `InRunTrainer` keyword argument)."""

    target_dataset: Any = None
    target_batch: Mapping[str, torch.Tensor] | None = None
    estimators: Iterable[str] = DEFAULT_ORDER
    on_step_values: Callable[[StepValues], None] | None = None
    id_column: str = "id"
    source_column: str = "source"
    keep_batches: bool = False
    scorer_options: Mapping[str, Any] | None = None


class InRunTrainer(Trainer):
    """A `transformers.Trainer` that values every training example with Adam-aware In-Run Shapley.

    Extra keyword arguments (the fields of `Valuation`; or pass `valuation=Valuation(...)`):
    `target_dataset` (rows in the training data's format, collated by
    the Trainer's own collator into the target batch) or `target_batch` (a ready batch dict);
    `estimators`; `on_step_values` (called with a `StepValues` after every step);
    `id_column` / `source_column` (training-row fields naming each example and its source; a
    `datasets.Dataset` without an id column gets `row-<n>`); `keep_batches`; `scorer_options`
    (more `InRunScorer` keyword arguments, e.g. `target_chunk`).
    """

    def __init__(self, *args: Any, valuation: Valuation | None = None, **kwargs: Any) -> None:
        """`kwargs` that are `Valuation` fields set it (overriding `valuation`); the rest go to
        `transformers.Trainer`."""
        own = {f.name for f in dataclasses.fields(Valuation)}
        chosen = {k: kwargs.pop(k) for k in list(kwargs) if k in own}
        v = dataclasses.replace(valuation or Valuation(), **chosen)
        target_dataset, target_batch, id_column = v.target_dataset, v.target_batch, v.id_column
        super().__init__(*args, **kwargs)
        a = self.args
        if a.gradient_accumulation_steps != 1:
            raise ValueError(
                "InRunTrainer values one optimizer step per batch: gradient_accumulation_steps "
                f"= {a.gradient_accumulation_steps} is not supported (set it to 1 and raise "
                "per_device_train_batch_size instead)"
            )
        if a.world_size > 1:
            raise ValueError(
                "InRunTrainer runs in one process (world_size 1); use adamshap score under torchrun for data parallel runs"
            )
        if a.fp16 or a.bf16:
            raise ValueError(
                "InRunTrainer does not support fp16/bf16 mixed precision (the values would not be exact)"
            )
        if (target_dataset is None) == (target_batch is None):
            raise ValueError("InRunTrainer needs exactly one of target_dataset or target_batch")
        self.target_dataset = target_dataset
        self.target_batch = target_batch
        self.estimators = tuple(v.estimators)
        self.on_step_values = v.on_step_values
        self.id_column = id_column
        self.source_column = v.source_column
        self.keep_batches = v.keep_batches
        self.scorer_options = dict(v.scorer_options or {})
        self.step_values: list[StepValues] = []  # kept here when no on_step_values is given
        self._scorer: InRunScorer | None = None
        self._last_grad_norm: float | None = None
        ds = self.train_dataset
        if ds is not None and hasattr(ds, "column_names") and hasattr(ds, "add_column"):
            if id_column not in ds.column_names:
                self.train_dataset = ds.add_column(id_column, [f"row-{i}" for i in range(len(ds))])

    # ------------------------------------------------------------------ data
    def get_train_dataloader(self) -> Any:
        """The Trainer's training loader, with each batch carrying its examples' ids and sources."""
        inner = self.data_collator
        self._set_signature_columns_if_needed()
        sig = list(self._signature_columns)
        self._signature_columns = sig + [
            c for c in (self.id_column, self.source_column) if c not in sig
        ]
        self.data_collator = _TaggingCollator(inner, self.id_column, self.source_column)
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = inner
            self._signature_columns = sig

    def _target(self) -> dict[str, torch.Tensor]:
        if self.target_batch is not None:
            b = dict(self.target_batch)
            return trainer_batch(b) if "labels" in b else b
        ds = self.target_dataset
        if hasattr(ds, "column_names"):
            ds = self._remove_unused_columns(ds, description="target")
        drop = (self.id_column, self.source_column)
        rows = [{k: v for k, v in dict(ds[i]).items() if k not in drop} for i in range(len(ds))]
        return trainer_batch(self.data_collator(rows))

    # ------------------------------------------------------------------ the step
    def _raw_optimizer(self) -> torch.optim.Optimizer:
        opt: Any = self.optimizer
        while not isinstance(opt, torch.optim.Adam | torch.optim.AdamW) and hasattr(
            opt, "optimizer"
        ):
            opt = opt.optimizer
        if not isinstance(opt, torch.optim.Adam | torch.optim.AdamW):
            raise TypeError(
                f"InRunTrainer needs torch's Adam/AdamW (optim='adamw_torch'), got {type(opt).__name__}"
            )
        return opt

    def _make_scorer(self, model: torch.nn.Module) -> InRunScorer:
        device = next(model.parameters()).device
        val = {k: v.to(device) for k, v in self._target().items()}
        clip = self.args.max_grad_norm
        return InRunScorer(
            model,
            self._raw_optimizer(),
            val,
            estimators=self.estimators,
            max_grad_norm=float(clip) if clip and clip > 0 else None,
            loss_reduction="token",
            **self.scorer_options,
        )

    def training_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: Any = None,
    ) -> torch.Tensor:
        """Score this batch and take the real AdamW step (clipped as the Trainer clips)."""
        inputs = dict(inputs)
        ids = inputs.pop(ID_KEY, None)
        sources = inputs.pop(SOURCE_KEY, None)
        if ids is None:
            raise ValueError(
                "InRunTrainer: the batch carries no example ids (custom train loader?)"
            )
        model.train()
        inputs = self._prepare_inputs(inputs)
        if self._scorer is None:
            self._scorer = self._make_scorer(model)
        b = trainer_batch(inputs)
        # The Trainer divides the summed token loss by its own count of label tokens
        # (`num_items_in_batch`, which for some models includes each row's first label);
        # without one, the model's loss is the mean over the counted tokens.
        denom = None
        if num_items_in_batch is not None:
            denom = float(
                num_items_in_batch.item()
                if torch.is_tensor(num_items_in_batch)
                else num_items_in_batch
            )
        out = self._scorer.step(b, token_denominator=denom)
        self._last_grad_norm = out.grad_norm
        rec = StepValues(
            step=self.state.global_step + 1,
            epoch=int(math.floor(self.state.epoch or 0.0)),
            ids=list(ids),
            sources=list(sources),
            lr=out.lr,
            losses=out.example_losses.detach().cpu(),
            values=out.values,
            n_tokens=n_target_tokens(prepare_batch(b)).long().cpu(),
            loss=out.loss,
            grad_norm=out.grad_norm,
            token_denominator=denom,
            batch={k: v.detach().cpu() for k, v in b.items()} if self.keep_batches else None,
        )
        if self.on_step_values is not None:
            self.on_step_values(rec)
        else:
            self.step_values.append(rec)
        return torch.tensor(out.loss, device=self.args.device)

    def _clip_grad_norm(self, model: torch.nn.Module) -> Any:
        """The scorer has clipped already: report its pre-clip norm instead of re-clipping."""
        if self._last_grad_norm is not None:
            return torch.tensor(self._last_grad_norm)
        return super()._clip_grad_norm(model)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """Run `Trainer.train`, removing the scorer's hooks from the model afterwards."""
        try:
            return super().train(*args, **kwargs)
        finally:
            if self._scorer is not None:
                self._scorer.close()
                self._scorer = None
