"""InRunScorer: one real AdamW training step per call, with every example valued on the way."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.profiler import record_function

from .batch import (
    logits_of,
    n_target_tokens,
    per_example_loss,
    per_example_loss_from_logits,
    prepare_batch,
)
from .estimators import (
    BUILTIN_ORDER,
    ESTIMATORS,
    Estimator,
    Targets,
    check_estimators,
    column_order,
    default_clip_linearised,
    gram_estimators,
)
from .ghost import Conv1D, GhostCapture
from .gram import GramSide
from .lowrank import CONTRACTIONS, LowRank, randomized_lowrank, use_lowrank
from .momentum import MomentumWindow, PropagatedStep
from .preconditioner import (
    check_optimizer,
    loo_preconditioner,
    lr_scale,
    preconditioner,
    shared_step_params,
)

__all__ = ["ESTIMATORS", "InRunScorer", "LOSS_REDUCTIONS", "ScorerOptions", "StepOutput"]

LOSS_REDUCTIONS: tuple[str, ...] = ("example", "token")
# contraction column of the clipped batch gradient ĝ (not a valid estimator name)
_GHAT = "(ghat)"


@dataclass
class StepOutput:
    """What one scored step returns."""

    values: dict[str, torch.Tensor]  # estimator -> float64 [n], positive = lowered target loss
    loss: float  # training loss (mean of per-example losses) at w_t
    val_loss: float  # target loss at w_t
    val_loss_after: float | None  # target loss at w_{t+1} when an estimator evaluated it
    lr: float  # lr of the first param group used in this step
    example_losses: torch.Tensor  # [n] per-example training losses at w_t
    grad_norm: float | None  # unclipped batch-gradient norm when clipping is on
    clipped: bool  # whether clipping scaled this step's gradient
    # momentum_window=K: the propagated values of the steps whose K-step window closed now
    propagated: list[PropagatedStep] = field(default_factory=list)


@dataclass
class _ValGrad:
    grads: dict[int, torch.Tensor]
    loss: float
    versions: tuple[int, ...]
    val_version: int


@dataclass(frozen=True)
class ScorerOptions:
    """Every `InRunScorer` setting but the model, optimizer and target batch (see InRunScorer).

    `InRunScorer(model, opt, val, estimators=..., max_grad_norm=1.0)` still works: keyword
    settings are these fields and override a given `options`.
    """

    estimators: Iterable[str] = BUILTIN_ORDER
    max_grad_norm: float | None = None
    clip_linearised: Iterable[str] | None = None
    reuse_val_grad_across_batches: bool = False
    amp_dtype: torch.dtype | None = None
    loo_second_moment: bool = False
    process_group: dist.ProcessGroup | None = None
    val_grad_every: int = 1
    contraction: str = "exact"
    rank: int = 8
    lowrank_niter: int = 1
    seed: int = 0
    # target examples per target-gradient piece, as at every layer (CLI --target-chunk,
    # ScoreArgs.target_chunk): 0 = the whole target batch at once (None: the same)
    target_chunk: int | None = 8
    momentum_window: int = 0
    loss_reduction: str = "example"


@dataclass
class _Contracted:
    """One step's contraction: val-side columns, contracted columns, kept records, values."""

    cols: dict[str, dict[int, torch.Tensor]]
    col: dict[str, torch.Tensor]
    records: list
    values: dict[str, torch.Tensor]


