"""Scored training on a corpus: warm start, InRun scoring, ledger, checkpoints and resume.

Step numbering: `step` is the global optimizer step t (1-based, Adam's t), counting warm-start
steps first; the ledger holds the scored steps `warm_start_steps+1 .. warm_start_steps+n_scored`.
Every random choice is a function of (seed, step) or (seed, epoch), so a resumed run draws exactly
the batches an uninterrupted one draws; RNG states are checkpointed as well.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from adamshap_core.choices import CONTRACTIONS, PRESET_NAMES
from adamshap_core.estimators import DEFAULT_ORDER, ESTIMATORS, gram_estimators, preferred_order

from .aggregate import aggregate_run
from .atomic import atomic_dir, atomic_path, atomic_write_parquet
from .checkpoint_values import (
    CKPT_COLUMN,
    CheckpointValueConfig,
    checkpoint_values,
    snapshot_paths,
    snapshot_steps,
)
from .devices import (
    amp_dtype,
    check_device,
    check_precision,
    resolve_device,
    validate_precision,
)
from .errors import AdamshapError, Interrupted, UsageError
from .ledger import (
    LedgerWriter,
    MomentumLedgerWriter,
    read_momentum_ledger,
    truncate_after,
)
from .ranks import Ranks, ranks_from_env
from .run_dir import COMPLETE_MARKER as COMPLETE_MARKER  # kept importable from here
from .run_dir import MOMENTUM_DIR, RunDir
from .scoring_handlers import (
    Checkpointer,
    Handler,
    InterruptHandler,
    LedgerHandler,
    MomentumLedgerHandler,
    NonFiniteGuard,
    ProgressHandler,
    Propagated,
    SignalFlag,
    SnapshotHandler,
    StepEnd,
    run_steps,
)
from .scoring_handlers import NonFiniteError as NonFiniteError  # raised by the run
from .settings import ON_BAD_ROWS, check_choice, check_settings

# Arguments that do not change the outputs; a resume may differ in them. The inputs are
# identified by their contents (sha256), not by how their paths were typed.
_NON_IDENTITY_ARGS = ("progress", "corpus", "target", "out")
# Fields added after runs existed: a run.json without one was made with this value.
_LATER_FIELDS = {"precision": "fp32", "snapshots": 0, "sketch_dim": 16, "momentum_window": 0}


@dataclass
class ScoreArgs:
    """Every setting of a scoring run; saved as `run.json` next to its outputs."""

    corpus: str
    target: str
    out: str
    preset: str = "tiny"
    tokenizer: str | None = None
    vocab_size: int = 4096
    model: str | None = None
    seq_len: int = 128
    batch_size: int = 16
    target_batch_size: int = 16
    epochs: int = 1
    warm_start_steps: int = 50
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    max_grad_norm: float | None = 1.0
    warmup_frac: float = 0.05
    estimators: tuple[str, ...] = DEFAULT_ORDER
    contraction: str = "exact"  # exact | lowrank | gram | auto (benchmarks/results/speed.md)
    rank: int = 8
    target_chunk: int = 8  # target examples per gradient piece; 0 = the whole target batch (as
    # in InRunScorer and --target-chunk: one meaning at every layer)
    seed: int = 0
    checkpoint_every: int = 50
    fields: dict[str, str] | None = None
    template: str | None = None
    on_bad_rows: str = "error"
    progress: bool = True
    device: str = "cpu"  # auto | cpu | cuda | cuda:N; run.json holds the resolved one
    precision: str = "fp32"  # fp32 | bf16 (CUDA only: bf16 autocast in the scored steps)
    snapshots: int = 3  # shared snapshots for checkpoint values (0 = in-run values only)
    sketch_dim: int = 64  # k of the k x k gradient sketch per weight (checkpoint values)
    momentum_window: int = 0  # K: also momentum-propagated values over K later steps (0 = off)

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.estimators = tuple(self.estimators)
        # stored absolute, so run.json (and prune reading it) means the same files from any cwd
        for name in ("corpus", "target", "out", "tokenizer", "model"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, os.path.abspath(os.fspath(v)))

    def validate(self) -> None:
        """Raise UsageError for settings that cannot work."""
        bad = [e for e in self.estimators if e not in ESTIMATORS]
        if bad or not self.estimators:
            raise UsageError(
                f"unknown estimators {bad}; choose from {', '.join(preferred_order())}"
            )
        check_choice("contraction", self.contraction, CONTRACTIONS)
        check_choice("preset", self.preset, PRESET_NAMES)
        if self.contraction == "gram" and set(self.estimators) - set(gram_estimators()):
            raise UsageError(
                f"contraction gram values {' and '.join(gram_estimators())} only; "
                "pass --estimators adam (or adam,sgd)"
            )
        check_settings("score", self)  # the numeric settings: curation/settings.py RULES
        check_choice("on_bad_rows", self.on_bad_rows, ON_BAD_ROWS)
        self.device = check_device(self.device)
        validate_precision(self.precision)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of the arguments."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        d["estimators"] = list(self.estimators)
        return d

    def to_json(self) -> str:
        """JSON text of the arguments."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoreArgs:
        """Arguments from a dict (unknown keys are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UsageError(f"unknown ScoreArgs fields {unknown}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> ScoreArgs:
        """Arguments from JSON text (as written by `to_json`, or a run.json's `args`)."""
        d = json.loads(text)
        return cls.from_dict(d["args"] if "args" in d and "corpus" not in d else d)


# ----------------------------------------------------------------------------- helpers


def _versions() -> dict[str, str]:
    import transformers

    try:
        from importlib.metadata import version

        ours = version("adamshap")
    except Exception:  # pragma: no cover - not installed
        ours = "unknown"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "adamshap": ours,
    }


