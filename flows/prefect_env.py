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
