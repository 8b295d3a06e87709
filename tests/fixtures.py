"""Real text for the tests, made by the repository itself: no path outside it is ever read.

`fixture_corpus()` builds a small corpus once per test process with the project's own
`adamshap corpus build demo` code (`curation.demo_corpus.build_demo_corpus`: the six Debian
sources that `make setup` installs), `FIXTURE_PER_SOURCE` documents per source, seed 0, in a
temporary folder that is removed at exit. `$ADAMSHAP_TEST_CORPUS` may point at another corpus
file with the same `id`/`source`/`text` rows (a larger one, say); tests then read that instead.

Tests take "the first N documents of each source" (`fixture_docs`, `fixture_rows`), in file
order. When the data cannot be had, `missing_data` skips with a reason that starts with
`MISSING_DATA`, and fails instead when `CI` is set (tests/data_guard.py turns any such skip into
a failure too).
"""

from __future__ import annotations

import atexit
import functools
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import NoReturn

import pytest

from tests.data_guard import MISSING_DATA, guard_active

ENV_CORPUS = "ADAMSHAP_TEST_CORPUS"
FIXTURE_PER_SOURCE = 40
FIXTURE_SEED = 0
SOURCES = ("bible", "fortunes", "wordnet", "devil", "jargon", "pydocs")


def missing_data(reason: str) -> NoReturn:
    """Skip the calling test for missing data (fail instead when the CI guard is active)."""
    message = f"{MISSING_DATA}: {reason}"
    if guard_active():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@functools.lru_cache(maxsize=1)
def _build_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="adamshap-test-corpus-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@functools.cache
def fixture_corpus() -> Path:
    """Path of the test corpus: `$ADAMSHAP_TEST_CORPUS`, else a small demo corpus built here."""
    given = os.environ.get(ENV_CORPUS)
    if given:
        path = Path(given)
        if not path.is_file():
            missing_data(f"${ENV_CORPUS}={given} is not a file")
        return path
    from curation.demo_corpus import APT_LINE, build_demo_corpus, missing_inputs

    missing = missing_inputs()
    if missing:
        missing_data(
            f"the demo corpus's Debian packages are not installed ({len(missing)} inputs "
            f"absent, e.g. {missing[0]}); `make setup` installs them, or run: {APT_LINE}"
        )
    out = _build_dir() / f"demo-{FIXTURE_PER_SOURCE}-seed{FIXTURE_SEED}.jsonl"
    return build_demo_corpus(out, per_source=FIXTURE_PER_SOURCE, seed=FIXTURE_SEED)


@functools.cache
def _read(path: Path) -> tuple[dict, ...]:
    opener = gzip.open if path.name.endswith(".gz") else open
    if path.suffix in (".parquet", ".pq"):
        import polars as pl

        return tuple(pl.read_parquet(path).select("id", "source", "text").to_dicts())
    with opener(path, "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def fixture_docs(per_source: int) -> dict[str, list[dict]]:
    """The first `per_source` documents of each of the six sources, in file order."""
    rows = _read(fixture_corpus())
    by: dict[str, list[dict]] = {s: [] for s in SOURCES}
    for r in rows:
        group = by.get(r["source"])
        if group is not None and len(group) < per_source:
            group.append({"id": r["id"], "source": r["source"], "text": r["text"]})
    short = {s: len(v) for s, v in by.items() if len(v) < per_source}
    if short:
        missing_data(
            f"{fixture_corpus()} has fewer than {per_source} documents for {short}; "
            f"unset ${ENV_CORPUS} or point it at a larger corpus"
        )
    return by


def fixture_rows(per_source: int) -> list[dict]:
    """`fixture_docs(per_source)` as one list, sources in sorted order."""
    by = fixture_docs(per_source)
    return [r for s in sorted(by) for r in by[s]]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write `rows` as JSONL (one object a line); returns `path`."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