def _run_record(args: ScoreArgs) -> dict[str, Any]:
    from .corpus import corpus_sha256

    # a run folder inside a datasets folder must not change that folder's digest
    skip = (Path(args.out),)
    return {
        "args": args.to_dict(),
        "corpus_sha256": corpus_sha256(args.corpus, exclude=skip),
        "target_sha256": corpus_sha256(args.target, exclude=skip),
        "versions": _versions(),
    }


def _identity(record: dict[str, Any]) -> dict[str, Any]:
    args = {**_LATER_FIELDS, **record["args"]}
    a = {k: v for k, v in args.items() if k not in _NON_IDENTITY_ARGS}
    return {"args": a, "corpus": record["corpus_sha256"], "target": record["target_sha256"]}


def _seed_for(*parts: int) -> int:
    h = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The seeded shuffled order of `n` examples for one epoch."""
    g = torch.Generator().manual_seed(_seed_for(seed, 1, epoch))
    return torch.randperm(n, generator=g).numpy()


def warm_batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of the warm-start batch of (1-based) step `step`: consecutive seeded epochs."""
    start = (step - 1) * batch_size
    out = []
    while len(out) < min(batch_size, n):
        ep, pos = divmod(start + len(out), n)
        order = epoch_order(n, seed + 7919, ep)
        out.extend(order[pos : pos + min(batch_size, n) - len(out)].tolist())
    return np.asarray(out, dtype=np.int64)


