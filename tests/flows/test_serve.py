"""Integration: a real local Prefect server, `adamshap serve --interval 5`, one scheduled run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flows.prefect_env  # noqa: F401  (offline settings before prefect is imported)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SERVER_START_S = 180
RUN_DONE_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, sig: int = signal.SIGINT, wait: float = 30) -> None:
    """Signal a process group we started, then kill it if it does not exit in time."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=wait)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"prefect server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"prefect server not healthy after {SERVER_START_S}s:\n{log.read_text()[-3000:]}")


def _flow_runs(url: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        with get_client(sync_client=True) as client:
            return [r for r in client.read_flow_runs() if r.deployment_id is not None]


def test_serve_runs_the_flow_on_schedule(tiny_manifest: Path, tmp_path: Path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": url,
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PREFECT_API_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PYTHONUNBUFFERED": "1",
    }
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    prefect_cli = [sys.executable, "-m", "prefect"]
    with open(server_log, "wb") as slog, open(serve_log, "wb") as vlog:
        server = subprocess.Popen(
            [*prefect_cli, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=slog, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
        )  # fmt: skip
        served = None
        try:
            _wait_healthy(url, server, server_log)
            served = subprocess.Popen(
                [sys.executable, "-m", "flows.cli", "serve", str(tiny_manifest),
                 "--interval", "5", "--out", str(tmp_path / "out")],
                env=env, stdout=vlog, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
            )  # fmt: skip
            deadline, done = time.monotonic() + RUN_DONE_S, None
            while time.monotonic() < deadline and done is None:
                if served.poll() is not None:
                    pytest.fail(f"serve exited ({served.returncode}):\n{serve_log.read_text()}")
                runs = _flow_runs(url)
                bad = [r for r in runs if r.state and r.state.type.value in ("FAILED", "CRASHED")]
                if bad:
                    pytest.fail(f"scheduled run {bad[0].state}:\n{serve_log.read_text()[-5000:]}")
                done = next((r for r in runs if r.state and r.state.is_completed()), None)
                time.sleep(2)
            assert done is not None, f"no completed scheduled run:\n{serve_log.read_text()[-5000:]}"
        finally:
            if served is not None:
                _stop(served)
            _stop(server, signal.SIGTERM)
    assert done.parameters["manifest_path"] == str(tiny_manifest.resolve())
    assert (tmp_path / "out" / "curate.json").is_file()
    assert server.returncode is not None
