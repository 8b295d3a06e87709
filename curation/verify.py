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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curation.errors import UsageError

ARMS = ("curated", "random", "full")


@dataclass
class VerifyArgs:
    """Arguments of `adamshap verify` (saved in verify.json)."""

    curated: str
    full: str
    target: str
    out: str
    seeds: int = 3
    steps: int | None = None  # default: ceil(n_curated / batch_size) * epochs, for every arm
    epochs: int = 1
    preset: str = "tiny"
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.1
    max_grad_norm: float | None = 1.0
    warmup_frac: float = 0.05
    n_evals: int = 10
    eval_batch_size: int = 64
    tokenizer: str | None = None
    vocab_size: int = 4096
    template: str | None = None
    seed: int = 0
    progress: bool = True
    device: str = "cpu"  # auto | cpu | cuda | cuda:N (curation/devices.py)
    fields: dict[str, str] | None = None

    def __post_init__(self) -> None:
        # stored absolute: verify.json means the same files whatever the working directory
        for name in ("curated", "full", "target", "out", "tokenizer"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, os.path.abspath(os.fspath(v)))


OUTPUT_FILES = ("verify_curve.png", "verify.md", "verify.json")  # verify.json: the marker


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


def train_and_evaluate(
    train: Arrays,
    target: Arrays,
    steps: int,
    cfg: TrainConfig,
    seed: int,
    vocab_size: int,
    eos_token_id: int = 0,
    n_evals: int = 10,
    pbar: Any = None,
) -> dict[str, Any]:
    """Train a fresh proxy for `steps` AdamW steps on `train`; returns the target-loss curve."""
    from adamshap_core import build_model, plain_step, warmup_cosine

    if len(train) == 0:
        raise UsageError("a training arm has no documents")
    model = build_model(cfg.preset, vocab_size, cfg.seq_len, seed=seed, eos_token_id=eos_token_id)
    model.to(cfg.device).train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay
    )
    sched = warmup_cosine(opt, max(0, round(cfg.warmup_frac * steps)), steps)
    rng = np.random.default_rng(seed)
    order = np.empty(0, np.int64)
    points = set(eval_points(steps, n_evals))
    curve: list[tuple[int, float]] = []
    if 0 in points:
        curve.append(
            (
                0,
                _check_finite(
                    target_loss(model, target, cfg.eval_batch_size), "target loss", 0, seed
                ),
            )
        )
    for step in range(1, steps + 1):
        while len(order) < cfg.batch_size:
            order = np.concatenate([order, rng.permutation(len(train))])
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        loss = plain_step(model, opt, train.batch(idx), cfg.max_grad_norm)
        sched.step()
        _check_finite(loss, "training loss", step, seed)
        if step in points:
            curve.append(
                (
                    step,
                    _check_finite(
                        target_loss(model, target, cfg.eval_batch_size), "target loss", step, seed
                    ),
                )
            )
        if pbar is not None:
            pbar.update(1)
    final = curve[-1][1]
    return {"seed": seed, "final_loss": final, "perplexity": math.exp(final), "curve": curve}


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