def target_batch_indices(n: int, size: int, seed: int, step: int) -> np.ndarray:
    """Indices of the target batch drawn for (1-based) step `step`."""
    g = torch.Generator().manual_seed(_seed_for(seed, 2, step))
    return torch.randperm(n, generator=g)[: min(size, n)].sort().values.numpy()


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "python_version": int(py_state[0]),
        "python_state": torch.tensor(py_state[1], dtype=torch.int64),
        "python_gauss": py_state[2],
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    keys = s["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, s["numpy_pos"], s["numpy_has_gauss"], s["numpy_gauss"]))
    random.setstate(
        (s["python_version"], tuple(int(x) for x in s["python_state"]), s["python_gauss"])
    )


def _checkpoints(run_dir: Path) -> list[Path]:
    return RunDir(run_dir).checkpoint_files()


_SigintFlag = SignalFlag  # looked up here by the run (tests replace it with their own)


# ----------------------------------------------------------------------------- data


def _load_inputs(
    args: ScoreArgs, run_dir: Path, write_rejects: bool = True
) -> tuple[pl.DataFrame, pl.DataFrame]:
    from .corpus import FieldMap, read_corpus

    fields = FieldMap(**args.fields) if args.fields else FieldMap()
    extra = {"template": args.template} if args.template is not None else {}
    rejects = RunDir(run_dir).rejects
    write = args.on_bad_rows == "skip" and write_rejects

    def read(path: str, name: str) -> pl.DataFrame:
        rejects_path = rejects / f"{name}.jsonl" if write else None
        return read_corpus(
            path, fields=fields, on_bad_rows=args.on_bad_rows, rejects_path=rejects_path, **extra
        ).df

    corpus, target = read(args.corpus, "corpus"), read(args.target, "target")
    if corpus.height == 0:
        raise UsageError(f"corpus {args.corpus} has no usable rows")
    if target.height == 0:
        raise UsageError(f"target set {args.target} has no usable rows")
    return corpus, target


def tokenizer_origin(args: ScoreArgs) -> str | None:
    """The folder the run's tokenizer comes from (None: trained on the corpus)."""
    if args.tokenizer is not None:
        return args.tokenizer
    if args.model is not None and (Path(args.model) / "tokenizer.json").exists():
        return args.model
    return None


def _tokenizer(args: ScoreArgs, run_dir: Path, corpus: pl.DataFrame) -> Any:
    from .tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

    folder = RunDir(run_dir).tokenizer
    if (folder / "tokenizer.json").exists():
        return load_tokenizer(folder)
    origin = tokenizer_origin(args)
    if origin is None and args.model is not None:
        raise UsageError(
            f"--model {args.model} has no tokenizer.json: a tokenizer trained on the corpus would "
            "not match the checkpoint's embeddings; pass its tokenizer with --tokenizer DIR"
        )
    if origin is not None:
        tok = load_tokenizer(origin)
    else:
        tok = train_tokenizer(corpus["text"].to_list(), args.vocab_size, seed=args.seed)
    with atomic_dir(folder) as tmp:
        save_tokenizer(tok, tmp)
    return load_tokenizer(folder)


def _encode(df: pl.DataFrame, tok: Any, args: ScoreArgs) -> Any:
    from .encode import encode_corpus

    if args.template is not None:
        return encode_corpus(df, tok, args.seq_len, template=args.template)
    return encode_corpus(df, tok, args.seq_len)


def _model(args: ScoreArgs, tok: Any, device: str) -> torch.nn.Module:
    from transformers import GPT2LMHeadModel

    from adamshap_core import build_model

    if args.model is not None:
        folder = Path(args.model)
        if not (folder / "config.json").exists():
            raise UsageError(f"--model {folder} is not a saved model folder (no config.json)")
        model = GPT2LMHeadModel.from_pretrained(folder)
        if len(tok) > model.config.vocab_size:
            raise UsageError(
                f"tokenizer has {len(tok)} tokens but model {folder} only {model.config.vocab_size}; "
                "pass the model's own tokenizer with --tokenizer"
            )
        if model.config.n_positions < args.seq_len:
            raise UsageError(f"seq_len {args.seq_len} > model context {model.config.n_positions}")
        model.config.use_cache = False
    else:
        eos = tok.eos_token_id if tok.eos_token_id is not None else 0
        model = build_model(args.preset, len(tok), args.seq_len, seed=args.seed, eos_token_id=eos)
    return model.to(device)


def _to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


# ----------------------------------------------------------------------------- the run


def _check_run_dir(args: ScoreArgs, run_dir: Path, record: dict[str, Any]) -> bool:
    """Compare with an existing run.json (error if it differs); True when that run is complete."""
    run = RunDir(run_dir)
    if run.run_json.exists():
        old = run.read_run_json()
        if _identity(old) != _identity(record):
            a, b = _identity(old), _identity(record)
            diff = sorted(
                k for k in set(a["args"]) | set(b["args"]) if a["args"].get(k) != b["args"].get(k)
            )
            if a["corpus"] != b["corpus"]:
                diff.append("corpus contents (sha256)")
            if a["target"] != b["target"]:
                diff.append("target contents (sha256)")
            raise UsageError(
                f"{run_dir} holds a different run (differs in: {', '.join(diff)}); "
                "use another --out folder or delete this one"
            )
        if old.get("versions") != record["versions"]:
            print(f"warning: {run_dir} was started with {old.get('versions')}", file=sys.stderr)
        return run.is_complete()
    return False


def _save_checkpoint(run_dir: Path, state: dict[str, Any], keep: int = 2) -> Path:
    path = RunDir(run_dir).checkpoint(state["step"])
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)  # through a Python file: a full disk surfaces as an OSError
    for old in _checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def _save_snapshot(run_dir: Path, step: int, model: torch.nn.Module, opt: Any) -> Path:
    """Model + optimizer state at `step`, kept for the checkpoint values (never pruned)."""
    path = RunDir(run_dir).snapshot(step)
    with atomic_path(path) as tmp:
        torch.save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict()}, tmp)
    return path


