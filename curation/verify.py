"""`adamshap verify`: retrain a fresh proxy on curated vs random-same-size vs full data.

Every arm trains from scratch with the same steps and hyper-parameters; the target loss (mean
per-example loss over the target set, as in docs/method.md §1) is evaluated periodically. Documents
whose id is in the target set are removed from every training arm (prune keeps its held-out
target in kept.<ext>; training on it would leak).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from adamshap_core.choices import PRESET_NAMES
from curation.errors import UsageError
from curation.packing import TokenPacker
from curation.render import Figure, Page, Section, Table, write_page
from curation.run_dir import CURVE_FILE, VERIFY_STEM, RunDir, VerifyDir
from curation.settings import check_choice, check_settings

ARMS = ("curated", "random", "full")
BASELINE_ARMS = ("random", "perplexity", "dsir", "classifier", "full")


@dataclass
class TrainConfig:
    """Hyper-parameters shared by every arm."""

    preset: str = "tiny"
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.1
    max_grad_norm: float | None = 1.0
    warmup_frac: float = 0.05
    eval_batch_size: int = 64
    device: str = "cpu"


@dataclass(kw_only=True)
class VerifyArgs(TrainConfig):
    """Arguments of `adamshap verify` (saved in verify.json): the arms' TrainConfig plus its inputs.

    `device`: auto | cpu | cuda | cuda:N (curation/devices.py).
    """

    curated: str
    full: str
    target: str
    out: str
    seeds: int = 3
    steps: int | None = None  # default: ceil(n_curated / batch_size) * epochs, for every arm
    epochs: int = 1
    n_evals: int = 10
    tokenizer: str | None = None
    vocab_size: int = 4096
    template: str | None = None
    seed: int = 0
    progress: bool = True
    baselines: tuple[str, ...] = ("random", "full")
    selection_target: str | None = None  # the target the curation used (dsir, classifier)
    reference: str | None = None  # a scoring run dir: its final proxy ranks `perplexity`
    fields: dict[str, str] | None = None
    # one shared batch order (common random numbers): seed s visits every arm's rows in the order
    # of one seeded permutation of the full corpus, so arms differ by their rows, not their luck
    # opt-in: on the demo it did not narrow the paired sd (README, pruning reading)
    coupled_order: bool = False
    # one token budget for every arm (curation.packing): each step trains on batch_size x seq_len
    # real tokens of the arm's documents laid end to end, so an arm that keeps longer documents
    # does not get more tokens; False: batch_size documents per step (padded), the earlier protocol
    pack: bool = True

    def __post_init__(self) -> None:
        # stored absolute: verify.json means the same files whatever the working directory
        for name in (
            "curated",
            "full",
            "target",
            "out",
            "tokenizer",
            "selection_target",
            "reference",
        ):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, os.path.abspath(os.fspath(v)))
        if isinstance(self.baselines, str):
            self.baselines = tuple(b.strip() for b in self.baselines.split(",") if b.strip())
        self.baselines = tuple(dict.fromkeys(self.baselines))
        self.validate()

    def train_config(self) -> TrainConfig:
        """The hyper-parameters every arm trains with."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig)})

    def validate(self) -> None:
        """UsageError for a setting that cannot work (the one check of each verify setting)."""
        bad = [b for b in self.baselines if b not in BASELINE_ARMS]
        if bad:
            raise UsageError(
                f"unknown baseline(s) {', '.join(bad)}; choose from {','.join(BASELINE_ARMS)}"
            )
        check_settings("verify", self)  # the numeric settings: curation/settings.py RULES
        check_choice("preset", self.preset, PRESET_NAMES)


