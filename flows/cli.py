"""The `adamshap` command line: score, report, prune, verify, curate, serve, corpus build.

Heavy imports (torch, prefect, polars) happen inside the command handlers so `--help` is fast.
User errors (`AdamshapError`) print one line on stderr and exit with their code (2); Ctrl-C exits
with 130. Each stage saves its own arguments as JSON next to its outputs.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import errno
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# torch-free (adamshap_core imports lazily): `--help` stays fast
from adamshap_core.choices import CONTRACTIONS, PRESET_NAMES
from adamshap_core.estimators import DEFAULT_ORDER, preferred_order
from curation.settings import (
    ON_BAD_ROWS,
    POSITIVE,
    POSITIVE_INT,
    PRECISIONS,
    PRUNE_BY,
    RANK_BY,
    RULES,
)

CORPUS_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet", ".pq")
EXIT_INTERRUPTED = 130


# ----------------------------------------------------------------------------- argument types


def argument_type(kind: type, rule: Callable[[Any], str | None] | None = None, example: str = ""):
    """An argparse type: parse `text` as `kind` (int or float), then `rule(value)` says what is
    wrong with it (a message with `{text}` for the typed text) or None. `example` follows the
    not-a-number message."""
    what = "an integer" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}{example}") from None
        problem = rule(value) if rule is not None else None
        if problem:
            raise argparse.ArgumentTypeError(problem.format(text=text))
        return value

    return parse


def _keep_rule(value: float) -> str | None:
    """What `validate_keep` (the one rule of a keep fraction) says, without its option name."""
    from curation.errors import UsageError
    from curation.settings import validate_keep

    try:
        validate_keep(value)
    except UsageError as exc:
        return str(exc).removeprefix("--keep ").replace(f"got {value}", "got {text}", 1)
    return None


def setting_type(stage: str, name: str, kind_only: bool = False) -> Callable[[str], Any]:
    """The argparse type of `stage`'s setting `name`: its one rule (curation/settings.py)."""
    return RULES[stage][name].cli_type(kind_only)


keep_fraction = argument_type(float, _keep_rule, " (expected e.g. 0.7)")  # in (0, 1]


def estimator_list(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated estimator names, e.g. `adam2,adam-loo`."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    offered = preferred_order()
    unknown = [n for n in names if n not in offered]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown estimator(s) {', '.join(unknown) or '(none)'}; choose from {','.join(offered)}"
        )
    return tuple(dict.fromkeys(names))