class InRunScorer:
    """Adam-aware In-Run Data Shapley: values every training example while training for real.

    `estimators` is any subset of the registered ones, by default the built-in
    ("sgd", "adam", "adam2", "adam-loo") (docs/method.md §3); everything estimator-specific is
    read from their entries in the table (estimators.py). `clip_linearised` names the
    estimators that include the linearised effect of each example on the clipping coefficient
    (default: those whose entry says so, adam-loo only). Used as a context manager, it removes
    its hooks from the model on exit (`close()`). With `reuse_val_grad_across_batches`, the
    target gradient after step t serves as the start gradient of step t+1 even when the target
    batch was redrawn in between (unbiased; halves target passes). With `loo_second_moment`,
    `adam-loo` also linearises each example's effect on Adam's second moment instead of holding
    it fixed (same single contraction, different val-side tensor).

    Speed options (benchmarks/results/speed.md measures each against the exact contraction):

    - `val_grad_every=k` recomputes the start-of-step target gradient ∇l_val(w_t) (used by `sgd`
      and `adam`) only every k steps and reuses the last one in between; the preconditioner P
      is still this step's. Bias: a step j < k steps after the refresh values examples against
      ∇l_val(w_{t-j}) instead of ∇l_val(w_t), an error of about Σ_j H_val·Δw (the curvature of
      the target loss times the last j updates); values are no longer exact, and `val_loss` is
      the target loss at the refresh step. A fresh end-of-step gradient (computed anyway by
      `adam2`/`adam-loo`) is always preferred. `adam2`/`adam-loo` themselves stay exact.
    - `contraction="lowrank"` replaces each Linear/Conv1D weight's val-side tensor
      G̃ = lr·P ⊙ ∇l_val (per estimator column) by a rank-`rank` seeded randomised SVD and
      contracts through the factors: nT·(d_in + d_out)·r instead of nT·d_in·d_out per layer.
      Embeddings (tied or not), biases and LayerNorms stay exact. `"auto"` uses the low-rank
      form only where (d_in + d_out)·r < d_in·d_out / 4, so small layers stay exact.
      `"exact"` (the default, with `val_grad_every=1`) is the exact path the tests check
      against torch.func and real optimizer steps; benchmarks/results/speed.md shows why it
      stays the default (low-rank saves ≤ 5% here and its fidelity depends on the data).
    - `contraction="gram"` (`sgd`/`adam` only) contracts each untied Linear/Conv1D layer token
      against token with the target pass's kept inputs and output gradients and a rank-1
      (Adafactor) factorisation of P: `nT·T_val·(d_in + d_out)` instead of `nT·d_in·d_out`,
      so it pays only for small target batches (gram.py). Exact for `sgd` (constant P).
      `"auto"` uses it where it costs under a quarter of exact and less than low-rank, and only
      when every estimator allows it.

    Memory option: `target_chunk=k` takes each target gradient in pieces of k target examples,
    summed (equal to the whole-batch gradient up to float rounding). `adam2` and `adam-loo`
    take their target gradients after the training backward, while every layer's captured
    inputs and output gradients are still held; chunking caps that pass's activations at one
    piece's: at cpu-small seq 128 with all four estimators, chunks of 8 (the default) cut the
    peak of live tensors from 1.66x to 1.27x plain training at no measurable speed cost
    (benchmarks/results/throughput.md). 0 (or None) takes the target batch whole, as
    `--target-chunk 0` and `ScoreArgs(target_chunk=0)` do.

    Momentum option: `momentum_window=K` also follows each example's gradient through Adam's
    first moment for the K steps after it was drawn (momentum.py): each `StepOutput.propagated`
    lists the steps whose window closed at this step, with own value + carry-over per estimator;
    `flush_momentum()` closes the windows still open at the end of training. Exact (ghost
    contraction of the kept records, once per step); costs K steps' records in memory. Open
    windows (their records and accumulated val sides) are part of `state_dict()`, so a run
    resumed from a checkpoint closes them exactly as an uninterrupted run would.

    Training loss: `loss_reduction="example"` (the default) trains on the mean of the
    per-example losses; `"token"` on the mean over every counted target token of the batch
    (sum of token losses / number of counted tokens), which is what a Hugging Face causal-LM
    loss with `labels` computes. Either way each example is valued by its share of the batch
    gradient the real step used; the target loss stays the mean of per-example losses.

    Data parallel (torchrun, gloo or NCCL): when `torch.distributed` is initialised, every rank
    passes its shard of the global batch and of the target batch; losses are normalised by the
    global counts and gradients are all-reduced (as DDP does), so every rank takes the identical
    optimizer step and values its own examples against the all-reduced target gradient.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        val_batch: Mapping[str, torch.Tensor],
        options: ScorerOptions | None = None,
        **settings: Any,
    ):
        """`settings` are `ScorerOptions` fields by keyword (they override `options`)."""
        opts = dataclasses.replace(options or ScorerOptions(), **settings)
        self.options = opts
        self.estimators = check_estimators(opts.estimators)
        # the entries as registered now: a later re-registration does not change a live scorer
        self._table: dict[str, Estimator] = {e: ESTIMATORS[e] for e in self.estimators}
        self._needs = frozenset().union(*(est.targets for est in self._table.values()))
        self._column_order = column_order(self.estimators)
        check_optimizer(optimizer)
        self.model = model
        self.optimizer = optimizer
        self.max_grad_norm = opts.max_grad_norm
        self.clip_linearised = frozenset(
            default_clip_linearised() if opts.clip_linearised is None else opts.clip_linearised
        )
        self.reuse_val_grad_across_batches = opts.reuse_val_grad_across_batches
        self.amp_dtype = opts.amp_dtype
        self.loo_second_moment = opts.loo_second_moment
        self.group = opts.process_group
        self.distributed = dist.is_available() and dist.is_initialized()
        self._check_options(opts)
        self.lowrank_niter = int(opts.lowrank_niter)
        self.params = self._trainable_params(model, optimizer)
        self.device = self.params[0].device
        self.contract_dtype = (
            torch.float64 if any(p.dtype == torch.float64 for p in self.params) else torch.float32
        )
        self.capture = GhostCapture(model)
        self._lowrank_ids = [
            k
            for k, w in self.capture.matmul_weights().items()
            if use_lowrank(tuple(w.shape), self.rank, opts.contraction)
        ]
        self._gram_candidates = self._gram_layers()
        self._gen = torch.Generator(device=self.device).manual_seed(opts.seed)
        self._val_version = 0
        self._cache: _ValGrad | None = None
        self._stale: _ValGrad | None = None  # last computed start gradient (val_grad_every > 1)
        self._stale_age = 0  # steps since self._stale was computed
        self._steps_done = 0
        self.momentum = self._momentum_window(opts.momentum_window)
        self.set_val_batch(val_batch)

    def _check_options(self, opts: ScorerOptions) -> None:
        """Validate and store the speed, memory and loss options (ValueError naming the bad one)."""
        contraction, val_grad_every, rank = opts.contraction, opts.val_grad_every, opts.rank
        target_chunk, loss_reduction = opts.target_chunk, opts.loss_reduction
        if contraction not in CONTRACTIONS:
            raise ValueError(f"contraction must be one of {CONTRACTIONS}, got {contraction!r}")
        if int(val_grad_every) < 1 or int(rank) < 1:
            raise ValueError("val_grad_every and rank must be positive integers")
        self.val_grad_every = int(val_grad_every)
        if contraction == "gram" and (why := self._gram_blocker()):
            raise ValueError(f"contraction='gram': {why}")
        if target_chunk is not None and int(target_chunk) < 0:
            raise ValueError(f"target_chunk must be >= 0 (0 = whole batch), got {target_chunk}")
        # one meaning at every layer (CLI, ScoreArgs, here): 0 (or None) = the whole batch
        self.target_chunk = int(target_chunk) if target_chunk else None
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(
                f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {loss_reduction!r}"
            )
        self.loss_reduction = loss_reduction
        self.contraction = contraction
        self.rank = int(rank)

    @staticmethod
    def _trainable_params(model: nn.Module, optimizer: torch.optim.Optimizer) -> list:
        """The optimizer's trainable parameters; ValueError if the model has others."""
        params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        opt_ids = {id(p) for p in params}
        missing = [
            n for n, p in model.named_parameters() if p.requires_grad and id(p) not in opt_ids
        ]
        if missing:
            raise ValueError(f"trainable parameters not in the optimizer: {missing[:5]}")
        return params

    def _momentum_window(self, momentum_window: int) -> MomentumWindow | None:
        if int(momentum_window) < 0:
            raise ValueError(f"momentum_window must be >= 0, got {momentum_window}")
        if not momentum_window:
            return None
        beta1 = {}
        for group in self.optimizer.param_groups:
            b1 = group["betas"][0]
            for p in group["params"]:
                beta1[id(p)] = float(b1.item()) if torch.is_tensor(b1) else float(b1)
        family = frozenset(e for e, est in self._table.items() if est.adam_family)
        return MomentumWindow(
            int(momentum_window), self.estimators, beta1, self.contract_dtype, adam_family=family
        )

    # context manager: `with InRunScorer(...) as scorer:` removes the hooks on exit
    def __enter__(self) -> InRunScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------------------- target side
    def set_val_batch(self, val_batch: Mapping[str, torch.Tensor]) -> None:
        """Replace the target batch used from the next step on."""
        self.val_batch = prepare_batch(val_batch, self.device)
        self._val_version += 1

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _versions(self) -> tuple[int, ...]:
        return tuple(p._version for p in self.params)

    def _global_count(self, n: int) -> int:
        if not self.distributed:
            return n
        t = torch.tensor([float(n)], device=self.device)
        dist.all_reduce(t, group=self.group)
        return int(t.item())

    def _sum_over_ranks(self, tensors: list[torch.Tensor]) -> None:
        if self.distributed:
            for t in tensors:
                dist.all_reduce(t, group=self.group)

    def _val_chunks(self) -> list[dict[str, torch.Tensor]]:
        """The target batch cut into `target_chunk`-row pieces (one piece when unset)."""
        n = self.val_batch["input_ids"].shape[0]
        k = self.target_chunk or n
        if k >= n:
            return [self.val_batch]
        return [{key: t[i : i + k] for key, t in self.val_batch.items()} for i in range(0, n, k)]

    def _val_grad(self) -> _ValGrad:
        n_val = self._global_count(self.val_batch["input_ids"].shape[0])
        gs: list[torch.Tensor] | None = None
        lt: torch.Tensor | None = None
        # Chunked, each piece's graph is freed before the next: the target pass's activations
        # peak at one chunk's, which matters when it runs while the training records are held.
        for chunk in self._val_chunks():
            with self._autocast():
                loss = per_example_loss(self.model, chunk).sum() / n_val
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
            if gs is None:
                gs = [
                    g.detach() if g is not None else torch.zeros_like(p)
                    for p, g in zip(self.params, grads)
                ]
            else:
                for acc, g in zip(gs, grads):
                    if g is not None:
                        acc.add_(g)
            piece = loss.detach().reshape(1)
            lt = piece.clone() if lt is None else lt + piece
        self._sum_over_ranks(gs + [lt])
        out = {id(p): g for p, g in zip(self.params, gs)}
        return _ValGrad(out, float(lt), self._versions(), self._val_version)

    def _val_grad_keeping(self, mods: dict[int, nn.Module]) -> _ValGrad:
        """The target gradient, keeping the target tokens of `mods` for the Gram contraction."""
        self.capture.clear_target()
        self.capture.target_modules = {id(m) for m in mods.values()}
        self.capture.target_active = True
        try:
            return self._val_grad()
        finally:
            self.capture.target_active = False

    def _cached_start(self) -> _ValGrad | None:
        c = self._cache
        if c is None or c.versions != self._versions():
            return None
        if c.val_version != self._val_version and not self.reuse_val_grad_across_batches:
            return None
        return c

    def _stale_start(self) -> _ValGrad | None:
        """The last start gradient while it is younger than `val_grad_every` steps."""
        c = self._stale
        if c is None or self._stale_age >= self.val_grad_every:
            return None
        if c.val_version != self._val_version and not self.reuse_val_grad_across_batches:
            return None
        return c

    @torch.no_grad()
    def _val_loss(self) -> float:
        n_val = self._global_count(self.val_batch["input_ids"].shape[0])
        lt: torch.Tensor | None = None
        for chunk in self._val_chunks():
            with self._autocast():
                piece = (per_example_loss(self.model, chunk).sum() / n_val).reshape(1)
            lt = piece if lt is None else lt + piece
        self._sum_over_ranks([lt])
        return float(lt)

    # ----------------------------------------------------------------------------- the step
    def step(
        self, batch: Mapping[str, torch.Tensor], token_denominator: float | None = None
    ) -> StepOutput:
        """Take one real optimizer step on `batch` and return each example's value in it.

        `token_denominator` (with `loss_reduction="token"` only) replaces the global count of
        counted target tokens that the summed token loss is divided by, for trainers that count
        them their own way (the Hugging Face Trainer's `num_items_in_batch`).
        """
        if token_denominator is not None and self.loss_reduction != "token":
            raise ValueError("token_denominator needs loss_reduction='token'")
        b = prepare_batch(batch, self.device)
        n = b["input_ids"].shape[0]
        gram_mods = self._gram_now() if self._gram_candidates else {}
        start = self._start_grad(gram_mods)
        val_loss = start.loss if start is not None else self._val_loss()
        loss, ex_loss = self._train_backward(b, n, token_denominator)
        grad_norm, kappa = self._clip()
        clipped = kappa < 1.0
        lin = clipped and bool(set(self.estimators) & self.clip_linearised)
        t = self._targets(kappa, start)
        ghat = {id(p): p.grad.detach() for p in self.params if p.grad is not None} if lin else {}
        mid, end = self._optimizer_step()
        t.mid = mid.grads if mid is not None else None
        t.end = end.grads if end is not None else None
        cols = self._columns(t, gram_mods)
        if lin:
            cols[_GHAT] = ghat
        col, records = self._contract(cols, n, gram_mods, t)
        values = self._values(col, cols, ghat, lin)
        propagated: list[PropagatedStep] = []
        if self.momentum is not None:
            with record_function("adamshap.momentum"):
                done = _Contracted(cols, col, records, values)
                propagated = self._momentum_step(t, done, kappa, n, lin, ghat)
        self._steps_done += 1
        return StepOutput(
            values=values,
            loss=float(loss.detach()),
            val_loss=val_loss,
            val_loss_after=end.loss if end is not None else None,
            lr=t.lr[id(self.params[0])],
            example_losses=ex_loss.detach().cpu(),
            grad_norm=grad_norm,
            clipped=clipped,
            propagated=propagated,
        )

    def _start_grad(self, gram_mods: dict[int, nn.Module]) -> _ValGrad | None:
        """∇l_val(w_t): cached from the last step's end, the stale one, or taken now."""
        # The Gram form needs this step's target tokens, so it never takes a cached gradient.
        start = None if gram_mods else self._cached_start()
        if start is None and "start" in self._needs:
            start = self._stale_start() if self.val_grad_every > 1 else None
            if start is None:
                with record_function("adamshap.target_grad"):
                    start = self._val_grad_keeping(gram_mods) if gram_mods else self._val_grad()
        if self.val_grad_every > 1 and start is not None and start is not self._stale:
            self._stale, self._stale_age = start, 0
        return start

    def _train_backward(self, b: dict, n: int, token_denominator: float | None):
        """Training forward/backward, keeping each layer's inputs and output grads.

        Returns (training loss, per-example losses); `.grad` then holds the (all-reduced)
        batch gradient.
        """
        self.optimizer.zero_grad(set_to_none=True)
        self.capture.clear()
        self.capture.active = True
        try:
            with record_function("adamshap.train_forward_backward"):
                with self._autocast():
                    logits = logits_of(self.model, b)
                ex_loss = per_example_loss_from_logits(logits, b)
                if self.loss_reduction == "token":  # mean over the global batch's tokens
                    n_tok = n_target_tokens(b).to(ex_loss.dtype)
                    tok_total = n_tok.sum().detach().reshape(1).clone()
                    self._sum_over_ranks([tok_total])
                    denom = (
                        tok_total.clamp(min=1.0).squeeze(0)
                        if token_denominator is None
                        else float(token_denominator)
                    )
                    loss = (ex_loss * n_tok).sum() / denom
                else:
                    n_global = self._global_count(n)
                    loss = ex_loss.sum() / n_global  # = mean over the global batch
                loss.backward()
        finally:
            self.capture.active = False
        del logits
        if self.distributed:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            lt = loss.detach().reshape(1).clone()
            self._sum_over_ranks([p.grad for p in self.params] + [lt])
            loss = lt
        return loss, ex_loss

    def _clip(self) -> tuple[float | None, float]:
        """Clip the batch gradient when `max_grad_norm` is set: (unclipped norm, κ)."""
        if self.max_grad_norm is None:
            return None, 1.0
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm))
        return grad_norm, min(1.0, self.max_grad_norm / (grad_norm + 1e-6))

    def _targets(self, kappa: float, start: _ValGrad | None) -> Targets:
        """lr, ∇l_val(w_t) and the preconditioners the chosen estimators read (before the step)."""
        table = self._table.values()
        with record_function("adamshap.preconditioner"):
            P = (
                preconditioner(self.optimizer, kappa)
                if any(e.preconditioned for e in table)
                else {}
            )
            loo = self.loo_second_moment and any(e.reads_loo_P for e in table)
            P_loo = loo_preconditioner(self.optimizer, kappa) if loo else {}
        return Targets(
            lr=lr_scale(self.optimizer),
            start=start.grads if start is not None else None,
            P=P,
            P_loo=P_loo,
            loo_second_moment=self.loo_second_moment,
        )

    def _optimizer_step(self) -> tuple[_ValGrad | None, _ValGrad | None]:
        """The real step, with the target gradients at the midpoint (before) and w_{t+1} (after)."""
        mid = None
        if "mid" in self._needs:
            with record_function("adamshap.target_grad"):
                mid = self._val_grad_at(shared_step_params(self.optimizer))
        with record_function("adamshap.optimizer_step"):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        end = None
        if "end" in self._needs:
            with record_function("adamshap.target_grad"):
                end = self._val_grad()
            self._cache = end
        if self._stale is not None:
            self._stale_age += 1
        return mid, end

    def _columns(self, t: Targets, gram_mods: dict) -> dict[str, dict[int, torch.Tensor]]:
        """Each chosen estimator's target-side column (in `column_order`), from its table entry."""
        pre = [e for e, est in self._table.items() if est.preconditioned]
        # When nothing after the one preconditioned column reads P (no other such column, no
        # Gram factors, no momentum carry of its own), it is formed in P's memory.
        t.consume_P = (
            len(pre) == 1
            and not gram_mods
            and (self.momentum is None or self._table[pre[0]].carry is None)
        )
        with record_function("adamshap.val_columns"):
            return {e: self._table[e].column(t) for e in self._column_order}

    def _contract(self, cols: dict, n: int, gram_mods: dict, t: Targets):
        """Contract every column against the kept records: ({column: [n]}, records or None)."""
        names = list(cols)
        with record_function("adamshap.val_side"):
            val_side = {
                id(p): self._stack([cols[c].get(id(p)) for c in names], p) for p in self.params
            }
            low = self._low_rank(val_side, skip=gram_mods)
            gram = self._gram_sides(gram_mods, names, t) if gram_mods else None
        with record_function("adamshap.contract"):
            C = self.capture.contract(val_side, n, dtype=self.contract_dtype, low=low, gram=gram)
        records = self.capture.take_records() if self.momentum is not None else None
        self.capture.clear()
        self.capture.clear_target()
        return {c: C[:, i] for i, c in enumerate(names)}, records

    def _values(self, col: dict, cols: dict, ghat: dict, lin: bool) -> dict[str, torch.Tensor]:
        """Each estimator's values, minus the clip term where clipping is linearised."""
        values: dict[str, torch.Tensor] = {}
        for e in self.estimators:
            v, u = col[e], cols[e]
            if lin and e in self.clip_linearised:
                v = v - (_dot(u, ghat) / _dot(ghat, ghat)) * col[_GHAT]
            values[e] = v.detach().cpu().double()
        return values

    def _momentum_step(self, t, done: _Contracted, kappa, n, lin, ghat) -> list[PropagatedStep]:
        """Credit this step's val side to the open windows, close the due ones, open this one."""
        cols, col, records, values = done.cols, done.col, done.records, done.values
        mw = self.momentum
        lin_e = frozenset(self.clip_linearised & set(self.estimators)) if lin else frozenset()
        gg_col = col[_GHAT].detach().cpu().double() if lin else None
        carry_cols = {
            e: cols[e] if est.carry is None else est.carry(t, cols[e])
            for e, est in self._table.items()
        }
        mw.add_step(mw.carry_column(carry_cols, kappa))
        closed = mw.close_due(self._contract_records)
        mw.open(self._steps_done, n, kappa, records, values, lin_e, ghat, gg_col)
        return closed

    def _contract_records(self, val_side: dict[int, torch.Tensor], n: int, records) -> torch.Tensor:
        return self.capture.contract(val_side, n, dtype=self.contract_dtype, records=records)

    def flush_momentum(self) -> list[PropagatedStep]:
        """Close every open momentum window (end of training: the carry stops where the run does)."""
        if self.momentum is None:
            return []
        return self.momentum.close_due(self._contract_records, force=True)

    def _stack(self, cols: list[torch.Tensor | None], p: torch.Tensor) -> torch.Tensor:
        dt = self.contract_dtype
        if len(cols) == 1 and cols[0] is not None:
            return cols[0].to(dt).unsqueeze(0)
        return torch.stack([torch.zeros_like(p, dtype=dt) if c is None else c.to(dt) for c in cols])

    def _low_rank(
        self, val_side: dict[int, torch.Tensor], skip: Iterable[int] = ()
    ) -> dict[int, LowRank]:
        skip = set(skip)
        return {
            k: randomized_lowrank(val_side[k], self.rank, self._gen, niter=self.lowrank_niter)
            for k in self._lowrank_ids
            if k in val_side and k not in skip
        }

    def _gram_blocker(self) -> str | None:
        """Why the Gram form cannot serve this scorer's settings (None when it can)."""
        gram = gram_estimators()
        if [e for e in self.estimators if self._table[e].gram_factors is None]:
            return (
                f"it values {_and(gram)} only (their target gradient is taken before the step, "
                f"where its tokens can be kept); got {list(self.estimators)}"
            )
        if self.val_grad_every != 1 or self.clip_linearised & set(gram):
            return f"it needs val_grad_every=1 and no clip linearising of {'/'.join(gram)}"
        if self.distributed:
            return "it is single-process (the target tokens are per rank)"
        return None

    def _gram_layers(self) -> dict[int, nn.Module]:
        """Weight id -> module for untied Linear/Conv1D weights (candidates for the Gram form)."""
        if self.contraction not in ("gram", "auto") or self._gram_blocker():
            return {}
        owners: dict[int, list[nn.Module]] = {}
        for use in self.capture.uses:
            for q in use.module.parameters(recurse=False):
                owners.setdefault(id(q), []).append(use.module)
        return {
            k: owners[k][0] for k in self.capture.matmul_weights() if len(owners.get(k, ())) == 1
        }

    def _gram_now(self) -> dict[int, nn.Module]:
        """The layers that take the Gram form this step (`auto`: where it pays at this T_val)."""
        if self.contraction == "gram":
            return self._gram_candidates
        t_val = int(self.val_batch["input_ids"].numel())
        out = {}
        for k, mod in self._gram_candidates.items():
            d_out, d_in = mod.weight.shape
            if Conv1D is not None and isinstance(mod, Conv1D):
                d_in, d_out = d_out, d_in
            gram_cost = t_val * (d_in + d_out)
            low_cost = self.rank * (d_in + d_out) if k in self._lowrank_ids else float("inf")
            if gram_cost < d_in * d_out / 4 and gram_cost < low_cost:
                out[k] = mod
        return out

    def _gram_sides(
        self, mods: dict[int, nn.Module], names: list[str], t: Targets
    ) -> dict[int, GramSide]:
        """Each Gram layer's kept target tokens and per-column rank-1 preconditioner factors."""
        sides = {}
        dt = self.contract_dtype
        for k, mod in mods.items():
            tok = self.capture.target_tokens(mod)
            if tok is None:
                continue
            a_val, b_val = tok
            conv = Conv1D is not None and isinstance(mod, Conv1D)
            rs, cs = [], []
            for c in names:
                factors = self._table[c].gram_factors
                r, cc = factors(t, k, a_val.shape[1], b_val.shape[1], conv, dt, self.device)
                rs.append(r)
                cs.append(cc)
            sides[k] = GramSide(
                a_val.to(dt), b_val.to(dt), torch.stack(rs).to(dt), torch.stack(cs).to(dt)
            )
        return sides

    @torch.no_grad()
    def _swap_in(self, new: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        saved = [p.detach().clone() for p in self.params]
        for p in self.params:
            if id(p) in new:
                p.copy_(new[id(p)])
        return saved

    def _val_grad_at(self, params: dict[int, torch.Tensor]) -> _ValGrad:
        saved = self._swap_in(params)
        try:
            return self._val_grad()
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)

    # ----------------------------------------------------------------------------- resume
    def state_dict(self) -> dict:
        """The cached target gradients and RNG state (needed to resume a run exactly)."""
        c = self._cache
        out: dict = {"cache": None}
        if c is not None and c.versions == self._versions():
            out = {
                "cache": [c.grads[id(p)].detach().cpu() for p in self.params],
                "cache_loss": c.loss,
                "cache_same_val_batch": c.val_version == self._val_version,
            }
        s = self._stale
        if s is not None and self.val_grad_every > 1:
            out["stale"] = [s.grads[id(p)].detach().cpu() for p in self.params]
            out["stale_loss"] = s.loss
            out["stale_age"] = self._stale_age
            out["stale_same_val_batch"] = s.val_version == self._val_version
        out["generator"] = self._gen.get_state()
        out["steps_done"] = self._steps_done
        if self.momentum is not None:
            mods = [u.module for u in self.capture.uses]
            out["momentum"] = self.momentum.state_dict(mods, self.params)
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore the cached target gradient; the model must already hold the saved weights."""
        if "generator" in state:
            self._gen.set_state(state["generator"])
        self._steps_done = int(state.get("steps_done", self._steps_done))
        if self.momentum is not None:
            mods = [u.module for u in self.capture.uses]
            self.momentum.load_state_dict(state.get("momentum", []), mods, self.params, self.device)
        stale = state.get("stale")
        self._stale, self._stale_age = None, 0
        if stale is not None:
            vv = self._val_version if state.get("stale_same_val_batch", True) else -1
            self._stale = _ValGrad(
                {id(p): g.to(p.device, p.dtype) for p, g in zip(self.params, stale)},
                float(state["stale_loss"]),
                (),
                vv,
            )
            self._stale_age = int(state["stale_age"])
        grads = state.get("cache")
        if grads is None:
            self._cache = None
            return
        vv = self._val_version if state.get("cache_same_val_batch", True) else -1
        self._cache = _ValGrad(
            {id(p): g.to(p.device, p.dtype) for p, g in zip(self.params, grads)},
            float(state["cache_loss"]),
            self._versions(),
            vv,
        )

    def close(self) -> None:
        """Remove the hooks from the model."""
        self.capture.remove()


def _and(names) -> str:
    names = list(names)
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 2 else names)


def _dot(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]) -> torch.Tensor:
    return sum((a[k].double() * b[k].double()).sum() for k in a if k in b)
