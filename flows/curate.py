"""The `curate` Prefect flow: validate -> score -> aggregate -> report -> prune -> verify -> publish.

Each stage is a Prefect task that only wires calls into `curation`. Caching: every cached task
has a `cache_key_fn` over (task name, its inputs), and its inputs carry the corpus and target
sha256 plus the stage's arguments (and the upstream stage's key); results and cache records are
persisted under `OUT/.prefect-results`.
Stage folders are content-addressed (`OUT/score-<key>`, `OUT/prune-keep0.70-<key>`, ...), so a
cached result always points at files made from the same inputs; a folder that was deleted or
never finished is recomputed (`refresh_cache`). Changing `--keep` therefore reruns only pruning
onwards, and a crash mid-scoring resumes from the run's last checkpoint (`run_scoring` resumes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The offline settings must be in os.environ before prefect is first imported.
from flows import prefect_env  # noqa: F401

# isort: split
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from curation.errors import AdamshapError, ManifestError
from curation.run_dir import PruneDir, RunDir, VerifyDir
from curation.settings import DEFAULT_KEEP as DEFAULT_KEEP  # kept importable from here

CACHE_VERSION = "1"  # bump when a stage's outputs change meaning
RESULTS_DIR = ".prefect-results"
SUMMARY_FILE = "curate.json"
STAGES = (
    "validate corpus + target",
    "tokenizer + warm start + scored training",
    "aggregate values",
    "value report",
    "embed + cluster + prune",
    "verify (retrain curated vs random vs full)",
    "publish artifacts",
)
# Run settings consumed by materialise_manifest; the materialised files use canonical fields.
_DATA_ONLY_SETTINGS = ("fields", "on_bad_rows", "max_docs_per_source")
# Not worth retrying: the same call fails the same way.
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(exc: BaseException | None) -> bool:
    """True for errors worth retrying: OSErrors other than missing/forbidden paths."""
    return (
        isinstance(exc, OSError)
        and not isinstance(exc, _PERMANENT_OS_ERRORS)
        and not isinstance(exc, AdamshapError)
    )


def _retry_transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry only transient failures (see `is_transient`)."""
    data = getattr(state, "data", None)
    return is_transient(data if isinstance(data, BaseException) else None)


def stage_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Cache key of a stage: its task name + its inputs (args, checksums, upstream keys)."""
    return f"adamshap-{CACHE_VERSION}-{context.task.name}-{digest(parameters, 32)}"


RETRY = {"retries": 2, "retry_delay_seconds": 3, "retry_condition_fn": _retry_transient}
CACHED = {"cache_key_fn": stage_cache_key, "persist_result": True, **RETRY}


def digest(obj: Any, n: int = 10) -> str:
    """Short sha256 of the canonical JSON of `obj` (stage keys and folder names)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


# settings that do not change a stage's outputs: left out of its key
_NOT_IN_KEYS = ("out", "progress")


def settings_key(cls: type, fields: dict[str, Any], *extra: Any) -> str:
    """Key of a stage over every setting it will run with, defaults included.

    Keyed on the given fields alone, a stage made under an old default (a sketch size, verify's
    token budget) was found again and reused after the default changed; with the resolved
    dataclass a changed default makes a new folder.
    """
    resolved = dataclasses.asdict(cls(**{**fields, "out": "."}))
    for name in _NOT_IN_KEYS:
        resolved.pop(name, None)
    return digest([resolved, *extra])


def slug(text: str) -> str:
    """Lower-case letters, digits and dashes (Prefect artifact keys, folder names)."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-") or "x"


def dataclass_kwargs(cls: type, *sources: dict[str, Any]) -> dict[str, Any]:
    """Merge `sources` (later wins) keeping only keys that are fields of dataclass `cls`."""
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for src in sources:
        out.update({k: v for k, v in (src or {}).items() if k in names and v is not None})
    return out


def manifest_settings(manifest: Any) -> dict[str, Any]:
    """The manifest's run settings as a plain dict (whatever attribute name it uses)."""
    for name in ("run", "settings", "run_settings"):
        value = getattr(manifest, name, None)
        if isinstance(value, dict):
            return dict(value)
        if dataclasses.is_dataclass(value):
            return dataclasses.asdict(value)
    return {}


def _sha256(path: str | Path) -> str:
    from curation.corpus import corpus_sha256

    return corpus_sha256(path)


# ----------------------------------------------------------------------------- tasks


