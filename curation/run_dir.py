"""Where things are in a scoring run directory and in a prune output directory.

Every file and folder name of the two layouts is spelled here, once; the rest of the code asks a
`RunDir` or a `PruneDir` for paths (`RunDir(out).values_by_example`) instead of joining names.
Import-light on purpose (no torch, no polars): the report, the CLI and the flows read run
folders without loading a model.

A scoring run directory (`adamshap score --out RUN_DIR`, written by `curation.scoring_run`):

    run.json                    the arguments, input digests and versions (written first)
    tokenizer/                  the run's tokenizer (trained on the corpus or copied)
    examples.parquet            one row per training document (id, source, n_tokens, truncated)
    rejects/                    corpus.jsonl, target.jsonl: rows skipped with --on-bad-rows skip
    checkpoints/step-*.pt       the last two resumable states
    snapshots/step-*.pt         model + optimizer states for the checkpoint values (kept)
    ledger/part-*.parquet       per-step values, one part per checkpoint (curation.ledger)
    ledger_momentum/            momentum-propagated values (--momentum-window)
    final_model/                the trained proxy (with its tokenizer)
    checkpoint_values.parquet   every document valued at every snapshot
    values_by_example.parquet   per-document values (curation.aggregate)
    values_by_source.parquet    per-source totals, means and shares
    .complete                   written last: the run is finished
    embeddings.npy/.json        the proxy's document embeddings, cached by `adamshap prune`
    report.md/.html, report_plots/   `adamshap report`

A prune output directory (`adamshap prune --out OUT_DIR`, written by `curation.prune`):

    kept<ext>, excluded<ext>    the kept rows and the excluded ones (plus reason, value)
    target<ext>                 the held-out target sample (when no --target was given)
    prune_report.md/.html, prune_map.png
    prune.json                  arguments + summary; written last, so its presence means complete
    work/, scores/              the training split and the scoring run (when no --scores)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------- scoring run

RUN_JSON = "run.json"
COMPLETE_MARKER = ".complete"
TOKENIZER_DIR = "tokenizer"
FINAL_MODEL_DIR = "final_model"
CHECKPOINT_DIR = "checkpoints"
SNAPSHOT_DIR = "snapshots"
LEDGER_DIR = "ledger"
MOMENTUM_DIR = "ledger_momentum"
LEDGER_PART_GLOB = "part-*.parquet"
REJECTS_DIR = "rejects"
EXAMPLES_FILE = "examples.parquet"
BY_EXAMPLE_FILE = "values_by_example.parquet"
BY_SOURCE_FILE = "values_by_source.parquet"
CKPT_FILE = "checkpoint_values.parquet"
EMBED_FILE = "embeddings.npy"
EMBED_META = "embeddings.json"
REPORT_STEM = "report"  # report.md and report.html
PLOT_DIR = "report_plots"  # PNGs beside report.md; report.html embeds them
STATE_GLOB = "step-*.pt"  # checkpoints and snapshots


def _state_name(step: int) -> str:
    return f"step-{step:07d}.pt"


class _Entry:
    """A file or folder `name` inside a layout's folder: `RunDir(p).run_json` is `p / "run.json"`."""

    def __init__(self, name: str, doc: str = "") -> None:
        self.name = name
        self.__doc__ = doc or f"The path of {name}."

    def __get__(self, layout: _Layout | None, owner: type | None = None) -> Any:
        return self if layout is None else layout.path / self.name


@dataclass(frozen=True)
class _Layout:
    """A folder whose file names one class knows (RunDir, PruneDir); usable as a path."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __fspath__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class RunDir(_Layout):
    """The layout of one scoring run directory: a path per file and folder, nothing created."""

    # files
    run_json = _Entry(RUN_JSON)
    complete_marker = _Entry(COMPLETE_MARKER)
    examples = _Entry(EXAMPLES_FILE)
    values_by_example = _Entry(BY_EXAMPLE_FILE)
    values_by_source = _Entry(BY_SOURCE_FILE)
    checkpoint_values = _Entry(CKPT_FILE)
    embeddings = _Entry(EMBED_FILE)
    embeddings_meta = _Entry(EMBED_META)
    report_md = _Entry(f"{REPORT_STEM}.md")
    report_html = _Entry(f"{REPORT_STEM}.html")
    # folders
    tokenizer = _Entry(TOKENIZER_DIR)
    final_model = _Entry(FINAL_MODEL_DIR)
    checkpoints = _Entry(CHECKPOINT_DIR)
    snapshots = _Entry(SNAPSHOT_DIR)
    ledger = _Entry(LEDGER_DIR)
    momentum_ledger = _Entry(MOMENTUM_DIR)
    rejects = _Entry(REJECTS_DIR)
    report_plots = _Entry(PLOT_DIR)

    # numbered states
    def checkpoint(self, step: int) -> Path:
        """The checkpoint file of global step `step`."""
        return self.checkpoints / _state_name(step)

    def snapshot(self, step: int) -> Path:
        """The snapshot file of global step `step`."""
        return self.snapshots / _state_name(step)

    def checkpoint_files(self) -> list[Path]:
        """Saved checkpoints, oldest first."""
        return sorted(self.checkpoints.glob(STATE_GLOB))

    def snapshot_files(self) -> list[Path]:
        """Saved snapshots, oldest first."""
        return sorted(self.snapshots.glob(STATE_GLOB))

    def ledger_parts(self) -> list[Path]:
        """The ledger's Parquet parts, in name (first step) order."""
        return sorted(self.ledger.glob(LEDGER_PART_GLOB))

    # run.json and the completion marker
    def read_run_json(self) -> dict[str, Any]:
        """The parsed run.json (OSError when absent, ValueError when not JSON)."""
        return json.loads(self.run_json.read_text())

    def run_args(self) -> dict[str, Any]:
        """The arguments in run.json: under `args`, or the whole file for a flat one."""
        meta = self.read_run_json()
        args = meta.get("args", meta) if isinstance(meta, dict) else {}
        return args if isinstance(args, dict) else {}

    def write_run_json(self, record: dict[str, Any]) -> Path:
        """Write run.json atomically (sorted keys, indented, newline-terminated)."""
        from .atomic import atomic_write_text

        return atomic_write_text(self.run_json, json.dumps(record, indent=2, sort_keys=True) + "\n")

    def is_complete(self) -> bool:
        """Whether the run finished (its completion marker exists)."""
        return self.complete_marker.exists()

    def mark_complete(self, info: dict[str, Any]) -> Path:
        """Write the completion marker (one JSON line); the last thing a run writes."""
        from .atomic import atomic_write_text

        return atomic_write_text(self.complete_marker, json.dumps(info) + "\n")


