"""Offline defaults for Prefect and Hugging Face, applied before `prefect` is imported.

Import this module before anything that imports `prefect` (``flows.curate`` and ``flows.serve``
do it first thing). Only unset variables are filled in (`os.environ.setdefault`), so a user's
own settings always win.

PREFECT_HOME is deliberately left alone: the CLI, `prefect server start` and the Prefect UI
then share the same profile and database (`~/.prefect` by default). Tests point it at a
temporary folder themselves.
"""

from __future__ import annotations

import os

OFFLINE_DEFAULTS: dict[str, str] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # The flow's tasks run one after another in the flow's own thread; no remote storage.
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
}


def apply_offline_defaults(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Fill unset offline settings (plus `extra`) into os.environ; return what was set."""
    applied: dict[str, str] = {}
    for key, value in {**OFFLINE_DEFAULTS, **(extra or {})}.items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    return applied


apply_offline_defaults()


# Runs in its own small process: waits until the pipe from the curate process closes (it exits
# or is killed, SIGKILL included), then stops every temporary Prefect server started with this
# owner mark in its environment (found through /proc).
_WATCHDOG = """
import os, signal, sys, time
fd, mark = int(sys.argv[1]), sys.argv[2].encode()
while os.read(fd, 1):
    pass
def servers():
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\\0")
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\\0")
        except OSError:
            continue
        if b"prefect.server.api.server:create_app" in argv and mark in env:
            found.append(int(name))
    return found
for sig in (signal.SIGTERM, signal.SIGKILL):
    pids = servers()
    if not pids:
        break
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    for _ in range(50):
        time.sleep(0.1)
        if not servers():
            break
"""
OWNER_VAR = "ADAMSHAP_PREFECT_SERVER_OWNER"
_HELD: list[int] = []  # write ends of watchdog pipes, open for the life of this process


def tie_temporary_server_to_this_process() -> None:
    """Start Prefect's temporary server now, stopped by a watchdog however this process ends.

    Prefect stops its temporary (ephemeral) API server at exit, but a SIGKILLed parent runs no
    exit code and the server would outlive it. Before the server starts, a small watchdog
    process is started holding the read end of a pipe whose only write end stays in this
    process: it sees end-of-file however this process ends (SIGKILL included) and then
    terminates the servers that carry this process's owner mark in their environment (Linux
    /proc; elsewhere nothing is started). Nothing happens when PREFECT_API_URL names a server.
    """
    import secrets
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value() or not os.path.isdir("/proc"):
        return
    from prefect.server.api.server import SubprocessASGIServer

    mark = f"{os.getpid()}-{secrets.token_hex(8)}"
    os.environ[OWNER_VAR] = mark  # inherited by the server Prefect spawns below
    read_end, write_end = os.pipe()  # not inheritable: no other child keeps the pipe open
    subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(read_end), f"{OWNER_VAR}={mark}"],
        pass_fds=(read_end,),
        start_new_session=True,  # a Ctrl-C to the terminal's group does not reach it
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(read_end)
    _HELD.append(write_end)
    SubprocessASGIServer().start()  # the instance Prefect's own client then uses


SERVER_LOGGER = "prefect.server"


def quiet_server_shutdown() -> None:
    """Silence the temporary Prefect server's own loggers once the flow has ended.

    When the process exits, the temporary server is shut down and its services are cancelled; on
    a loaded machine one of them (the task-run recorder) can still be flushing events into the
    throw-away database and logs an ERROR with a long asyncio traceback after the CLI's own
    one-line result. Nothing it could report then reaches the user's results.
    """
    import logging

    names = [SERVER_LOGGER]
    names += [n for n in logging.root.manager.loggerDict if n.startswith(SERVER_LOGGER + ".")]
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