@task(name="validate", cache_policy=NO_CACHE, **RETRY)
def validate_stage(manifest_path: str, data_dir: str) -> dict[str, Any]:
    """Load the manifest (checksums), materialise corpus + target (every row validated)."""
    from curation.corpus import read_corpus
    from curation.manifest import load_manifest, materialise_manifest
    from curation.verify import split_evaluation

    manifest = load_manifest(manifest_path)
    settings = manifest_settings(manifest)
    on_bad_rows = str(settings.get("on_bad_rows", "error"))
    corpus, held_out = materialise_manifest(manifest, Path(data_dir), on_bad_rows=on_bad_rows)
    # selection target and evaluation set: disjoint halves of the held-out target
    target, evaluation = split_evaluation(
        held_out, Path(data_dir), seed=int(settings.get("seed", 0))
    )
    counts = {}
    for name, path in (("corpus", corpus), ("target", target)):
        counts[name] = int(read_corpus(path).df.height)
        if counts[name] == 0:
            raise ManifestError(f"the {name} set of {manifest_path} has no usable rows")
    return {
        "name": str(getattr(manifest, "name", Path(manifest_path).stem)),
        "settings": settings,
        "corpus": str(corpus),
        "target": str(target),
        "corpus_sha256": _sha256(corpus),
        "target_sha256": _sha256(target),
        "evaluation": str(evaluation),
        "n_corpus": counts["corpus"],
        "n_target": counts["target"],
    }


@task(name="score", **CACHED)
def score_stage(score_args: dict[str, Any], corpus_sha256: str, target_sha256: str) -> str:
    """Tokenizer, warm start and scored training (resumes from checkpoints); returns RUN_DIR."""
    from curation.scoring_run import ScoreArgs, run_scoring

    return str(run_scoring(ScoreArgs(**score_args)))


@task(name="aggregate", **CACHED)
def aggregate_stage(run_dir: str, score_key: str) -> dict[str, str]:
    """Per-example and per-source values from the ledger."""
    from curation.aggregate import aggregate_run

    by_example, by_source = aggregate_run(run_dir)
    return {"values_by_example": str(by_example), "values_by_source": str(by_source)}


@task(name="report", **CACHED)
def report_stage(run_dir: str, score_key: str) -> dict[str, str]:
    """report.md and report.html (plots) of the scoring run."""
    from curation.report import write_report

    md, html = write_report(run_dir)
    return {"report_md": str(md), "report_html": str(html)}


@task(name="prune", **CACHED)
def prune_stage(prune_args: dict[str, Any], score_key: str) -> str:
    """Embed, cluster and prune by value under diversity quotas; returns OUT_DIR."""
    from curation.prune import PruneArgs, run_prune

    return str(run_prune(PruneArgs(**prune_args)))


@task(name="verify", **CACHED)
def verify_stage(verify_args: dict[str, Any], prune_key: str) -> str:
    """Retrain on curated vs random-same-size vs full; returns the verify folder."""
    from curation.verify import VerifyArgs, run_verify

    return str(run_verify(VerifyArgs(**verify_args)))


@task(name="publish", cache_policy=NO_CACHE, **RETRY)
def publish_stage(name: str, outputs: dict[str, Any], estimator: str) -> list[str]:
    """Publish the value, pruning and verify reports as Prefect Markdown artifacts."""
    from prefect.artifacts import create_markdown_artifact

    from flows.artifacts import prune_markdown, values_markdown, verify_markdown

    made = []
    for kind, text in (
        ("values", values_markdown(outputs["values_by_source"], estimator, outputs)),
        ("prune", prune_markdown(outputs["prune_dir"])),
        ("verify", verify_markdown(outputs["verify_dir"])),
    ):
        key = f"adamshap-{slug(name)}-{kind}"
        create_markdown_artifact(markdown=text, key=key, description=f"{name}: {kind} report")
        made.append(key)
    return made


# ----------------------------------------------------------------------------- flow