# ----------------------------------------------------------------------------- prune output

DONE_FILE = "prune.json"
OUTPUT_STEMS = ("kept", "excluded")
TARGET_STEM = "target"
OUTPUT_EXTS = (".jsonl", ".jsonl.gz", ".parquet")
PRUNE_REPORT_STEM = "prune_report"  # prune_report.md and prune_report.html
MAP_FILE = "prune_map.png"
REPORT_FILES = (f"{PRUNE_REPORT_STEM}.md", f"{PRUNE_REPORT_STEM}.html", MAP_FILE)
WORK_DIR = "work"
SCORES_DIR = "scores"


@dataclass(frozen=True)
class PruneDir(_Layout):
    """The layout of one prune output directory: a path per file and folder, nothing created."""

    prune_json = _Entry(DONE_FILE)
    report_md = _Entry(f"{PRUNE_REPORT_STEM}.md")
    report_html = _Entry(f"{PRUNE_REPORT_STEM}.html")
    map_png = _Entry(MAP_FILE)
    work = _Entry(WORK_DIR, "Inputs prune writes for its own scoring run (the training split).")

    @property
    def scores(self) -> RunDir:
        """The scoring run prune makes when no --scores is given."""
        return RunDir(self.path / SCORES_DIR)

    def kept(self, ext: str) -> Path:
        """kept<ext>: the kept rows, in the input's format (`ext` like '.jsonl.gz')."""
        return self.path / f"{OUTPUT_STEMS[0]}{ext}"

    def excluded(self, ext: str) -> Path:
        """excluded<ext>: the excluded rows with `reason` and `value`."""
        return self.path / f"{OUTPUT_STEMS[1]}{ext}"

    def target(self, ext: str) -> Path:
        """target<ext>: the held-out target sample."""
        return self.path / f"{TARGET_STEM}{ext}"

    def output_names(self) -> list[str]:
        """Every file name prune may write here, in every format."""
        names = [DONE_FILE, *REPORT_FILES]
        names += [f"{s}{e}" for s in OUTPUT_STEMS for e in OUTPUT_EXTS]
        return names + [f"{TARGET_STEM}{e}" for e in OUTPUT_EXTS]

    def find(self, stem: str) -> Path:
        """The single `<stem>.<ext>` file written here (kept.jsonl.gz, excluded.parquet, ...)."""
        from .errors import AdamshapError

        hits = sorted(p for p in self.path.glob(f"{stem}.*") if not p.name.startswith("."))
        if not hits:
            raise AdamshapError(f"{self.path} has no {stem}.* file; delete the folder and rerun")
        return hits[0]

    def find_kept(self) -> Path:
        """The kept file, whatever its format."""
        return self.find(OUTPUT_STEMS[0])

    def find_excluded(self) -> Path:
        """The excluded file, whatever its format."""
        return self.find(OUTPUT_STEMS[1])

    def read_prune_json(self) -> dict[str, Any]:
        """The parsed prune.json (OSError when absent)."""
        return json.loads(self.prune_json.read_text(encoding="utf-8"))

    def is_complete(self) -> bool:
        """Whether prune finished here (prune.json exists: it is written last)."""
        return self.prune_json.exists()


# ----------------------------------------------------------------------------- verify output

VERIFY_STEM = "verify"  # verify.json (written last), verify.md, verify.html
CURVE_FILE = "verify_curve.png"


@dataclass(frozen=True)
class VerifyDir(_Layout):
    """The layout of one verify output directory: a path per file and folder, nothing created."""

    verify_json = _Entry(f"{VERIFY_STEM}.json", "The arms' results; written last (completion).")
    report_md = _Entry(f"{VERIFY_STEM}.md")
    report_html = _Entry(f"{VERIFY_STEM}.html")
    curve_png = _Entry(CURVE_FILE)
    tokenizer = _Entry(TOKENIZER_DIR, "The tokenizer every arm trained with.")

    def outputs(self) -> tuple[Path, ...]:
        """Every result file, verify.json (the completion marker) last."""
        return (self.curve_png, self.report_md, self.report_html, self.verify_json)