def plot_curves(results: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """verify_curve.png: mean target loss over steps per arm (± std band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from curation.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for name, r in results.items():
        x, m, s = np.array(r["curve_steps"]), np.array(r["curve_mean"]), np.array(r["curve_std"])
        ax.plot(x, m, label=name)
        ax.fill_between(x, m - s, m + s, alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("target loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _markdown(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """verify.md body."""
    lines = [
        "# Verify: retrained proxy on curated vs random vs full",
        "",
        f"- {meta['steps']} steps per run, batch {meta['batch_size']}, preset `{meta['preset']}`,"
        f" {meta['seeds']} seeds; curated {meta['n_curated']} docs, full {meta['n_full']} docs,"
        f" target {meta['n_target']} docs ({meta['n_target_removed']} target docs removed from"
        " training sets)",
        "",
        "| arm | target loss (mean ± std) | perplexity (mean ± std) |",
        "|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['target_loss_mean']:.4f} ± {r['target_loss_std']:.4f} |"
            f" {r['perplexity_mean']:.2f} ± {r['perplexity_std']:.2f} |"
        )
    return "\n".join(lines + ["", "![target loss over steps](verify_curve.png)", ""])


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
    """Train every arm for the same steps; write verify.json, verify.md and verify_curve.png."""
    import polars as pl
    from tqdm.auto import tqdm

    from curation.atomic import atomic_write_text, staged_outputs
    from curation.corpus import FieldMap, read_corpus
    from curation.devices import resolve_device
    from curation.encode import encode_corpus
    from curation.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    args.device = resolve_device(args.device)
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"steps must be >= 1, got {args.steps}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in reversed(OUTPUT_FILES):  # a failed rerun must not leave the old results
        (out / name).unlink(missing_ok=True)
    fields = FieldMap(**args.fields) if args.fields else FieldMap()
    target_df = read_corpus(args.target, fields=fields).df
    if target_df.height == 0:
        raise UsageError(f"target {args.target} is empty")
    tids = set(target_df["id"].to_list())
    cur_df = read_corpus(args.curated, fields=fields).df
    full_df = read_corpus(args.full, fields=fields).df
    check_subset(cur_df, full_df, args.curated, args.full)
    n_removed = int(cur_df["id"].is_in(list(tids)).sum() + full_df["id"].is_in(list(tids)).sum())
    cur_df = cur_df.filter(~pl.col("id").is_in(list(tids)))
    full_df = full_df.filter(~pl.col("id").is_in(list(tids)))
    if cur_df.height == 0:
        raise UsageError(f"{args.curated} has no documents outside the target set")
    if cur_df.height > full_df.height:
        raise UsageError("the curated set is larger than the full corpus; swap --curated/--full?")
    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    else:
        tok = train_tokenizer(full_df["text"].to_list(), args.vocab_size, seed=args.seed)
        save_tokenizer(tok, out / "tokenizer")
    kw = {} if args.template is None else {"template": args.template}

    n_truncated: dict[str, int] = {}

    def enc(df: pl.DataFrame, name: str) -> Arrays:
        encoded = encode_corpus(df, tok, args.seq_len, **kw)
        n_truncated[name] = int(np.asarray(encoded.truncated).sum())
        return Arrays.of(encoded)

    cur, full, target = enc(cur_df, "curated"), enc(full_df, "full"), enc(target_df, "target")
    steps = args.steps or max(1, math.ceil(len(cur) / args.batch_size) * max(1, args.epochs))
    cfg = TrainConfig(
        preset=args.preset,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        warmup_frac=args.warmup_frac,
        eval_batch_size=args.eval_batch_size,
        device=args.device,
    )
    eos = tok.eos_token_id if getattr(tok, "eos_token_id", None) is not None else 0
    seeds = [args.seed + s for s in range(args.seeds)]
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in ARMS}
    with tqdm(total=steps * len(seeds) * len(ARMS), desc="verify", disable=not args.progress) as pb:
        for s in seeds:
            sub = np.sort(np.random.default_rng(s).choice(len(full), size=len(cur), replace=False))
            for arm, data in (("curated", cur), ("random", full.take(sub)), ("full", full)):
                runs[arm].append(
                    train_and_evaluate(data, target, steps, cfg, s, len(tok), eos, args.n_evals, pb)
                )
    results = {a: summarise(r) for a, r in runs.items()}
    meta = {
        "steps": steps,
        "batch_size": args.batch_size,
        "preset": args.preset,
        "seeds": args.seeds,
        "n_curated": len(cur),
        "n_full": len(full),
        "n_target": len(target),
        "n_target_removed": n_removed,
        # documents longer than seq_len tokens are truncated to it (policy: truncate; counted)
        "n_truncated": n_truncated,
    }
    payload = {"args": asdict(args), "meta": meta, "arms": results}
    # allow_nan=False: a NaN or inf can never reach verify.json
    text = json.dumps(payload, indent=2, allow_nan=False)
    with staged_outputs(out, last=("verify.json",)) as stage:
        plot_curves(results, stage / "verify_curve.png", "target loss while training from scratch")
        atomic_write_text(stage / "verify.md", _markdown(results, meta))
        atomic_write_text(stage / "verify.json", text)
    return out