def _checkpoint_values(
    args: ScoreArgs, run_dir: Path, model: torch.nn.Module, opt: Any, train: Any, target: Any
) -> Path:
    """Value every training document at every saved snapshot; write checkpoint_values.parquet."""
    cfg = CheckpointValueConfig(sketch_dim=args.sketch_dim, seed=args.seed)
    paths = snapshot_paths(run_dir)
    snaps = [torch.load(p, map_location="cpu", weights_only=True) for p in paths]
    vals = checkpoint_values(model, opt, snaps, train, target, cfg, progress=args.progress)
    cols: dict[str, Any] = {"id": list(train.ids), CKPT_COLUMN: vals.mean(axis=0)}
    for snap, row in zip(snaps, vals):
        cols[f"{CKPT_COLUMN}_step{int(snap['step'])}"] = row
    return atomic_write_parquet(pl.DataFrame(cols), RunDir(run_dir).checkpoint_values)


def _load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    for path in reversed(_checkpoints(run_dir)):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged file: fall back to the one before
            print(
                f"warning: cannot read checkpoint {path.name} ({e}); trying older", file=sys.stderr
            )
    return None


def run_scoring(args: ScoreArgs) -> Path:
    """Run (or resume, or skip if complete) a scored training run; return RUN_DIR.

    Under `torchrun` every rank runs this with the same arguments: each scores its share of
    every global batch (against the all-reduced target gradient) and writes its own ledger
    parts; rank 0 writes everything else (see curation/ranks.py).
    """
    ranks, device, run_dir = _setup(args)
    record = _run_record(args)
    if _check_run_dir(args, run_dir, record):
        print(f"{run_dir} is already complete; nothing to do", file=sys.stderr)
        return run_dir
    tok, train, target = _prepare_data(args, run_dir, ranks, record)
    tr = _Training.build(args, ranks, device, tok, train, target)
    step = tr.resume(run_dir)
    _train(tr, run_dir, step)
    if ranks.main:  # rank 0 writes the final model, aggregates and the completion marker
        _finish(tr, run_dir, tok)
    ranks.barrier()
    return run_dir


def _setup(args: ScoreArgs) -> tuple[Ranks, str, Path]:
    """Check the arguments and inputs, join torchrun's group if any, make RUN_DIR."""
    args.validate()
    args.device = resolve_device(args.device)  # `auto` -> cpu | cuda: run.json says where it ran
    check_precision(args.precision, args.device)
    run_dir = Path(args.out)
    for p, what in ((args.corpus, "corpus"), (args.target, "target")):
        if not Path(p).exists():
            raise UsageError(f"{what} {p} does not exist")
    ranks, device = ranks_from_env(args.device)
    if ranks.active and args.momentum_window:
        raise UsageError(
            "--momentum-window is not supported under torchrun yet (each rank's open windows "
            "would need their own checkpoint); run it on one process"
        )
    if ranks.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    ranks.barrier()
    return ranks, device, run_dir