def baseline_list(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated verify baselines, e.g. `random,perplexity,dsir,full`."""
    from curation.verify import BASELINE_ARMS

    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in BASELINE_ARMS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown baseline(s) {', '.join(unknown) or '(none)'}; choose from "
            f"{','.join(BASELINE_ARMS)}"
        )
    return names


def corpus_stem(path: str | Path) -> str:
    """File name without its corpus suffix (`data/web.jsonl.gz` -> `web`)."""
    name = Path(path).name
    for suffix in CORPUS_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)] or name
    return Path(name).stem or name


# ----------------------------------------------------------------------------- helpers


def _require_path(path: str | None, what: str) -> None:
    """Raise UsageError when a given input path does not exist."""
    from curation.errors import UsageError

    if path is not None and not Path(path).exists():
        raise UsageError(f"{what} not found: {path}")


def _check_out(path: str | None, option: str = "--out") -> None:
    """UsageError when an output folder cannot be one: a file, a broken symlink, unwritable."""
    from curation.errors import UsageError

    if path is None:
        return
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise UsageError(
            f"{option} {path} is a broken symbolic link (to {os.readlink(p)}); remove it or "
            "choose another folder"
        )
    if p.exists() and not p.is_dir():
        raise UsageError(
            f"{option} {path} is a file, not a folder; choose a folder (the outputs are written "
            "inside it)"
        )
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"{option} {path}: {probe} is a file, not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(
            f"{option} {path}: {probe} is not writable by this user; choose a folder you can "
            "write to"
        )


def build_args(cls: type, values: dict[str, Any], aliases: dict[str, Sequence[str]] | None = None):
    """Instantiate the dataclass `cls` from `values`, skipping None and mapping names to its fields.

    `aliases` maps a key of `values` to other field names it may have in `cls` (e.g. `out` ->
    `out_dir`). Keys that match no field raise UsageError naming them.
    """
    from curation.errors import UsageError

    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        names = [key, *(aliases or {}).get(key, ())]
        target = next((n for n in names if n in fields), None)
        if target is None:
            unknown.append(key)
        else:
            kwargs[target] = value
    if unknown:
        raise UsageError(f"{cls.__name__} has no option(s) {', '.join(sorted(unknown))}")
    return cls(**kwargs)


OUT_ALIASES: dict[str, Sequence[str]] = {
    "out": ("out_dir", "run_dir", "output"),
    "corpus": ("corpus_path", "path"),
    "target": ("target_path",),
    "scores": ("scores_dir", "run_dir"),
    "tokenizer": ("tokenizer_dir",),
    "model": ("model_dir", "init_model"),
    "seeds": ("n_seeds",),
    "curated": ("curated_path",),
    "full": ("full_path",),
}


def _field_map(args: argparse.Namespace) -> dict[str, str] | None:
    """Field-name overrides (`--id-field` etc.) as a FieldMap dict, or None when none given."""
    names = ("id", "source", "text", "prompt", "response")
    given = {n: getattr(args, f"{n}_field", None) for n in names}
    given = {k: v for k, v in given.items() if v is not None}
    return given or None


def _add_field_options(p: argparse.ArgumentParser, bad_rows: bool = True) -> None:
    g = p.add_argument_group("corpus fields")
    g.add_argument("--id-field", help="name of the id field (default: id)")
    g.add_argument("--source-field", help="name of the source field (default: source)")
    g.add_argument("--text-field", help="name of the text field (default: text)")
    g.add_argument("--prompt-field", help="instruction data: name of the prompt field")
    g.add_argument("--response-field", help="instruction data: name of the response field")
    if not bad_rows:  # prune and verify read strictly
        return
    g.add_argument(
        "--on-bad-rows",
        choices=ON_BAD_ROWS,
        help="stop at the first bad row (error, default) or write it to a rejects file (skip)",
    )


def _add_score_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scoring")
    g.add_argument("--preset", choices=PRESET_NAMES, help="proxy GPT-2 size")
    _add_setting(g, "score", "--epochs", "scored passes over the corpus (1; 0: warm start only)")
    _add_setting(g, "score", "--warm-start-steps", "plain AdamW steps before scoring (50)")
    g.add_argument(
        "--estimators",
        type=estimator_list,
        help=f"comma-separated subset of {','.join(preferred_order())} "
        f"(default: {','.join(DEFAULT_ORDER)})",
    )
    g.add_argument(
        "--contraction",
        choices=CONTRACTIONS,
        help="ghost contraction: exact (default), lowrank (rank-r target side), gram (token x "
        "token with a rank-1 preconditioner; adam/sgd only, pays for small target batches) or "
        "auto (the cheaper forms only where they pay); speed and fidelity in "
        "benchmarks/results/speed.md",
    )
    _add_setting(g, "score", "--rank", "rank of the low-rank contraction (8)")
    _add_setting(
        g,
        "score",
        "--target-chunk",
        "take target gradients K examples at a time to cap peak memory (8; 0 = whole batch)",
        metavar="K",
    )
    _add_setting(
        g,
        "score",
        "--snapshots",
        "shared snapshots at which every document is re-valued (checkpoint values, the "
        "`ckpt` estimator of prune; 3; 0 = in-run values only)",
        metavar="C",
    )
    _add_setting(
        g,
        "score",
        "--sketch-dim",
        "K x K gradient sketch per weight for the checkpoint values (64)",
        metavar="K",
    )
    g.add_argument(
        "--momentum-window",
        type=setting_type("score", "momentum_window", kind_only=True),
        metavar="K",
        help="also value each example by its carry-over through Adam's momentum over the K "
        "steps after it was drawn (value_<est>_prop columns; 0 = off, the default)",
    )
    _add_training_options(g)


def _add_training_options(g: Any) -> None:
    """`adamshap score`: the proxy's training settings, its tokenizer and starting model."""
    for flag, text in (
        ("--seed", "random seed"),
        ("--batch-size", "training examples per step"),
        ("--target-batch-size", "target examples per step"),
        ("--seq-len", "tokens per example (longer: truncated)"),
        ("--vocab-size", "BPE vocabulary size when training one"),
        ("--lr", "peak AdamW learning rate"),
        ("--max-grad-norm", "clip the gradient norm to this value (1.0)"),
    ):
        _add_setting(g, "score", flag, text)
    g.add_argument("--tokenizer", metavar="DIR", help="use this tokenizer folder")
    g.add_argument("--model", metavar="DIR", help="start from this local GPT-2 checkpoint folder")


def _add_setting(g: Any, stage: str, flag: str, text: str, **kw: Any) -> None:
    """Option `flag` for `stage`'s setting of that name (`--seq-len`: `seq_len`), by its rule."""
    g.add_argument(flag, type=setting_type(stage, flag[2:].replace("-", "_")), help=text, **kw)


def _add_device_option(p: argparse.ArgumentParser, precision: bool = False) -> None:
    """`--device` (and `--precision` where the scorer runs) for a subcommand."""
    p.add_argument(
        "--device",
        metavar="DEV",
        help="auto (CUDA when present; the default), cpu, cuda or cuda:N",
    )
    if precision:
        p.add_argument(
            "--precision",
            choices=PRECISIONS,
            help="scored steps in fp32 (default) or under bf16 autocast (CUDA only)",
        )


def _device_values(args: argparse.Namespace) -> dict[str, Any]:
    """`device` (checked, `auto` when not given) and `precision` (when given) for a dataclass."""
    from curation.devices import check_device

    values: dict[str, Any] = {"device": check_device(args.device or "auto")}
    if getattr(args, "precision", None) is not None:
        values["precision"] = args.precision
    return values


def _score_values(args: argparse.Namespace) -> dict[str, Any]:
    names = (
        "preset",
        "epochs",
        "warm_start_steps",
        "seed",
        "batch_size",
        "target_batch_size",
        "contraction",
        "rank",
        "target_chunk",
        "snapshots",
        "sketch_dim",
        "momentum_window",
        "seq_len",
        "vocab_size",
        "lr",
        "max_grad_norm",
        "tokenizer",
        "model",
        "on_bad_rows",
    )
    values = {n: getattr(args, n, None) for n in names}
    if getattr(args, "estimators", None) is not None:
        values["estimators"] = list(args.estimators)
    values["fields"] = _field_map(args)
    return values


# ----------------------------------------------------------------------------- commands


def cmd_score(args: argparse.Namespace) -> int:
    """`adamshap score`: scored training of a proxy on CORPUS against TARGET."""
    from curation.scoring_run import ScoreArgs, run_scoring

    _require_path(args.corpus, "corpus")
    _require_path(args.target, "target")
    for path, what in ((args.tokenizer, "tokenizer folder"), (args.model, "model folder")):
        _require_path(path, what)
    _check_out(args.out)
    values = {"corpus": args.corpus, "target": args.target, "out": args.out, **_score_values(args)}
    values.update(_device_values(args))
    run_dir = run_scoring(build_args(ScoreArgs, values, OUT_ALIASES))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        print(f"run directory: {run_dir}")
        print(f"next: adamshap report {run_dir}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """`adamshap report`: aggregate a run's ledger and write report.md / report.html."""
    from curation.aggregate import aggregate_run
    from curation.errors import UsageError
    from curation.report import write_report
    from curation.run_dir import RunDir

    run = RunDir(args.run_dir)
    run_dir = run.path
    if not run.ledger.is_dir():
        raise UsageError(f"{run_dir} is not a scoring run directory (no ledger/ inside)")
    if not run.ledger_parts():
        raise UsageError(
            f"{run_dir} has no scored steps yet (its ledger is empty); run the same `adamshap "
            "score` command until scoring has started (or finished), then report"
        )
    aggregate_run(run_dir)
    md, html = write_report(run_dir)
    print(f"report: {html}")
    print(f"markdown: {md}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """`adamshap prune`: keep the most valuable fraction of CORPUS under diversity quotas."""
    from curation.prune import PruneArgs, check_inputs_apart, clear_outputs, run_prune
    from curation.run_dir import PruneDir

    out = args.out or str(Path.cwd() / f"adamshap-prune-{corpus_stem(args.corpus)}")
    _check_out(out)
    check_inputs_apart(Path(out), args.corpus, args.target)
    if Path(out).is_dir():  # whatever fails below, no earlier kept/excluded pair may remain
        clear_outputs(Path(out))
    _require_path(args.corpus, "corpus")
    _require_path(args.scores, "scores run directory")
    _require_path(args.target, "target")
    values = {
        "corpus": args.corpus,
        "keep": args.keep,
        "out": out,
        "scores": args.scores,
        "target": args.target,
        "clusters": args.clusters,
        "dedup_eps": args.dedup_eps,
        "estimator": args.estimator,
        "floor": args.floor,
        "seed": args.seed,
        "dedup_jaccard": args.dedup_jaccard,
        "max_dedup_frac": args.max_dedup_frac,
        "target_frac": args.target_frac,
        "fields": _field_map(args),
        **_device_values(args),
        "by": getattr(args, "by", None),
        "quality": None if args.quality is None else args.quality == "on",
        "min_chars": args.min_chars,
        "rank_by": args.rank_by,
    }
    out_dir = _run_stage("prune", run_prune, build_args(PruneArgs, values, OUT_ALIASES))
    pruned = PruneDir(out_dir)
    _print_outputs("pruned corpus", out_dir, (pruned.report_html, pruned.prune_json))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """`adamshap verify`: retrain on curated vs random-same-size vs full; compare target loss."""
    from curation.run_dir import VerifyDir
    from curation.verify import VerifyArgs, run_verify

    _check_out(args.out)
    for path in reversed(VerifyDir(args.out).outputs()):  # whatever fails below, none may remain
        path.unlink(missing_ok=True)
    for path, what in ((args.curated, "curated corpus"), (args.full, "full corpus")):
        _require_path(path, what)
    _require_path(args.target, "target")
    values = {
        "curated": args.curated,
        "full": args.full,
        "target": args.target,
        "out": args.out,
        "seeds": args.seeds,
        "preset": args.preset,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "lr": args.lr,
        "seed": args.seed,
        "steps": args.steps,
        "baselines": args.baselines,
        "selection_target": args.selection_target,
        "reference": args.reference,
        "coupled_order": args.coupled_order,
        "pack": args.pack,
        "fields": _field_map(args),
        **_device_values(args),
    }
    _require_path(args.selection_target, "selection target")
    _require_path(args.reference, "reference run")
    out_dir = _run_stage("verify", run_verify, build_args(VerifyArgs, values, OUT_ALIASES))
    done = VerifyDir(out_dir)
    _print_outputs("verify results", out_dir, (done.report_html, done.report_md, done.verify_json))
    return 0


def _run_stage(command: str, run: Callable[[Any], Path], stage_args: Any) -> Path:
    """`run(stage_args)`; a corpus error gets the hint for `command`'s strict-corpus option."""
    from curation.errors import AdamshapError

    try:
        return run(stage_args)
    except AdamshapError as exc:
        raise _strict_corpus_hint(command)(exc) from None


def _print_outputs(what: str, out_dir: Path, paths: Sequence[Path]) -> None:
    """Print `what: out_dir`, then each of `paths` that exists."""
    print(f"{what}: {out_dir}")
    for path in paths:
        if Path(path).exists():
            print(f"  {path}")


def cmd_curate(args: argparse.Namespace) -> int:
    """`adamshap curate`: the whole pipeline as a Prefect flow (ephemeral Prefect, cached)."""
    _require_path(args.manifest, "manifest")
    _check_out(args.out)
    from curation.errors import AdamshapError
    from flows import prefect_env

    device = _device_values(args) if args.device or args.precision else {}

    prefect_env.apply_offline_defaults({"PREFECT_LOGGING_LEVEL": "WARNING"})
    from curation.manifest import load_manifest

    manifest = load_manifest(args.manifest)  # fail fast (no Prefect start-up) on a bad manifest
    check_run_settings({**manifest.run, **device}, args.keep, where=str(args.manifest))
    from flows.curate import curate_flow
    from flows.quiet import quiet_user_errors

    quiet_user_errors()
    prefect_env.tie_temporary_server_to_this_process()  # never outlives curate, even SIGKILLed
    try:
        curate_flow(
            manifest_path=str(Path(args.manifest).resolve()), keep=args.keep, out=args.out, **device
        )
    except AdamshapError as exc:
        raise _strict_corpus_hint("curate")(exc) from None
    finally:
        prefect_env.quiet_server_shutdown()  # its shutdown noise must not follow our last line
    return 0


def check_run_settings(run: dict[str, Any], keep: float | None, where: str) -> float:
    """Check a manifest's `run` settings that would otherwise fail late; return the keep fraction.

    `--keep` (or `run.keep`) must be in (0, 1]. Raises UsageError naming the manifest and the
    setting. The stages' numeric settings were checked by the manifest loader (their rules).
    """
    from curation.errors import UsageError
    from curation.settings import resolve_keep

    fraction = resolve_keep(keep, run, where, " (set a fraction such as 0.7)")
    from curation.devices import check_device, validate_precision

    # device: unset or empty means auto; precision: unset means the stage's default
    values = {"device": run.get("device") or "auto", "precision": run.get("precision")}
    for name, check in (("device", check_device), ("precision", validate_precision)):
        try:
            if values[name] is not None:
                check(values[name])
        except UsageError as exc:
            raise UsageError(f"{where}: run.{name}: {exc}") from None
    return fraction


_BAD_ROW_HINTS = {
    "prune": (
        "fix or remove that row; `adamshap prune` reads its inputs strictly "
        "(`adamshap score --on-bad-rows skip` lists every bad row in RUN_DIR/rejects/)"
    ),
    "verify": (
        "fix or remove that row; `adamshap verify` reads its inputs strictly "
        "(`adamshap score --on-bad-rows skip` lists every bad row in RUN_DIR/rejects/)"
    ),
    "curate": "fix the row, or set `on_bad_rows: skip` under `run:` in the manifest",
}


_FIELD_OPTS = {
    "id": "--id-field",
    "source": "--source-field",
    "text": "--text-field",
    "prompt": "--prompt-field",
    "response": "--response-field",
}


def _strict_corpus_hint(command: str) -> Callable[[BaseException], BaseException]:
    """Rewrite a CorpusError's `--on-bad-rows` hint for commands that have no such option."""

    def rewrite(exc: BaseException) -> BaseException:
        from curation.errors import CorpusError

        if isinstance(exc, CorpusError) and exc.hint and "--on-bad-rows" in exc.hint:
            hint = _BAD_ROW_HINTS[command]
            what = exc.message.removeprefix("missing ")
            if command != "curate" and exc.message.startswith("missing ") and what in _FIELD_OPTS:
                hint = f"if the corpus names the {what} field otherwise, pass {_FIELD_OPTS[what]} NAME; else {hint}"
            return CorpusError(exc.path, exc.row, exc.field, exc.message, hint, exc.unit)
        return exc

    return rewrite


def cmd_serve(args: argparse.Namespace) -> int:
    """`adamshap serve`: serve the curate flow on a schedule (needs a running Prefect server)."""
    _require_path(args.manifest, "manifest")
    from flows.serve import serve

    serve(args.manifest, cron=args.cron, interval=args.interval, keep=args.keep, out=args.out)
    return 0


def cmd_corpus_build(args: argparse.Namespace) -> int:
    """`adamshap corpus build demo`: assemble the demo corpus from installed Debian packages."""
    if args.name == "rag":
        from curation.rag_corpus import build_rag_corpus

        per = 200 if args.per_source is None else args.per_source
        path = build_rag_corpus(args.out, per_source=per, seed=args.seed)
        print(f"rag corpus: {path or args.out}")
        return 0
    if args.name == "instruct":
        from curation.instruct_corpus import build_instruct_corpus

        per = 200 if args.per_source is None else args.per_source
        path = build_instruct_corpus(args.out, per_source=per, seed=args.seed)
        print(f"instruct corpus: {path or args.out}")
        return 0
    from curation.demo_corpus import build_demo_corpus

    sources = args.sources.split(",") if args.sources else None
    per = 300 if args.per_source is None else args.per_source
    path = build_demo_corpus(args.out, per_source=per, seed=args.seed, sources=sources)
    print(f"demo corpus: {path or args.out}")
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The `adamshap` argument parser with all subcommands."""
    parser = argparse.ArgumentParser(
        prog="adamshap",
        description="Adam-aware In-Run Data Shapley: value, prune and verify text corpora.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name, summary, description, handler, add_arguments in SUBCOMMANDS:
        add_arguments(_subcommand(sub, name, summary, description, handler))
    return parser


def _subcommand(
    sub: Any, name: str, summary: str, description: str, handler: Any = None
) -> argparse.ArgumentParser:
    """Subcommand `name`: its one-line `summary` (in `adamshap -h`), `description`, `handler`."""
    p = sub.add_parser(name, help=summary, description=description)
    if handler is not None:
        p.set_defaults(handler=handler)
    return p


def _score_arguments(p: argparse.ArgumentParser) -> None:
    """`adamshap score`'s arguments."""
    p.add_argument("corpus", metavar="CORPUS", help="JSONL(.gz), Parquet or local HF dataset")
    p.add_argument("--target", required=True, metavar="T", help="target (validation) set")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (resumable)")
    _add_score_options(p)
    _add_device_option(p, precision=True)
    _add_field_options(p)


def _report_arguments(p: argparse.ArgumentParser) -> None:
    """`adamshap report`'s arguments."""
    p.add_argument("run_dir", metavar="RUN_DIR", help="directory written by `adamshap score`")


# `adamshap prune`'s numeric settings (checked by curation/settings.py RULES["prune"])
PRUNE_NUMBERS = (
    ("--clusters", "K", "number of FAISS clusters"),
    ("--floor", "F", "minimum kept share of each FAISS cluster (default: half of --keep; 0: off)"),
    ("--min-chars", "N", "quality rule too_short: fewer than N non-blank characters (50)"),
    ("--dedup-eps", "E", "near-duplicate threshold: cosine > 1-E (0 turns it off)"),
    ("--dedup-jaccard", "J", "a near-duplicate needs token 3-gram Jaccard >= J too (0.8)"),
    ("--max-dedup-frac", "F", "warn loudly when near-duplicates exceed this share (0.3)"),
    ("--target-frac", "F", "share held out as the target when no --target is given (0.05)"),
    ("--seed", "N", "random seed"),
)


def _prune_arguments(p: argparse.ArgumentParser) -> None:
    """`adamshap prune`'s arguments."""
    p.add_argument("corpus", metavar="CORPUS")
    p.add_argument(
        "--keep", type=keep_fraction, default=0.7, help="fraction to keep, in (0, 1] (0.7)"
    )
    p.add_argument(
        "--out",
        metavar="OUT_DIR",
        help="output folder (default: ./adamshap-prune-<corpus name> in the current directory)",
    )
    p.add_argument("--scores", metavar="RUN_DIR", help="existing scoring run to take values from")
    p.add_argument("--target", metavar="T", help="target set (used when scoring runs here)")
    p.add_argument(
        "--estimator",
        choices=("ckpt", *preferred_order(), *(f"{e}_prop" for e in preferred_order())),
        help="value used for ranking: ckpt (checkpoint values, the default), an in-run "
        "estimator's run sum, or <estimator>_prop: its momentum-propagated sum (a run scored "
        "with --momentum-window K)",
    )
    _add_prune_ranking_options(p)
    for flag, metavar, text in PRUNE_NUMBERS:
        _add_setting(p, "prune", flag, text, metavar=metavar)
    _add_field_options(p, bad_rows=False)
    _add_device_option(p)


def _add_prune_ranking_options(p: argparse.ArgumentParser) -> None:
    """`adamshap prune`: quality rules, ranking, granularity and the near-duplicate rule."""
    p.add_argument(
        "--quality",
        choices=("on", "off"),
        help="quality rules before value ranking (on): rows that fail one (too short, minority "
        "script, no function words, long words, repeated text, no word order) are excluded with "
        "reason quality:<rule>",
    )
    p.add_argument(
        "--rank-by",
        choices=RANK_BY,
        help="what fills the kept budget after the quality rules: value (--estimator), "
        "perplexity (lowest proxy loss first), value+perplexity or value+dsir (mean of the value "
        "rank and the proxy-loss / DSIR hashed-n-gram importance rank) or auto (default): "
        "perplexity when the target is held out of the corpus itself (no --target, plain text), "
        "value otherwise",
    )
    p.add_argument(
        "--by",
        choices=PRUNE_BY,
        help="row: rank rows under cluster quotas (default); source: keep or drop whole sources",
    )


# `adamshap verify`'s numeric settings (checked by curation/settings.py RULES["verify"])
VERIFY_NUMBERS = (
    ("--seeds", "random subsets / seeds (3)"),
    ("--epochs", "passes over the curated set"),
    ("--batch-size", "training examples per step"),
    ("--seq-len", "tokens per example"),
    ("--lr", "peak AdamW learning rate"),
    ("--seed", "base random seed"),
    ("--steps", "training steps per arm (default: 1 epoch)"),
)


def _verify_arguments(p: argparse.ArgumentParser) -> None:
    """`adamshap verify`'s arguments."""
    p.add_argument("--curated", required=True, metavar="F", help="curated corpus (kept.<ext>)")
    p.add_argument("--full", required=True, metavar="F", help="the full corpus")
    p.add_argument("--target", required=True, metavar="T", help="target set")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--preset", choices=PRESET_NAMES, help="proxy GPT-2 size")
    for flag, text in VERIFY_NUMBERS:
        _add_setting(p, "verify", flag, text, **({"default": 3} if flag == "--seeds" else {}))
    p.add_argument(
        "--baselines",
        type=baseline_list,
        metavar="A,B",
        help="arms besides curated: random,perplexity,dsir,classifier,full (random,full)",
    )
    p.add_argument(
        "--selection-target",
        metavar="T",
        help="the target the curation selected against (needed by dsir, classifier); "
        "--target is the evaluation set and should be disjoint from it",
    )
    p.add_argument(
        "--reference",
        metavar="RUN_DIR",
        help="a finished `adamshap score` run whose proxy ranks the perplexity baseline "
        "(default: verify trains one on --full)",
    )
    p.add_argument(
        "--coupled-order",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="every arm of a seed visits its rows in one shared order of the full corpus "
        "(default --no-coupled-order: each arm shuffles its own rows)",
    )
    p.add_argument(
        "--pack",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one token budget: every step trains on batch x seq-len real tokens of the arm's "
        "documents laid end to end (default); --no-pack: batch documents per step, padded, so an "
        "arm that keeps longer documents trains on more tokens",
    )
    _add_field_options(p, bad_rows=False)
    _add_device_option(p)


def _curate_arguments(p: argparse.ArgumentParser) -> None:
    """`adamshap curate`'s arguments."""
    _add_manifest_options(p)
    _add_device_option(p, precision=True)


def _add_manifest_options(p: argparse.ArgumentParser) -> None:
    """MANIFEST, --keep and --out: what `curate` and `serve` share."""
    p.add_argument("manifest", metavar="MANIFEST", help="YAML data manifest (data_manifests/)")
    p.add_argument("--keep", type=keep_fraction, help="fraction to keep (default: manifest, 0.7)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/<manifest name>)")


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    """`adamshap serve`'s arguments."""
    _add_manifest_options(p)
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help="cron schedule, e.g. '0 3 * * *'")
    when.add_argument(
        "--interval", type=POSITIVE.cli_type(), metavar="SECONDS", help="run every N s"
    )


def _corpus_arguments(p: argparse.ArgumentParser) -> None:
    """`adamshap corpus`'s actions (`build`)."""
    csub = p.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)
    b = _subcommand(
        csub,
        "build",
        "build a built-in corpus",
        "Build a built-in corpus (demo: real text from installed Debian packages).",
        cmd_corpus_build,
    )
    b.add_argument(
        "name",
        choices=("demo", "instruct", "rag"),
        help="which corpus (instruct: prompt/response tasks; rag: context + question -> answer)",
    )
    b.add_argument("--out", required=True, metavar="FILE", help="output file (.jsonl.gz)")
    b.add_argument(
        "--per-source",
        type=POSITIVE_INT.cli_type(),
        help="documents per source (demo 300, instruct/rag 200)",
    )
    b.add_argument("--seed", type=int, default=0, help="sampling seed")
    b.add_argument(
        "--sources",
        metavar="LIST",
        help="comma-separated subset of bible,fortunes,wordnet,devil,jargon,pydocs (default: all)",
    )


# The subcommands in `adamshap -h` order: name, summary, description, handler, arguments.
SUBCOMMANDS: tuple[tuple[str, str, str, Any, Any], ...] = (
    (
        "score",
        "scored training: value every example of CORPUS against TARGET",
        "Train a proxy GPT-2 on CORPUS and value every example against TARGET.",
        cmd_score,
        _score_arguments,
    ),
    (
        "report",
        "write report.md/report.html for a scoring run",
        "Aggregate RUN_DIR's ledger and write report.md and report.html (with plots).",
        cmd_report,
        _report_arguments,
    ),
    (
        "prune",
        "keep the most valuable fraction of a corpus, with diversity quotas",
        "Keep --keep of CORPUS ranked by value within FAISS clusters; write kept and excluded "
        "rows (with a reason each), prune.json and prune_report.md/.html. Without --scores the "
        "scoring stage runs first with defaults; without --target a small random sample of "
        "the corpus is held out as the target (and kept).",
        cmd_prune,
        _prune_arguments,
    ),
    (
        "verify",
        "retrain on the curated set vs the baselines' selections and compare target loss",
        "Train fresh proxies on the curated set and on each baseline's selection of the same "
        "size from the full corpus (random, perplexity, dsir, classifier) or the full corpus, "
        "with paired seeds; report the evaluation loss (mean +- std), the paired difference "
        "to curated per seed and the evaluation set's unigram cross-entropy.",
        cmd_verify,
        _verify_arguments,
    ),
    (
        "curate",
        "run the whole pipeline from a data manifest (Prefect flow, cached)",
        "Validate, score, aggregate, prune, verify and report as one Prefect flow. Stages are "
        "cached on their inputs: rerunning with another --keep reruns only pruning onwards.",
        cmd_curate,
        _curate_arguments,
    ),
    (
        "serve",
        "serve the curate flow on a schedule (needs `prefect server start`)",
        "Register a scheduled deployment of the curate flow and serve it until Ctrl-C. Needs a "
        "local Prefect server: `prefect server start --host 127.0.0.1` and "
        "`export PREFECT_API_URL=http://127.0.0.1:4200/api`.",
        cmd_serve,
        _serve_arguments,
    ),
    ("corpus", "corpus utilities", "Corpus utilities.", None, _corpus_arguments),
)


_INTERRUPTED = threading.Event()
_SIGNUM = [int(signal.SIGINT)]  # the stop signal received (SIGINT or SIGTERM)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interrupt_once(signum: int, frame: object) -> None:
    """Turn the first Ctrl-C (or SIGTERM) into KeyboardInterrupt; later ones do nothing.

    Native code (polars) may raise KeyboardInterrupt itself and still leave this handler pending:
    while that KeyboardInterrupt is being handled, the replay is ignored.
    """
    if _INTERRUPTED.is_set() or isinstance(sys.exc_info()[1], KeyboardInterrupt):
        return
    _INTERRUPTED.set()
    _SIGNUM[0] = signum
    raise KeyboardInterrupt


_OS_HINTS = {
    errno.ENOSPC: "free some disk space and run the same command again",
    errno.EFBIG: "the file grew past the allowed file size; free space or raise the limit",
    errno.EDQUOT: "the disk quota is used up; free some space and run the same command again",
    errno.EACCES: "check the permissions, or choose a folder you can write to",
    errno.EPERM: "check the permissions, or choose a folder you can write to",
    errno.EROFS: "that file system is read-only; choose another folder",
    errno.ENOENT: "check the path (a broken symbolic link?)",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "a folder is in the way of a file; check the path",
    errno.EEXIST: "something is already in the way at that path; remove it or choose another",
}


_NATIVE_OS_ERROR = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")


def os_error_of(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`, or None.

    Itself, one in its cause/context chain, or one that native code (polars, safetensors)
    reports only in its message ("... (os error 28)").
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    m = _NATIVE_OS_ERROR.search(str(exc))
    if m:
        code = int(m.group(1) or m.group(2))
        return OSError(code, os.strerror(code))
    return None


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error: what failed, on which path, what to do."""
    what = exc.strerror or str(exc)
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(os.fsdecode(p) for p in paths)
    hint = _OS_HINTS.get(exc.errno or 0, "check the path and the disk, then run it again")
    return f"{where + ': ' if where else ''}{what} ({hint})"


def _named(exc: BaseException, args: argparse.Namespace) -> str:
    """The error's message; a stage setting that the command has an option for by that option."""
    from curation.settings import SettingError

    if isinstance(exc, SettingError) and hasattr(args, exc.name):
        return f"--{exc.name.replace('_', '-')}: {exc.problem}"
    return str(exc)


def _ignore_stop_signals() -> None:
    """Ignore Ctrl-C/SIGTERM from here on (main thread only).

    Once interrupted, a replayed or second signal during the exit would end the process by the
    signal (status -2) instead of 130.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `adamshap` CLI; return the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or an argument error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    handler: Callable[[argparse.Namespace], int] = args.handler
    from curation.errors import AdamshapError, Interrupted

    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:  # SIGTERM (schedulers, containers) behaves as Ctrl-C
            signal.signal(sig, _interrupt_once)
    try:
        return handler(args)
    except KeyboardInterrupt as exc:
        _INTERRUPTED.set()  # the message and the exit status must always get out:
        if threading.current_thread() is threading.main_thread():
            _ignore_stop_signals()
        signum = exc.signum if isinstance(exc, Interrupted) else _SIGNUM[0]
        try:
            print(
                f"\nadamshap: interrupted ({signal.Signals(signum).name}); run the same command "
                "again to resume from the last checkpoint",
                file=sys.stderr,
            )
        except KeyboardInterrupt:  # raised before the handler above took over
            pass
        return EXIT_INTERRUPTED if signum == signal.SIGINT else 128 + int(signum)
    except AdamshapError as exc:
        print(f"adamshap {args.command}: error: {_named(exc, args)}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except Exception as exc:
        os_exc = os_error_of(exc)
        if os_exc is None:
            raise
        print(f"adamshap {args.command}: error: {os_error_line(os_exc)}", file=sys.stderr)
        return 2


def entry() -> None:
    """The process entry point (`adamshap`, `python -m flows.cli`): exit with main()'s status.

    An interrupted run must end with 130 (143 for SIGTERM). A Ctrl-C that lands inside a
    half-finished import of torch/transformers (the stages import them lazily) leaves the
    interpreter's own shutdown to end the process by SIGINT (status -2) after main() returned
    130: measured 3 of 7 prunes interrupted 1.5-1.8 s in. So an interrupted run flushes, runs
    the atexit handlers and ends there, without the interpreter's shutdown.
    """
    try:
        code = main()
    except KeyboardInterrupt:  # before main() took the signals over: start-up, parsing
        _INTERRUPTED.set()
        _ignore_stop_signals()
        print("\nadamshap: interrupted (SIGINT) before it started", file=sys.stderr)
        code = EXIT_INTERRUPTED
    if _INTERRUPTED.is_set():
        try:
            atexit._run_exitfuncs()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