@dataclass(frozen=True)
class Arrays:
    """Token arrays of an encoded corpus (numpy, [N, T])."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray

    @classmethod
    def of(cls, enc: Any) -> Arrays:
        """Take the arrays of an EncodedCorpus (or anything with the same attributes)."""
        ids = np.asarray(enc.input_ids)
        attn = getattr(enc, "attention_mask", None)
        lmask = getattr(enc, "loss_mask", None)
        attn = np.ones_like(ids) if attn is None else np.asarray(attn)
        lmask = np.ones_like(ids) if lmask is None else np.asarray(lmask)
        return cls(ids, attn, lmask)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def take(self, idx: np.ndarray) -> Arrays:
        """Rows `idx`."""
        return Arrays(self.input_ids[idx], self.attention_mask[idx], self.loss_mask[idx])

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Rows `idx` as a batch dict of LongTensors."""
        return {
            "input_ids": torch.as_tensor(self.input_ids[idx]).long(),
            "attention_mask": torch.as_tensor(self.attention_mask[idx]).long(),
            "loss_mask": torch.as_tensor(self.loss_mask[idx]).long(),
        }


@torch.no_grad()
def target_loss(model: torch.nn.Module, target: Arrays, batch_size: int = 64) -> float:
    """Mean per-example loss of `model` over the target set."""
    from adamshap_core import per_example_loss, prepare_batch

    model.eval()
    device = next(model.parameters()).device
    tot = 0.0
    for s in range(0, len(target), batch_size):
        b = prepare_batch(target.batch(np.arange(s, min(len(target), s + batch_size))), device)
        tot += float(per_example_loss(model, b).double().sum())
    model.train()
    return tot / max(1, len(target))


def eval_points(steps: int, n_evals: int) -> list[int]:
    """Steps (0..steps, both included) at which the target loss is measured."""
    return sorted({int(round(x)) for x in np.linspace(0, steps, max(2, n_evals + 1))})


@dataclass(frozen=True)
class ProxyRun:
    """One fresh proxy's training: steps, seed, model shape and how often to evaluate."""

    steps: int
    cfg: TrainConfig
    seed: int
    vocab_size: int
    eos_token_id: int = 0
    n_evals: int = 10
    # coupled order (common random numbers across arms): each training row's index in a shared
    # pool of `pool_size` rows; every epoch then visits the rows in the order of one seeded
    # permutation of the whole pool, so two arms that keep nearly the same rows see nearly the
    # same batches. None: each epoch is a permutation of this arm's own rows (the default)
    pool_rows: np.ndarray | None = None
    pool_size: int = 0
    # token budget (curation.packing): every step trains on batch_size x seq_len real tokens of
    # the arm's rows laid end to end in visiting order, instead of batch_size rows (documents)
    packed: bool = False


def epoch_order(run: ProxyRun, n: int, epoch: int, rng: np.random.Generator) -> np.ndarray:
    """The order in which epoch `epoch` visits the `n` training rows (see ProxyRun.pool_rows)."""
    if run.pool_rows is None:
        return rng.permutation(n)
    perm = np.random.default_rng([run.seed, epoch]).permutation(run.pool_size)
    rank = np.empty(run.pool_size, np.int64)
    rank[perm] = np.arange(run.pool_size)
    return np.argsort(rank[np.asarray(run.pool_rows, np.int64)], kind="stable")


def train_and_evaluate(
    train: Arrays,
    target: Arrays,
    steps: int,
    cfg: TrainConfig,
    seed: int,
    vocab_size: int,
    eos_token_id: int = 0,
    n_evals: int = 10,
) -> dict[str, Any]:
    """Train a fresh proxy for `steps` AdamW steps on `train`; returns the target-loss curve."""
    run = ProxyRun(steps, cfg, seed, vocab_size, eos_token_id, n_evals)
    return train_proxy(train, target, run)[1]