def _prepare_data(
    args: ScoreArgs, run_dir: Path, ranks: Ranks, record: dict[str, Any]
) -> tuple[Any, Any, Any]:
    """Read and encode the corpus and target; write run.json, the tokenizer and examples (rank 0)."""
    run = RunDir(run_dir)
    rejects_ok = ranks.main  # one rank writes the rejects files
    corpus_df, target_df = _load_inputs(args, run_dir, write_rejects=rejects_ok)
    if ranks.main and not run.run_json.exists():
        run.write_run_json(record)
    if ranks.main:
        tok = _tokenizer(args, run_dir, corpus_df)
    ranks.barrier()
    if not ranks.main:
        tok = _tokenizer(args, run_dir, corpus_df)  # rank 0 has saved it: load
    train = _encode(corpus_df, tok, args)
    target = _encode(target_df, tok, args)
    for name, enc in (("training", train), ("target", target)):
        k = int(np.asarray(enc.truncated).sum())
        if k:
            print(
                f"note: {k} of {len(enc)} {name} documents are longer than --seq-len "
                f"{args.seq_len} tokens and were truncated to it (policy: truncate; counted in "
                "examples.parquet and the report)",
                file=sys.stderr,
            )
    _check_shards(ranks, len(train), len(target), args)
    if ranks.main and not run.examples.exists():
        examples = pl.DataFrame(
            {
                "id": list(train.ids),
                "source": list(train.sources),
                "n_tokens": np.asarray(train.n_tokens, dtype=np.int64),
                "truncated": np.asarray(train.truncated, dtype=bool),
            }
        )
        atomic_write_parquet(examples, run.examples)
    return tok, train, target


@dataclass
class _Training:
    """The model, optimizer, schedule and data of one run, and how to take its step t."""

    args: ScoreArgs
    ranks: Ranks
    device: str
    train: Any  # encoded corpus
    target: Any  # encoded target set
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    scorer: Any = None  # built when scoring starts, after the warm start has moved the weights
    scorer_state: Any = None  # from the checkpoint a resumed run starts at
    orders: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(
        cls, args: ScoreArgs, ranks: Ranks, device: str, tok: Any, train: Any, target: Any
    ) -> _Training:
        """Seed every RNG, then build the model, AdamW and the warmup-cosine schedule."""
        from adamshap_core import warmup_cosine

        torch.manual_seed(args.seed)
        np.random.seed(args.seed % (1 << 32))
        random.seed(args.seed)
        model = _model(args, tok, device)
        opt = torch.optim.AdamW(
            model.parameters(), lr=args.lr, betas=args.betas, weight_decay=args.weight_decay
        )
        tr = cls(args, ranks, device, train, target, model, opt, None)
        tr.sched = warmup_cosine(opt, int(args.warmup_frac * tr.total), max(1, tr.total))
        return tr

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train) / self.args.batch_size)

    @property
    def n_scored(self) -> int:
        return self.args.epochs * self.steps_per_epoch

    @property
    def total(self) -> int:
        return self.args.warm_start_steps + self.n_scored

    @property
    def snapshot_steps(self) -> set[int]:
        a = self.args
        return set(snapshot_steps(a.warm_start_steps, self.n_scored, a.snapshots))

    def resume(self, run_dir: Path) -> int:
        """Load the newest readable checkpoint (if any) and drop ledger rows after it; its step."""
        step = 0
        ckpt = _load_checkpoint(run_dir)
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            self.sched.load_state_dict(ckpt["scheduler"])
            self.scorer_state = ckpt.get("scorer")
            _set_rng_state(ckpt["rng"])
            step = int(ckpt["step"])
            if self.ranks.main:
                print(f"resuming {run_dir} from step {step}/{self.total}", file=sys.stderr)
        self.ranks.barrier()  # every rank has read the checkpoint before rank 0 may replace it
        if self.ranks.main:
            truncate_after(run_dir, step)
            # propagated rows written after the checkpoint: its open windows write them again
            truncate_after(run_dir, step, MOMENTUM_DIR, "closed_at")
        self.ranks.barrier()
        return step

    def scored_batch(self, t: int) -> tuple[int, np.ndarray]:
        """Epoch and (this rank's) example indices of scored step t: a function of (seed, t)."""
        a = self.args
        epoch, pos = divmod(t - a.warm_start_steps - 1, self.steps_per_epoch)
        if epoch not in self.orders:
            if len(self.orders) >= 2:  # the current epoch, and the previous one for open windows
                self.orders.pop(min(self.orders))
            self.orders[epoch] = epoch_order(len(self.train), a.seed, epoch)
        idx = self.orders[epoch][pos * a.batch_size : (pos + 1) * a.batch_size]
        return epoch, self.ranks.shard(idx)

    def step(self, t: int) -> StepEnd:
        """Take global step t (warm start or scored), then advance the schedule."""
        end = self._warm_step(t) if t <= self.args.warm_start_steps else self._scored_step(t)
        self.sched.step()
        return end

    def _warm_step(self, t: int) -> StepEnd:
        from adamshap_core import plain_step

        a = self.args
        idx = warm_batch_indices(len(self.train), a.batch_size, a.seed, t)
        # every rank takes the same full warm-start step (no sharding needed)
        batch = _to_device(self.train.batch(idx), self.device)
        return StepEnd(step=t, loss=plain_step(self.model, self.opt, batch, a.max_grad_norm))

    def _scored_step(self, t: int) -> StepEnd:
        a = self.args
        epoch, idx = self.scored_batch(t)
        tidx = target_batch_indices(len(self.target), a.target_batch_size, a.seed, t)
        tbatch = _to_device(self.target.batch(self.ranks.shard(tidx)), self.device)
        if self.scorer is None:
            self.scorer = _make_scorer(a, self.model, self.opt, tbatch)
            if self.scorer_state is not None:
                self.scorer.load_state_dict(self.scorer_state)
        else:
            self.scorer.set_val_batch(tbatch)
        out = self.scorer.step(_to_device(self.train.batch(idx), self.device))
        closed = []
        if a.momentum_window:
            closed = list(out.propagated)
            if t == self.total:  # the carry stops where the run does (before the checkpoint)
                closed += self.scorer.flush_momentum()
        return StepEnd(
            step=t,
            loss=float(out.loss),
            epoch=epoch,
            target_loss=float(out.val_loss),
            lr=float(out.lr),
            ids=[self.train.ids[i] for i in idx],
            sources=[self.train.sources[i] for i in idx],
            example_losses=out.example_losses,
            values=out.values,
            propagated=[self._propagated(ps) for ps in closed],
        )

    def _propagated(self, ps: Any) -> Propagated:
        """A closed momentum window, with the examples of the step it was opened at."""
        drawn = self.args.warm_start_steps + 1 + ps.step
        epoch, idx = self.scored_batch(drawn)
        ids = [self.train.ids[i] for i in idx]
        sources = [self.train.sources[i] for i in idx]
        return Propagated(drawn, epoch, ids, sources, ps.steps_covered, ps.values)

    def checkpoint_state(self, at: int) -> dict[str, Any]:
        """Everything a resume from step `at` needs (model, optimizer, schedule, RNGs, scorer)."""
        state: dict[str, Any] = {
            "step": at,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": _rng_state(),
            "data": {
                "phase": "warm" if at <= self.args.warm_start_steps else "scored",
                "scored_steps_done": max(0, at - self.args.warm_start_steps),
                "steps_per_epoch": self.steps_per_epoch,
            },
        }
        if self.scorer is not None:
            state["scorer"] = self.scorer.state_dict()
        return state

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()


