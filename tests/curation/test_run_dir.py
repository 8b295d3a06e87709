"""RunDir / PruneDir: their names are the ones a real scoring run, report and prune write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.errors import AdamshapError
from curation.run_dir import PruneDir, RunDir
from tests.fixtures import fixture_docs

RUN_FILES = (
    "run_json",
    "complete_marker",
    "examples",
    "values_by_example",
    "values_by_source",
    "checkpoint_values",
    "embeddings",
    "embeddings_meta",
    "report_md",
    "report_html",
)
RUN_FOLDERS = (
    "tokenizer",
    "final_model",
    "checkpoints",
    "snapshots",
    "ledger",
    "momentum_ledger",
    "rejects",
    "report_plots",
)


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> tuple[RunDir, PruneDir]:
    """A tiny finished scoring run (momentum window, snapshots), its report and a prune of it."""
    from curation.prune import PruneArgs, run_prune
    from curation.report import write_report
    from curation.scoring_run import ScoreArgs, run_scoring

    d = tmp_path_factory.mktemp("layout")
    by = fixture_docs(40)
    corpus = _write(d / "corpus.jsonl", [r for s in sorted(by) for r in by[s][:6]])
    target = _write(d / "target.jsonl", by["bible"][20:28])
    args = ScoreArgs(
        corpus=corpus,
        target=target,
        out=str(d / "run"),
        seq_len=32,
        vocab_size=320,
        batch_size=8,
        target_batch_size=4,
        warm_start_steps=2,
        epochs=1,
        checkpoint_every=2,
        estimators=("adam2", "sgd"),
        snapshots=2,
        momentum_window=2,
        progress=False,
    )
    run = RunDir(run_scoring(args))
    write_report(run.path)
    prune_out = run_prune(
        PruneArgs(
            corpus=corpus,
            keep=0.8,
            out=str(d / "prune"),
            scores=str(run.path),
            target=target,
            clusters=2,
            progress=False,
        )
    )
    return run, PruneDir(prune_out)


@pytest.mark.integration
def test_run_dir_names_are_what_a_run_writes(real_run) -> None:
    run, _ = real_run
    named = {getattr(run, p) for p in RUN_FILES + RUN_FOLDERS}
    on_disk = set(run.path.iterdir())
    assert on_disk <= named, sorted(p.name for p in on_disk - named)
    # everything this run was asked to write is where RunDir says (no rows rejected: no rejects/)
    missing = {p.name for p in named - on_disk}
    assert missing == {"rejects"}, missing
    for p in RUN_FOLDERS:
        assert getattr(run, p).is_dir() == (p != "rejects"), p
    assert run.is_complete()
    assert run.read_run_json() == json.loads(run.run_json.read_text())
    assert run.run_args() == run.read_run_json()["args"]
    assert run.run_args()["momentum_window"] == 2
    assert json.loads(run.complete_marker.read_text())["steps"] == 2 + 5


@pytest.mark.integration
def test_run_dir_numbered_states_match_a_run(real_run) -> None:
    run, _ = real_run
    ckpts = sorted(run.checkpoints.iterdir())
    assert ckpts and run.checkpoint_files() == ckpts
    assert [run.checkpoint(int(p.stem.split("-")[1])) for p in ckpts] == ckpts
    snaps = sorted(run.snapshots.iterdir())
    assert snaps and run.snapshot_files() == snaps
    assert [run.snapshot(int(p.stem.split("-")[1])) for p in snaps] == snaps
    assert run.ledger_parts() == sorted(run.ledger.iterdir())


@pytest.mark.integration
def test_prune_dir_names_are_what_prune_writes(real_run) -> None:
    run, pruned = real_run
    ext = ".jsonl"
    named = {
        pruned.prune_json,
        pruned.report_md,
        pruned.report_html,
        pruned.map_png,
        pruned.kept(ext),
        pruned.excluded(ext),
    }
    assert set(pruned.path.iterdir()) == named
    assert {p.name for p in named} <= set(pruned.output_names())
    assert pruned.is_complete()
    assert pruned.find_kept() == pruned.kept(ext)
    assert pruned.find_excluded() == pruned.excluded(ext)
    assert pruned.read_prune_json()["summary"]["scores"] == str(run.path)


def test_run_dir_paths_and_markers(tmp_path) -> None:
    run = RunDir(str(tmp_path))  # a str is taken as a path
    assert run.path == tmp_path and run.values_by_example == tmp_path / "values_by_example.parquet"
    assert run.checkpoint(7) == tmp_path / "checkpoints" / "step-0000007.pt"
    assert not run.is_complete()
    with pytest.raises(OSError):
        run.read_run_json()
    run.write_run_json({"args": {"seq_len": 8}, "b": 1})
    assert run.run_json.read_text() == '{\n  "args": {\n    "seq_len": 8\n  },\n  "b": 1\n}\n'
    assert run.run_args() == {"seq_len": 8}
    run.run_json.write_text('{"seq_len": 16}')  # a flat run.json: its keys are the arguments
    assert run.run_args() == {"seq_len": 16}
    run.mark_complete({"steps": 3})
    assert run.is_complete() and run.complete_marker.read_text() == '{"steps": 3}\n'
    with pytest.raises(AttributeError):
        run.path = tmp_path / "other"  # type: ignore[misc]


def test_prune_dir_paths(tmp_path) -> None:
    pruned = PruneDir(tmp_path)
    assert pruned.kept(".jsonl.gz") == tmp_path / "kept.jsonl.gz"
    assert pruned.target(".parquet") == tmp_path / "target.parquet"
    assert pruned.scores == RunDir(tmp_path / "scores")
    assert not pruned.is_complete()
    with pytest.raises(AdamshapError, match="no kept"):
        pruned.find_kept()
    (tmp_path / ".kept.jsonl.tmp").write_text("")  # a temporary file is not an output
    (tmp_path / "kept.parquet").write_text("")
    assert pruned.find_kept() == tmp_path / "kept.parquet"


def test_no_other_module_spells_a_layout_name() -> None:
    """Outside curation/run_dir.py no code in curation/, flows/ or benchmarks/ has a string
    literal that is one of the layouts' distinctive file names (ask RunDir / PruneDir)."""
    import ast

    import curation.run_dir as rd

    names = {
        rd.RUN_JSON,
        rd.COMPLETE_MARKER,
        rd.FINAL_MODEL_DIR,
        rd.MOMENTUM_DIR,
        rd.EXAMPLES_FILE,
        rd.BY_EXAMPLE_FILE,
        rd.BY_SOURCE_FILE,
        rd.CKPT_FILE,
        rd.EMBED_META,
        rd.PLOT_DIR,
        rd.DONE_FILE,
        rd.MAP_FILE,
        *rd.REPORT_FILES,
    }
    root = Path(__file__).resolve().parents[2]
    hits = []
    for folder in ("curation", "flows", "benchmarks"):
        for path in sorted((root / folder).glob("*.py")):
            if path.name == "run_dir.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and node.value in names:
                    hits.append(f"{path.relative_to(root)}:{node.lineno} {node.value!r}")
    assert not hits, hits