class _Progress:
    """Stage-by-stage progress lines: `[3/7] aggregate values ... done in 1.2s`."""

    def __init__(self, stages: tuple[str, ...], echo: Callable[[str], None] = print) -> None:
        self.stages, self.echo, self.timings = stages, echo, {}

    def run(self, index: int, key: str, task_: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one task, print its outcome (done/cached/failed) and wall time; return its result."""
        label = f"[{index}/{len(self.stages)}] {self.stages[index - 1]}"
        self.echo(f"{label} ...")
        t0 = time.perf_counter()
        state = task_(*args, return_state=True, **kwargs)
        seconds = time.perf_counter() - t0
        status = "cached" if state.name == "Cached" else "done"
        if state.is_failed() or state.is_crashed():
            self.echo(f"{label} ... failed after {seconds:.1f}s")
            status = "failed"
        self.timings[key] = {"status": status, "seconds": round(seconds, 2)}
        result = state.result()  # re-raises the task's exception on failure
        self.echo(f"{label} ... {status} in {seconds:.1f}s")
        return result


def _stage_options(results: Path, refresh: bool) -> dict[str, Any]:
    return {"result_storage": results, "refresh_cache": True if refresh else None}


def resolve_out(manifest_path: str, name: str | None, out: str | None) -> Path:
    """Output folder: `out`, else `runs/<manifest name>` under the current directory."""
    if out:
        return Path(out).resolve()
    return (Path.cwd() / "runs" / slug(name or Path(manifest_path).stem)).resolve()


@flow(name="curate", log_prints=False, validate_parameters=True)
def curate_flow(
    manifest_path: str,
    keep: float | None = None,
    out: str | None = None,
    device: str | None = None,
    precision: str | None = None,
) -> dict:
    """Run the whole curation pipeline for a manifest; return the output paths and stage timings.

    `device` / `precision` override the manifest's `run.device` (default `auto`: CUDA when
    present) and `run.precision` (default fp32).
    """
    from curation.settings import resolve_keep, validate_keep

    t_start = time.perf_counter()
    manifest_path = str(Path(manifest_path).resolve())
    if keep is not None:
        validate_keep(keep)
    progress = _Progress(STAGES)
    if out:
        out_dir = resolve_out(manifest_path, None, out)
    else:  # runs/<manifest name>
        from curation.manifest import load_manifest

        out_dir = resolve_out(manifest_path, load_manifest(manifest_path).name, None)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"curate {manifest_path} -> {out_dir}")
    # 1. validate: the materialised corpus and target land in OUT/data.
    info = progress.run(1, "validate", validate_stage, manifest_path, str(out_dir / "data"))
    settings = {k: v for k, v in info["settings"].items() if k not in _DATA_ONLY_SETTINGS}
    settings["device"] = device or settings.get("device") or "auto"  # CUDA when present
    if precision:
        settings["precision"] = precision
    keep = resolve_keep(keep, settings, manifest_path)
    _check_clusters(settings, info["n_corpus"], manifest_path)
    # a Path: Prefect uses a LocalFileSystem there
    ctx = _Curation(progress, out_dir, out_dir / RESULTS_DIR, info, settings, keep)
    run, score_key, outputs = _score_and_report(ctx)
    pruned, prune_key, estimator = _prune(ctx, run, score_key)
    verify_dir = _verify(ctx, run, pruned.find_kept(), prune_key, score_key)
    outputs.update(_outputs(ctx, pruned, verify_dir))
    progress.run(7, "publish", publish_stage, info["name"], outputs, estimator)

    outputs["keep"] = keep
    outputs["stages"] = progress.timings
    outputs["seconds"] = round(time.perf_counter() - t_start, 2)
    _write_summary(out_dir / SUMMARY_FILE, outputs)
    print(f"done in {outputs['seconds']:.1f}s; reports:")
    print(f"  values:  {outputs['report_html']}")
    print(f"  pruning: {outputs['prune_report_html']}")
    print(f"  verify:  {outputs['verify_html']}")
    print(f"  kept set: {outputs['kept']}")
    return outputs


@dataclasses.dataclass
class _Curation:
    """What every stage of one curate run reads: progress, folders, data, settings, keep."""

    progress: Any
    out_dir: Path
    results: Path
    info: dict[str, Any]
    settings: dict[str, Any]
    keep: float


def _score_and_report(ctx: _Curation) -> tuple[RunDir, str, dict[str, Any]]:
    """2-4: score (content-addressed run dir; resumes from checkpoints), aggregate, report."""
    from curation.scoring_run import ScoreArgs

    info, results, progress = ctx.info, ctx.results, ctx.progress
    common = {"corpus": info["corpus"], "target": info["target"]}
    score_fields = dataclass_kwargs(
        ScoreArgs, ctx.settings, ctx.settings.get("score") or {}, common
    )
    score_key = settings_key(ScoreArgs, score_fields, info["corpus_sha256"], info["target_sha256"])
    run = RunDir(ctx.out_dir / f"score-{score_key}")
    run_dir = run.path
    score_args = {**score_fields, "out": str(run_dir)}
    score_task = score_stage.with_options(**_stage_options(results, not run.is_complete()))
    progress.run(2, "score", score_task, score_args, info["corpus_sha256"], info["target_sha256"])

    # 3-4. aggregate + value report (cached on the score key).
    agg_task = aggregate_stage.with_options(
        **_stage_options(results, not run.values_by_source.exists())
    )
    values = progress.run(3, "aggregate", agg_task, str(run_dir), score_key)
    rep_task = report_stage.with_options(**_stage_options(results, not run.report_html.exists()))
    report = progress.run(4, "report", rep_task, str(run_dir), score_key)
    outputs: dict[str, Any] = {
        "out": str(ctx.out_dir),
        "corpus": info["corpus"],
        "target": info["target"],
        "run_dir": str(run_dir),
        **values,
        **report,
    }
    return run, score_key, outputs


def _prune(ctx: _Curation, run: RunDir, score_key: str) -> tuple[PruneDir, str, str]:
    """5: prune (embeddings are cached inside RUN_DIR by curation.embed)."""
    from curation.prune import PruneArgs

    info, keep = ctx.info, ctx.keep
    prune_settings = {**ctx.settings, **(ctx.settings.get("prune") or {})}
    prune_fields = dataclass_kwargs(
        PruneArgs,
        prune_settings,
        {"corpus": info["corpus"], "target": info["target"], "scores": str(run.path), "keep": keep},
    )
    prune_key = settings_key(PruneArgs, prune_fields, score_key)
    pruned = PruneDir(ctx.out_dir / f"prune-keep{keep:.2f}-{prune_key}")
    prune_task = prune_stage.with_options(**_stage_options(ctx.results, not pruned.is_complete()))
    prune_args = {**prune_fields, "out": str(pruned.path)}
    ctx.progress.run(5, "prune", prune_task, prune_args, score_key)
    return pruned, prune_key, str(prune_fields.get("estimator") or "ckpt")


def _verify(ctx: _Curation, run: RunDir, kept: Path, prune_key: str, score_key: str) -> Path:
    """6: verify the kept set against the baselines on the evaluation half of the target."""
    from curation.verify import VerifyArgs

    info = ctx.info
    verify_settings = {**ctx.settings, **(ctx.settings.get("verify") or {})}
    verify_fields = dataclass_kwargs(
        VerifyArgs,
        {"tokenizer": str(run.tokenizer)},  # the scoring run's tokenizer for every arm
        verify_settings,
        {
            "curated": str(kept),
            "full": info["corpus"],
            "target": info["evaluation"],
            "selection_target": info["target"],
            "reference": str(run.path),
        },
    )
    verify_key = settings_key(VerifyArgs, verify_fields, prune_key, score_key)
    verify_dir = ctx.out_dir / f"verify-keep{ctx.keep:.2f}-{verify_key}"
    verify_task = verify_stage.with_options(
        # every output must be there (a verify from before verify.html existed is redone)
        **_stage_options(ctx.results, not all(f.exists() for f in VerifyDir(verify_dir).outputs()))
    )
    verify_args = {**verify_fields, "out": str(verify_dir)}
    ctx.progress.run(6, "verify", verify_task, verify_args, prune_key)
    return verify_dir


def _outputs(ctx: _Curation, pruned: PruneDir, verify_dir: Path) -> dict[str, Any]:
    """The prune and verify paths of curate.json."""
    return {
        "prune_dir": str(pruned.path),
        "kept": str(pruned.find_kept()),
        "excluded": str(pruned.find_excluded()),
        "prune_report_html": str(pruned.report_html),
        "prune_report_md": str(pruned.report_md),
        "verify_dir": str(verify_dir),
        "verify_md": str(VerifyDir(verify_dir).report_md),
        "verify_html": str(VerifyDir(verify_dir).report_html),
        "verify_json": str(VerifyDir(verify_dir).verify_json),
        "summary": str(ctx.out_dir / SUMMARY_FILE),
    }


def _check_clusters(settings: dict[str, Any], n_corpus: int, manifest_path: str) -> None:
    """Fail before scoring when the manifest asks for more clusters than there are documents."""
    from curation.errors import UsageError

    # its rule (a positive integer) was applied when the manifest was loaded
    prune = settings.get("prune") if isinstance(settings.get("prune"), dict) else {}
    k = prune.get("clusters", settings.get("clusters"))
    if k is not None and k > n_corpus:
        raise UsageError(
            f"{manifest_path}: run.clusters {k} is more than the {n_corpus} training documents; "
            "lower it or remove it (the default suits the corpus size)"
        )


def _write_summary(path: Path, outputs: dict[str, Any]) -> None:
    from curation.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(outputs, indent=2, sort_keys=True, default=str) + "\n")
