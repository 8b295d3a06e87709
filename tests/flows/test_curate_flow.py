"""Integration: the curate flow end to end on 60 real docs, then a cached rerun with another keep."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import flows.prefect_env  # noqa: F401  (offline settings before prefect is imported)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _task_states(flow_run_id) -> dict[str, str]:
    """{task name: state name} of one flow run, read back from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


def _artifact_keys() -> set[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {a.key for a in client.read_artifacts() if a.key}


def test_curate_rerun_with_other_keep_reuses_scoring(tiny_manifest: Path, tmp_path: Path):
    from prefect.testing.utilities import prefect_test_harness

    from flows.curate import curate_flow

    out = tmp_path / "out"
    with prefect_test_harness(server_startup_timeout=120):
        state = curate_flow(str(tiny_manifest), keep=0.7, out=str(out), return_state=True)
        first = state.result()
        first_tasks = _task_states(state.state_details.flow_run_id)
        run_json_mtime = (Path(first["run_dir"]) / "run.json").stat().st_mtime_ns
        first_summary = json.loads(Path(first["summary"]).read_text())

        state2 = curate_flow(str(tiny_manifest), keep=0.5, out=str(out), return_state=True)
        second = state2.result()
        second_tasks = _task_states(state2.state_details.flow_run_id)
        artifacts = _artifact_keys()

        # A cached result whose folder was deleted is not trusted: that stage runs again.
        shutil.rmtree(second["prune_dir"])
        third = curate_flow(str(tiny_manifest), keep=0.5, out=str(out))

    # First run: every stage executed and wrote its outputs.
    assert {k: v["status"] for k, v in first["stages"].items()} == {
        "validate": "done", "score": "done", "aggregate": "done", "report": "done",
        "prune": "done", "verify": "done", "publish": "done",
    }  # fmt: skip
    for key in ("report_html", "prune_report_html", "kept", "excluded", "verify_json", "summary"):
        assert Path(first[key]).is_file(), key
    assert "<img" in Path(first["report_html"]).read_text()
    assert first_summary["keep"] == 0.7 and first_summary["kept"] == first["kept"]
    assert json.loads(Path(second["summary"]).read_text())["keep"] == 0.5

    # Rerun with another keep: scoring, aggregation and the value report are cache hits;
    # pruning onwards reruns into a new content-addressed folder.
    assert second["stages"]["score"]["status"] == "cached"
    assert second["stages"]["aggregate"]["status"] == "cached"
    assert second["stages"]["report"]["status"] == "cached"
    assert second["stages"]["prune"]["status"] == "done"
    assert second["stages"]["verify"]["status"] == "done"
    assert second_tasks["score"] == "Cached" and second_tasks["prune"] == "Completed"
    assert first_tasks["score"] == "Completed"
    assert second["run_dir"] == first["run_dir"]
    assert (Path(second["run_dir"]) / "run.json").stat().st_mtime_ns == run_json_mtime
    assert second["prune_dir"] != first["prune_dir"]

    # Nothing lost: kept + excluded = corpus, for both keep values.
    import polars as pl

    n = pl.read_ndjson(first["corpus"]).height
    for res in (first, second):
        kept, excl = pl.read_ndjson(res["kept"]), pl.read_ndjson(res["excluded"])
        assert kept.height + excl.height == n
        assert set(kept["id"]).isdisjoint(set(excl["id"]))
    assert pl.read_ndjson(second["kept"]).height < pl.read_ndjson(first["kept"]).height

    assert third["stages"]["score"]["status"] == "cached"
    assert third["stages"]["prune"]["status"] == "done"
    assert Path(third["kept"]).is_file() and third["prune_dir"] == second["prune_dir"]

    # One Markdown artifact per report.
    assert {"adamshap-tiny-values", "adamshap-tiny-prune", "adamshap-tiny-verify"} <= artifacts


def test_curate_cli_bad_row_is_one_clear_line(tiny_manifest: Path, tmp_path: Path):
    """A bad row found inside the flow: one error line naming file/line/field, exit 2, no traceback."""
    import os
    import subprocess
    import sys

    docs = tiny_manifest.parent / "docs.jsonl"
    lines = docs.read_text().splitlines()
    lines[4] = json.dumps({"id": "bad-1", "source": "devil", "text": "   "})
    docs.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "flows.cli", "curate", str(tiny_manifest), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("adamshap curate: error:")]
    assert len(errors) == 1 and "line 5" in errors[0] and "text" in errors[0], res.stderr
    assert not list(out.glob("score-*")), "no stage after validation may have run"


def test_stage_keys_cover_the_defaults_not_only_the_given_settings() -> None:
    """A stage made under an old default is not reused once the default changes: the key is
    over the resolved dataclass; where the output goes and whether a bar shows are not in it."""
    import dataclasses

    from curation.verify import VerifyArgs
    from flows.curate import settings_key

    given = {"curated": "/k.jsonl", "full": "/f.jsonl", "target": "/t.jsonl", "steps": 200}
    key = settings_key(VerifyArgs, given, "prune-key")
    assert key == settings_key(
        VerifyArgs, {**given, "out": "/elsewhere", "progress": False}, "prune-key"
    )
    assert key != settings_key(VerifyArgs, given, "other-prune-key")
    assert key != settings_key(VerifyArgs, {**given, "pack": False}, "prune-key")

    @dataclasses.dataclass(kw_only=True)
    class NewDefault(VerifyArgs):  # the same class with one default changed
        pack: bool = False

    assert settings_key(NewDefault, given, "prune-key") != key