def train_proxy(
    train: Arrays, target: Arrays, run: ProxyRun, pbar: Any = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained proxy and its result: seed, final target loss, perplexity, curve."""
    from adamshap_core import build_model, plain_step, warmup_cosine

    if len(train) == 0:
        raise UsageError("a training arm has no documents")
    if run.packed and int(np.asarray(train.attention_mask).sum()) == 0:
        raise UsageError("a training arm has no tokens to pack")
    cfg, seed, steps = run.cfg, run.seed, run.steps
    model = build_model(
        cfg.preset, run.vocab_size, cfg.seq_len, seed=seed, eos_token_id=run.eos_token_id
    )
    model.to(cfg.device).train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay
    )
    sched = warmup_cosine(opt, max(0, round(cfg.warmup_frac * steps)), steps)
    rng = np.random.default_rng(seed)
    order, epoch = np.empty(0, np.int64), 0
    points = set(eval_points(steps, run.n_evals))

    def measure(step: int) -> tuple[int, float]:
        loss = target_loss(model, target, cfg.eval_batch_size)
        return step, _check_finite(loss, "target loss", step, seed)

    curve: list[tuple[int, float]] = [measure(0)] if 0 in points else []
    packer = (
        TokenPacker(train.input_ids, train.attention_mask, train.loss_mask) if run.packed else None
    )

    def next_row() -> int:
        nonlocal order, epoch
        if len(order) == 0:
            order, epoch = epoch_order(run, len(train), epoch, rng), epoch + 1
        row, order = int(order[0]), order[1:]
        return row

    for step in range(1, steps + 1):
        if packer is not None:
            batch = packer.fill(cfg.batch_size, cfg.seq_len, next_row)
        else:
            while len(order) < cfg.batch_size:
                order = np.concatenate([order, epoch_order(run, len(train), epoch, rng)])
                epoch += 1
            idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
            batch = train.batch(idx)
        loss = plain_step(model, opt, batch, cfg.max_grad_norm)
        sched.step()
        _check_finite(loss, "training loss", step, seed)
        if step in points:
            curve.append(measure(step))
        if pbar is not None:
            pbar.update(1)
    final = curve[-1][1]
    return model, {"seed": seed, "final_loss": final, "perplexity": math.exp(final), "curve": curve}


def _check_finite(x: float, what: str, step: int, seed: int) -> float:
    """`x`, or NonFiniteError when it is NaN/inf (no verify.json is written then)."""
    if not math.isfinite(x):
        from curation.scoring_run import NonFiniteError

        raise NonFiniteError(
            f"non-finite {what} ({x}) at step {step} (seed {seed}); verify stopped and wrote no "
            "results (try a lower --lr)"
        )
    return x


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std (over seeds) of final target loss and perplexity, and the mean curve."""
    losses = np.array([r["final_loss"] for r in runs])
    ppl = np.exp(losses)
    steps = [s for s, _ in runs[0]["curve"]]
    curves = np.array([[v for _, v in r["curve"]] for r in runs])
    sd = lambda a: float(a.std(ddof=1)) if len(a) > 1 else 0.0  # noqa: E731
    return {
        "target_loss_mean": float(losses.mean()),
        "target_loss_std": sd(losses),
        "perplexity_mean": float(ppl.mean()),
        "perplexity_std": sd(ppl),
        "curve_steps": steps,
        "curve_mean": curves.mean(axis=0).tolist(),
        "curve_std": curves.std(axis=0, ddof=1).tolist() if len(runs) > 1 else [0.0] * len(steps),
        "runs": runs,
    }


def plot_curves(
    results: dict[str, dict[str, Any]], path: Path, title: str, unigram: float | None = None
) -> None:
    """verify_curve.png: mean target loss over steps per arm (± std band), the unigram line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from curation.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for name, r in results.items():
        x, m, s = np.array(r["curve_steps"]), np.array(r["curve_mean"]), np.array(r["curve_std"])
        ax.plot(x, m, label=name)
        ax.fill_between(x, m - s, m + s, alpha=0.2)
    if unigram is not None:  # what a unigram frequency table scores: the regime line
        ax.axhline(unigram, color="grey", linestyle="--", label=f"unigram {unigram:.3f}")
    ax.set_xlabel("training step")
    ax.set_ylabel("target loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def split_evaluation(
    target: str | Path, out_dir: str | Path, seed: int = 0, min_docs: int = 8
) -> tuple[Path, Path]:
    """Split a held-out target into (selection target, evaluation set), half each, by a seeded draw.

    Curation selects against the first half and verify evaluates on the second, so no selection
    saw the documents its gain is measured on. Targets under `min_docs` documents are not split
    (both paths are the input; verify.md then says the evaluation set was also the target).
    """
    from curation.corpus import read_corpus, write_corpus

    target = Path(target)
    df = read_corpus(target).df
    if df.height < min_docs:
        return target, target
    name = target.name
    stem, ext = (name.split(".", 1) + [""])[:2]
    mask = np.zeros(df.height, bool)
    mask[np.random.default_rng(seed).choice(df.height, df.height // 2, replace=False)] = True
    out_dir = Path(out_dir)
    sel = write_corpus(df.filter(pl.Series(~mask)), out_dir / f"{stem}_select.{ext}")
    ev = write_corpus(df.filter(pl.Series(mask)), out_dir / f"{stem}_eval.{ext}")
    return Path(sel), Path(ev)


def _reference_losses(
    args: VerifyArgs, full_df: Any, full: Arrays, steps: int, cfg: TrainConfig, vocab: int, eos: int
) -> np.ndarray:
    """Per-document loss of `--full` under the reference proxy (or one trained on `--full`)."""
    from adamshap_core import per_example_loss, prepare_batch

    if args.reference:
        from transformers import GPT2LMHeadModel

        from curation.encode import encode_corpus
        from curation.tokenizer import load_tokenizer

        ref = RunDir(args.reference)
        if not ref.final_model.is_dir() or not ref.tokenizer.is_dir():
            raise UsageError(
                f"--reference {ref.path} is not a finished `adamshap score` run "
                "(needs final_model/ and tokenizer/)"
            )
        model = GPT2LMHeadModel.from_pretrained(ref.final_model).to(cfg.device).eval()
        data = Arrays.of(encode_corpus(full_df, load_tokenizer(ref.tokenizer), cfg.seq_len))
    else:
        probe = full.take(np.arange(min(8, len(full))))
        run = ProxyRun(steps, cfg, args.seed, vocab, eos, n_evals=1, packed=args.pack)
        model = train_proxy(full, probe, run)[0].eval()
        data = full
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for s in range(0, len(data), cfg.eval_batch_size):
            idx = np.arange(s, min(len(data), s + cfg.eval_batch_size))
            out.append(per_example_loss(model, prepare_batch(data.batch(idx), device)).double())
    return torch.cat(out).cpu().numpy()


def _baseline_picks(
    args: VerifyArgs,
    full_df: Any,
    full: Arrays,
    n_keep: int,
    steps: int,
    cfg: TrainConfig,
    vocab: int,
    eos: int,
) -> dict[str, np.ndarray]:
    """Row indices of `--full` that each scored baseline keeps (as many as the curated set)."""
    from curation.baselines import classifier_scores, dsir_scores, perplexity_scores, top_k_mask
    from curation.corpus import read_corpus

    keep = n_keep / max(1, len(full))
    wanted = [b for b in args.baselines if b in ("perplexity", "dsir", "classifier")]
    sel_texts: list[str] = []
    if {"dsir", "classifier"} & set(wanted):
        if not args.selection_target:
            raise UsageError(
                "--baselines dsir/classifier select against the target the curation used: pass "
                "it as --selection-target (it must differ from the evaluation --target)"
            )
        sel_texts = read_corpus(args.selection_target).df["text"].to_list()
    texts = full_df["text"].to_list()
    picks: dict[str, np.ndarray] = {}
    for b in wanted:
        if b == "perplexity":
            losses = _reference_losses(args, full_df, full, steps, cfg, vocab, eos)
            score = perplexity_scores(losses)
        elif b == "dsir":
            score = dsir_scores(texts, sel_texts)
        else:
            score = classifier_scores(texts, sel_texts, seed=args.seed)
        picks[b] = np.flatnonzero(top_k_mask(score, keep))[:n_keep]
    return picks


def _protocol_line(meta: dict[str, Any]) -> str:
    """verify.md's one line on how the arms were trained: steps, seeds, order, token budget."""
    order = (
        " (each seed: the same initial weights and one shared order of the full corpus's rows for"
        " every arm)"
        if meta.get("coupled_order")
        else " (each seed: the same initial weights; each arm its own batch order)"
    )
    budget = (
        f"; every arm trains on {meta['batch_size'] * meta['seq_len']} tokens a step (its"
        " documents packed end to end: one token budget)"
        if meta.get("pack")
        else f"; {meta['batch_size']} documents a step, padded (an arm that keeps longer documents"
        " trains on more tokens)"
    )
    return (
        f"{meta['steps']} steps per run, batch {meta['batch_size']}, preset `{meta['preset']}`,"
        f" {meta['seeds']} paired seeds{order}{budget}; curated {meta['n_curated']} docs, full"
        f" {meta['n_full']} docs, evaluation set {meta['n_target']} docs"
        f" ({meta['n_target_removed']} target docs removed from training sets)"
    )


def verify_page(results: dict[str, dict[str, Any]], meta: dict[str, Any], curve: bytes) -> Page:
    """verify.md / verify.html: the winning arm first, then every arm and the paired differences."""
    uni = meta["unigram_target_ce"]
    best = min(results, key=lambda k: results[k]["target_loss_mean"])
    head = [
        "arm",
        "eval loss (mean ± std)",
        "below unigram",
        "paired diff vs curated (mean ± std)",
        "perplexity (mean ± std)",
    ]
    rows = [
        [
            name,
            f"{r['target_loss_mean']:.4f} ± {r['target_loss_std']:.4f}",
            f"{uni - r['target_loss_mean']:.2f}",
            f"{r['paired_diff_mean']:+.4f} ± {r['paired_diff_std']:.4f}",
            f"{r['perplexity_mean']:.2f} ± {r['perplexity_std']:.2f}",
        ]
        for name, r in results.items()
    ]
    return Page(
        title="Verify: retrained proxy on the curated set vs the baselines",
        answer=[
            f"Lowest evaluation loss: **{best}**. The evaluation set's cross-entropy under the full "
            f"corpus's unigram model (same tokenizer) is **{uni:.3f}** nats; an arm that is not "
            "clearly below it has learnt little beyond token frequencies "
            f"(untrained: {meta['untrained_ce']:.2f})."
        ],
        details=[_protocol_line(meta)],
        sections=[
            Section(
                "Every arm",
                paragraphs=[
                    "Paired diff: the arm's loss minus the curated arm's on the same seed (> 0: "
                    "curated is better)."
                ],
                table=Table(head, rows),
            ),
            Section(
                "Target loss over steps",
                figure=Figure("target loss over steps", curve, CURVE_FILE),
            ),
        ],
    )


def check_subset(cur_df: Any, full_df: Any, curated: str, full: str) -> None:
    """UsageError unless every curated document (by id, with the same text) is in the full set."""
    full_text = dict(zip(full_df["id"].to_list(), full_df["text"].to_list()))
    missing = [i for i in cur_df["id"].to_list() if i not in full_text]
    changed = [
        i
        for i, t in zip(cur_df["id"].to_list(), cur_df["text"].to_list())
        if i in full_text and full_text[i] != t
    ]
    if missing or changed:
        bad = missing or changed
        what = "are not in" if missing else "have another text than in"
        raise UsageError(
            f"{len(bad)} of the {cur_df.height} curated documents in {curated} {what} the full "
            f"corpus {full} (e.g. {', '.join(repr(i) for i in bad[:3])}): the curated set must "
            "be a subset of --full (pass the corpus that was pruned)"
        )


def run_verify(args: VerifyArgs) -> Path:
    """Train every arm for the same steps; write verify.json, verify.md/.html and verify_curve.png."""
    from curation.atomic import atomic_write_text, staged_outputs
    from curation.devices import resolve_device

    args.validate()
    args.device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in reversed(VerifyDir(out).outputs()):  # a failed rerun leaves no old results
        path.unlink(missing_ok=True)
    inputs = _read_inputs(args)
    data = _encode_inputs(args, inputs, out)
    cur, full, target = data.cur, data.full, data.target
    steps = args.steps or max(1, math.ceil(len(cur) / args.batch_size) * max(1, args.epochs))
    cfg = args.train_config()
    picks = _baseline_picks(args, inputs.full_df, full, len(cur), steps, cfg, data.vocab, data.eos)
    runs = _train_arms(args, data, picks, steps, cfg)
    results = _paired(runs)
    from curation.baselines import counted_tokens, unigram_cross_entropy

    unigram = unigram_cross_entropy(
        counted_tokens(full.input_ids, full.attention_mask, full.loss_mask),
        counted_tokens(target.input_ids, target.attention_mask, target.loss_mask),
        data.vocab,
    )
    meta = {
        "steps": steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "preset": args.preset,
        "seeds": args.seeds,
        "n_curated": len(cur),
        "n_full": len(full),
        "n_target": len(target),
        "n_target_removed": inputs.n_removed,
        # documents longer than seq_len tokens are truncated to it (policy: truncate; counted)
        "n_truncated": data.n_truncated,
        "unigram_target_ce": unigram,
        "untrained_ce": math.log(data.vocab),
        "selection_target": args.selection_target,
        "reference": args.reference,
        "coupled_order": args.coupled_order,
        "pack": args.pack,
    }
    payload = {"args": asdict(args), "meta": meta, "arms": results}
    # allow_nan=False: a NaN or inf can never reach verify.json
    text = json.dumps(payload, indent=2, allow_nan=False)
    done = VerifyDir(out).verify_json.name
    with staged_outputs(out, last=(done,)) as stage:
        staged = VerifyDir(stage)
        curve = staged.curve_png
        plot_curves(results, curve, "target loss while training from scratch", unigram)
        write_page(stage, VERIFY_STEM, verify_page(results, meta, curve.read_bytes()))
        atomic_write_text(staged.verify_json, text)
    return out


@dataclass
class _Inputs:
    """The three corpora, target documents removed from the training sets."""

    target_df: Any
    cur_df: Any
    full_df: Any
    n_removed: int
    cur_rows: np.ndarray  # each curated document's row in full_df


def _read_inputs(args: VerifyArgs) -> _Inputs:
    """Read target, curated and full; drop every target (and selection-target) id from training."""
    import polars as pl

    from curation.corpus import FieldMap, read_corpus

    fmap = FieldMap(**args.fields) if args.fields else FieldMap()
    target_df = read_corpus(args.target, fields=fmap).df
    if target_df.height == 0:
        raise UsageError(f"target {args.target} is empty")
    tids = set(target_df["id"].to_list())
    if args.selection_target:
        sel_ids = read_corpus(args.selection_target, fields=fmap).df["id"].cast(pl.Utf8)
        tids |= set(sel_ids.to_list())
    cur_df = read_corpus(args.curated, fields=fmap).df
    full_df = read_corpus(args.full, fields=fmap).df
    check_subset(cur_df, full_df, args.curated, args.full)
    n_removed = int(cur_df["id"].is_in(list(tids)).sum() + full_df["id"].is_in(list(tids)).sum())
    cur_df = cur_df.filter(~pl.col("id").is_in(list(tids)))
    full_df = full_df.filter(~pl.col("id").is_in(list(tids)))
    if cur_df.height == 0:
        raise UsageError(f"{args.curated} has no documents outside the target set")
    if cur_df.height > full_df.height:
        raise UsageError("the curated set is larger than the full corpus; swap --curated/--full?")
    row_of = {i: r for r, i in enumerate(full_df["id"].to_list())}
    cur_rows = np.array([row_of[i] for i in cur_df["id"].to_list()], np.int64)
    return _Inputs(target_df, cur_df, full_df, n_removed, cur_rows)


@dataclass
class _Encoded:
    """The corpora as token arrays, with the tokenizer's size and end-of-text id."""

    cur: Arrays
    full: Arrays
    target: Arrays
    vocab: int
    eos: int
    n_truncated: dict[str, int]
    cur_rows: np.ndarray  # each curated row's row in `full`


def _encode_inputs(args: VerifyArgs, inputs: _Inputs, out: Path) -> _Encoded:
    """Encode every corpus with `--tokenizer` (or one trained on the full corpus, saved in out)."""
    from curation.encode import encode_corpus
    from curation.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    else:
        tok = train_tokenizer(inputs.full_df["text"].to_list(), args.vocab_size, seed=args.seed)
        save_tokenizer(tok, VerifyDir(out).tokenizer)
    kw = {} if args.template is None else {"template": args.template}
    n_truncated: dict[str, int] = {}

    def enc(df: Any, name: str) -> Arrays:
        encoded = encode_corpus(df, tok, args.seq_len, **kw)
        n_truncated[name] = int(np.asarray(encoded.truncated).sum())
        return Arrays.of(encoded)

    cur, full = enc(inputs.cur_df, "curated"), enc(inputs.full_df, "full")
    target = enc(inputs.target_df, "target")
    eos = tok.eos_token_id if getattr(tok, "eos_token_id", None) is not None else 0
    return _Encoded(cur, full, target, len(tok), eos, n_truncated, inputs.cur_rows)


def _arm_data(
    arm: str, seed: int, data: _Encoded, picks: dict[str, np.ndarray]
) -> tuple[Arrays, np.ndarray]:
    """The training set of one arm for one seed, and each of its rows' row in the full corpus."""
    if arm == "curated":
        return data.cur, data.cur_rows
    if arm == "full":
        return data.full, np.arange(len(data.full))
    if arm == "random":
        size = len(data.cur)
        sub = np.random.default_rng(seed).choice(len(data.full), size=size, replace=False)
        rows = np.sort(sub)
    else:
        rows = picks[arm]
    return data.full.take(rows), rows


def _train_arms(
    args: VerifyArgs, data: _Encoded, picks: dict[str, np.ndarray], steps: int, cfg: TrainConfig
) -> dict[str, list[dict[str, Any]]]:
    """Every arm trained on every seed (paired: the same seeds for every arm)."""
    from tqdm.auto import tqdm

    seeds = [args.seed + s for s in range(args.seeds)]
    arms = ["curated", *args.baselines]
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    with tqdm(total=steps * len(seeds) * len(arms), desc="verify", disable=not args.progress) as pb:
        for s in seeds:
            for arm in arms:
                train, rows = _arm_data(arm, s, data, picks)
                run = ProxyRun(steps, cfg, s, data.vocab, data.eos, args.n_evals, packed=args.pack)
                if args.coupled_order:
                    run = replace(run, pool_rows=rows, pool_size=len(data.full))
                runs[arm].append(train_proxy(train, data.target, run, pb)[1])
    return runs


def _paired(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each arm's summary with its paired difference to the curated arm, seed by seed."""
    results = {a: summarise(r) for a, r in runs.items()}
    ref = np.array([r["final_loss"] for r in runs["curated"]])
    for r in results.values():
        d = np.array([x["final_loss"] for x in r["runs"]]) - ref
        r["paired_diff_vs_curated"] = d.tolist()
        r["paired_diff_mean"] = float(d.mean())
        r["paired_diff_std"] = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    return results