def _train(tr: _Training, run_dir: Path, step: int) -> None:
    """Steps step+1 .. total, each followed by the handlers (curation/scoring_handlers.py).

    Raises Interrupted (after a checkpoint) when SIGINT or SIGTERM stopped the run.
    """
    args, ranks = tr.args, tr.ranks
    ledger = LedgerWriter(run_dir, args.estimators, suffix=ranks.suffix)
    mledger = None
    if args.momentum_window:
        mledger = MomentumLedgerWriter(run_dir, args.estimators, suffix=ranks.suffix)
    writers = [w for w in (ledger, mledger) if w is not None]

    def save(at: int) -> None:
        _save_checkpoint(run_dir, tr.checkpoint_state(at))

    ckpt = Checkpointer(args.checkpoint_every, tr.total, ranks, writers, save, last=step)
    with _SigintFlag() as flag:
        interrupt = InterruptHandler(flag, ranks, ckpt, tr.total, run_dir)
        handlers: list[Handler] = [
            NonFiniteGuard(args.estimators, lambda: ckpt.last),
            LedgerHandler(ledger, args.estimators),
            *([MomentumLedgerHandler(mledger, args.estimators)] if mledger is not None else []),
            ProgressHandler(
                tr.total,
                step,
                "score" + (f" ({ranks.world} ranks)" if ranks.active else ""),
                enabled=args.progress and ranks.main,
            ),
            SnapshotHandler(
                tr.snapshot_steps,
                lambda s: _save_snapshot(run_dir, s, tr.model, tr.opt),
                ranks.main,
            ),
            ckpt,
            interrupt,
        ]
        try:
            run_steps(tr.step, step, tr.total, handlers)
        finally:
            for h in handlers:
                h.close()
            tr.close()
        interrupt.raise_if_stopped()


def _finish(tr: _Training, run_dir: Path, tok: Any) -> None:
    """The outputs of a finished run (rank 0): final model, values, then the completion marker."""
    args, run = tr.args, RunDir(run_dir)
    with atomic_dir(run.final_model) as tmp:
        tr.model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    if tr.n_scored > 0 and tr.snapshot_steps:
        _checkpoint_values(args, run_dir, tr.model, tr.opt, tr.train, tr.target)
    if tr.n_scored > 0:
        aggregate_run(run_dir)
    if tr.n_scored > 0 and args.momentum_window:
        _record_momentum(run_dir, args.momentum_window)
    n_truncated = int(np.asarray(tr.train.truncated).sum())
    done = {
        "steps": tr.total,
        "n_examples": len(tr.train),
        "n_truncated": n_truncated,
        "ranks": tr.ranks.world,
    }
    run.mark_complete(done)


def _record_momentum(run_dir: Path, window: int) -> dict[str, Any]:
    """Add the momentum window and the steps flushed early at the end to run.json."""
    rows = read_momentum_ledger(run_dir)
    flushed = []
    if rows is not None:
        short = rows.filter(pl.col("steps_covered") < window)
        per_step = short.group_by("step").agg(pl.col("steps_covered").first()).sort("step")
        flushed = [
            {"step": int(a), "steps_covered": int(b)}
            for a, b in zip(per_step["step"], per_step["steps_covered"])
        ]
    info = {"window": window, "flushed_at_end": flushed}
    record = RunDir(run_dir).read_run_json()
    record["momentum"] = info
    RunDir(run_dir).write_run_json(record)
    return info


def _check_shards(ranks: Ranks, n_train: int, n_target: int, args: ScoreArgs) -> None:
    """Under torchrun every rank needs at least one example of every batch it shares."""
    if not ranks.active:
        return
    last = n_train % args.batch_size
    sizes = {
        "--batch-size": args.batch_size,
        "--target-batch-size": min(args.target_batch_size, n_target),
    }
    if 0 < last < ranks.world:
        sizes["the last batch of each epoch"] = last
    small = {k: v for k, v in sizes.items() if v < ranks.world}
    if small:
        what = ", ".join(f"{k} = {v}" for k, v in small.items())
        raise UsageError(
            f"{ranks.world} ranks need at least {ranks.world} examples in every batch; {what}. "
            "Use a larger batch (or a batch size that divides the corpus evenly) or fewer ranks"
        )


def _make_scorer(
    args: ScoreArgs, model: torch.nn.Module, opt: torch.optim.Optimizer, val_batch: dict
) -> Any:
    """The InRun scorer, pipelining target passes across the redrawn target batches.

    Reusing the previous step's endpoint target gradient makes the scorer stateful; its
    `state_dict` goes into every checkpoint, so a resumed run reproduces that state exactly.
    """
    from adamshap_core import InRunScorer

    return InRunScorer(
        model,
        opt,
        val_batch,
        estimators=tuple(args.estimators),
        max_grad_norm=args.max_grad_norm,
        reuse_val_grad_across_batches=True,
        contraction=args.contraction,
        rank=args.rank,
        seed=args.seed,
        target_chunk=args.target_chunk,
        amp_dtype=amp_dtype(args.precision),
        momentum_window=args.momentum_window,
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m curation.scoring_run --args-json FILE` (test entry point; the CLI is elsewhere)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m curation.scoring_run")
    p.add_argument("--args-json", required=True, help="a ScoreArgs JSON file")
    ns = p.parse_args(argv)
    args = ScoreArgs.from_json(Path(ns.args_json).read_text())
    try:
        print(run_scoring(args))
    except Interrupted as e:
        return 128 + e.signum
    except AdamshapError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
