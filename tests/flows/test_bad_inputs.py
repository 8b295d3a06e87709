"""Bad inputs through the real CLI: one clear line naming file/row/field, exit 2, no output left.

Every command (`score`, `prune`, `verify`, `curate`) is given each kind of broken input. The
error must be one line on stderr (`adamshap <cmd>: error: <file>: line N: field 'x': ...
(what to do)`), the exit code 2, and no file that marks a finished command may exist afterwards
(run.json / .complete, prune.json / kept.*, verify.json / verify.md, curate.json).
Most cases fail while the inputs are validated, so they run in-process and take milliseconds.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows import cli
from tests.flows.conftest import REPO

# ----------------------------------------------------------------------------- inputs


def _rows(n: int = 6) -> list[dict]:
    texts = ["the quick brown fox", "jumps over the lazy dog", "a stitch in time", "saves nine"]
    return [
        {"id": f"d{i}", "source": "s" + str(i % 2), "text": texts[i % len(texts)] + f" {i}"}
        for i in range(n)
    ]


def _jsonl(rows: list) -> bytes:
    return b"".join(
        (r if isinstance(r, bytes) else json.dumps(r).encode("utf-8")) + b"\n" for r in rows
    )


def _parquet_bytes(rows: list[dict]) -> bytes:
    import polars as pl

    buf = io.BytesIO()
    pl.DataFrame(rows).write_parquet(buf)
    return buf.getvalue()


def _with(i: int, **kw) -> list:
    rows: list = _rows()
    rows[i] = {**rows[i], **kw}
    return rows


def _without(i: int, key: str) -> list:
    rows: list = _rows()
    rows[i] = {k: v for k, v in rows[i].items() if k != key}
    return rows


def _bad_bytes_row() -> list:
    rows: list = _rows()
    rows[2] = b'{"id": "d2", "source": "s0", "text": "caf\xe9 au lait"}'  # latin-1, not UTF-8
    return rows


def _truncated_line() -> list:
    rows: list = _rows()
    rows[3] = b'{"id": "d3", "source": "s1", "text": "cut off in the mid'
    return rows


# name -> (file name, bytes, substrings the message must contain)
CASES: dict[str, tuple[str, bytes, tuple[str, ...]]] = {
    "empty-file": ("c.jsonl", b"", ("c.jsonl", "empty file")),
    "blank-lines-only": ("c.jsonl", b"\n  \n\n", ("c.jsonl", "empty file")),
    "invalid-json-line": ("c.jsonl", _jsonl(_truncated_line()), ("line 4", "invalid JSON")),
    "not-an-object": ("c.jsonl", _jsonl([*_rows(2), [1, 2]]), ("line 3", "JSON object")),
    "gz-not-gzip": ("c.jsonl.gz", _jsonl(_rows()), ("c.jsonl.gz", "not a gzip file")),
    "gz-truncated": (
        "c.jsonl.gz",
        gzip.compress(_jsonl(_rows(200)), mtime=0)[:300],
        ("c.jsonl.gz", "truncated gzip"),
    ),
    "parquet-garbage": ("c.parquet", b"PAR1 this is not parquet", ("c.parquet", "Parquet")),
    "parquet-truncated": (
        "c.parquet",
        _parquet_bytes(_rows())[:-40],
        ("c.parquet", "Parquet"),
    ),
    "missing-text": ("c.jsonl", _jsonl(_without(1, "text")), ("line 2", "'text'", "missing")),
    "missing-id": ("c.jsonl", _jsonl(_without(4, "id")), ("line 5", "'id'", "missing")),
    "text-not-string": ("c.jsonl", _jsonl(_with(1, text=42)), ("line 2", "'text'", "string")),
    "id-null": ("c.jsonl", _jsonl(_with(0, id=None)), ("line 1", "'id'", "null")),
    "parquet-wrong-type": (
        "c.parquet",
        _parquet_bytes([{**r, "text": 7} for r in _rows()]),
        ("row 1", "'text'", "string"),
    ),
    "not-utf8": ("c.jsonl", _jsonl(_bad_bytes_row()), ("line 3", "UTF-8")),
    "empty-text": ("c.jsonl", _jsonl(_with(2, text="")), ("line 3", "'text'", "empty text")),
    "whitespace-text": (
        "c.jsonl",
        _jsonl(_with(5, text=" \t\n ")),
        ("line 6", "'text'", "whitespace-only"),
    ),
    "duplicate-id": (
        "c.jsonl",
        _jsonl(_with(4, id="d1")),
        ("line 5", "duplicate id 'd1'", "first seen on line 2"),
    ),
    "unknown-format": ("c.csv", b"id,text\n1,a\n", ("c.csv", "unknown corpus format")),
}

# files whose presence says "this command finished"
DONE_MARKERS = (
    "run.json",
    ".complete",
    "prune.json",
    "verify.json",
    "verify.md",
    "curate.json",
    "values_by_example.parquet",
)


def _done_files(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name in DONE_MARKERS or p.name.startswith(("kept.", "excluded."))
    )


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _assert_one_line_error(
    code: int, err: str, command: str, needles: tuple[str, ...], hint: bool = False
) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    line = lines[0]
    assert line.startswith(f"adamshap {command}: error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    if hint:  # file errors end with "(what to do)", valid for this command
        assert "(" in line and line.rstrip().endswith(")"), f"no hint on what to do: {line}"
        if command in ("prune", "verify"):
            assert "--on-bad-rows skip)" not in line, f"{command} has no --on-bad-rows: {line}"


@pytest.fixture
def good(tmp_path: Path) -> dict[str, Path]:
    """A valid corpus, target and (fake) scores folder."""
    (tmp_path / "good").mkdir()
    corpus = tmp_path / "good" / "corpus.jsonl"
    corpus.write_bytes(_jsonl(_rows()))
    target = tmp_path / "good" / "target.jsonl"
    target.write_bytes(_jsonl([{**r, "id": "t" + r["id"]} for r in _rows(3)]))
    scores = tmp_path / "good" / "scores"
    scores.mkdir()
    return {"corpus": corpus, "target": target, "scores": scores}


def _bad_file(tmp_path: Path, case: str) -> tuple[Path, tuple[str, ...]]:
    name, data, needles = CASES[case]
    (tmp_path / "bad").mkdir(exist_ok=True)
    path = tmp_path / "bad" / name
    path.write_bytes(data)
    return path, needles


def _argv(role: str, bad: Path, good: dict[str, Path], out: Path) -> tuple[str, list]:
    c, t, s = good["corpus"], good["target"], good["scores"]
    tiny = ["--preset", "tiny", "--seq-len", "32", "--vocab-size", "300"]
    return {
        "score-corpus": ("score", ["score", bad, "--target", t, "--out", out, *tiny]),
        "score-target": ("score", ["score", c, "--target", bad, "--out", out, *tiny]),
        "prune-corpus": ("prune", ["prune", bad, "--scores", s, "--target", t, "--out", out]),
        "prune-target": ("prune", ["prune", c, "--scores", s, "--target", bad, "--out", out]),
        "verify-curated": (
            "verify",
            ["verify", "--curated", bad, "--full", c, "--target", t, "--out", out],
        ),
        "verify-full": (
            "verify",
            ["verify", "--curated", c, "--full", bad, "--target", t, "--out", out],
        ),
        "verify-target": (
            "verify",
            ["verify", "--curated", c, "--full", c, "--target", bad, "--out", out],
        ),
    }[role]


ROLES = (
    "score-corpus",
    "score-target",
    "prune-corpus",
    "prune-target",
    "verify-curated",
    "verify-full",
    "verify-target",
)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("role", ROLES)
def test_bad_file_is_one_clear_line_exit_2_no_output(role, case, good, tmp_path, capsys):
    bad, needles = _bad_file(tmp_path, case)
    out = tmp_path / "out"
    command, argv = _argv(role, bad, good, out)
    code, err = _run(argv, capsys)
    _assert_one_line_error(code, err, command, (str(bad), *needles), hint=True)
    assert _done_files(out) == []
    # inputs are never modified
    assert bad.read_bytes() == CASES[case][1]


def test_skip_mode_writes_rejects_and_error_names_them_when_nothing_is_left(good, tmp_path, capsys):
    """An empty *target* set after skipping every bad row is an error naming the rejects file."""
    bad = tmp_path / "all_bad.jsonl"
    bad.write_bytes(_jsonl([{"id": "a", "text": ""}, {"id": "b", "source": "s", "text": " "}]))
    out = tmp_path / "run"
    argv = ["score", good["corpus"], "--target", bad, "--out", out, "--on-bad-rows", "skip"]
    code, err = _run(argv, capsys)
    _assert_one_line_error(code, err, "score", (str(bad), "no valid rows left", "rejects"))
    rejects = [json.loads(x) for x in (out / "rejects" / "target.jsonl").read_text().splitlines()]
    assert [(r["row"], r["field"]) for r in rejects] == [(1, "source"), (2, "text")]
    assert _done_files(out) == []


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("keep", ["0", "1.5", "abc", "-0.2", "nan", "inf"])
@pytest.mark.parametrize("command", ["prune", "curate"])
def test_bad_keep_exit_2(command, keep, good, tmp_path, capsys):
    first = good["corpus"] if command == "prune" else tmp_path / "m.yaml"
    code, err = _run([command, first, "--keep", keep, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "--keep" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_more_clusters_than_documents(good, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["prune", good["corpus"], "--scores", good["scores"], "--target", good["target"]]
    code, err = _run([*argv, "--clusters", "1000", "--out", out], capsys)
    _assert_one_line_error(code, err, "prune", ("--clusters 1000", "6 documents"))
    assert _done_files(out) == []


# ----------------------------------------------------------------------------- manifests


def _manifest(folder: Path, **over) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = _jsonl(_rows())
    (folder / "docs.jsonl").write_bytes(data)
    import hashlib

    doc = {
        "name": "m",
        "sources": [
            {
                "name": s,
                "files": ["docs.jsonl"],
                "licence": "test",
                "sha256": hashlib.sha256(data).hexdigest(),
            }
            for s in ("s0", "s1")
        ],
        "target": {"holdout": {"sources": ["s0"], "n": 1}},
        "run": {"keep": 0.5},
    }
    doc.update(over)
    path = folder / "m.yaml"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_manifest_checksum_mismatch(tmp_path, capsys):
    m = _manifest(tmp_path / "m")
    with open(tmp_path / "m" / "docs.jsonl", "ab") as f:  # the file changed after the manifest
        f.write(_jsonl([{"id": "new", "source": "s0", "text": "added later"}]))
    code, err = _run(["curate", m, "--out", tmp_path / "out"], capsys)
    _assert_one_line_error(code, err, "curate", ("sha256 mismatch", "docs.jsonl", "restore"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("path", ["../outside.jsonl", "sub/../../outside.jsonl", "/etc/passwd"])
def test_manifest_path_escaping_its_folder(path, tmp_path, capsys):
    (tmp_path / "outside.jsonl").write_bytes(_jsonl(_rows()))
    sources = [{"name": "s0", "files": [path], "licence": "x"}]
    m = _manifest(tmp_path / "m", sources=sources)
    code, err = _run(["curate", m, "--out", tmp_path / "out"], capsys)
    _assert_one_line_error(code, err, "curate", (str(m), repr(path)))
    assert "escapes" in err or "absolute" in err
    assert not (tmp_path / "out").exists()


def test_manifest_target_path_escaping(tmp_path, capsys):
    m = _manifest(tmp_path / "m", target={"file": "../../t.jsonl"})
    code, err = _run(["curate", m, "--out", tmp_path / "out"], capsys)
    _assert_one_line_error(code, err, "curate", ("target.file", "escapes"))


def test_manifest_python_object_tag_is_refused(tmp_path, capsys):
    """yaml.safe_load: a `!!python/object` tag is an error, never constructed."""
    marker = tmp_path / "pwned"
    m = tmp_path / "evil.yaml"
    m.write_text(
        "name: evil\n"
        f"run: !!python/object/apply:os.system ['touch {marker}']\n"
        "sources: [{name: a, files: [a.jsonl], licence: x}]\n",
        encoding="utf-8",
    )
    code, err = _run(["curate", m, "--out", tmp_path / "out"], capsys)
    _assert_one_line_error(code, err, "curate", ("evil.yaml", "not valid YAML"))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("run", "needle"),
    [
        ({"keep": 1.5}, "keep"),
        ({"keep": "abc"}, "keep"),
        ({"keep": 0}, "keep"),
    ],
)
def test_manifest_bad_run_settings_fail_before_any_work(run, needle, tmp_path, capsys):
    m = _manifest(tmp_path / "m", run=run)
    code, err = _run(["curate", m, "--out", tmp_path / "out"], capsys)
    _assert_one_line_error(code, err, "curate", (needle,))
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- through the flow


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(REPO),
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    return env


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_curate_flow_bad_rows_and_too_many_clusters(tmp_path):
    """Row errors surface from inside the Prefect flow as the same one-line error, exit 2."""
    folder = tmp_path / "m"
    m = _manifest(folder)
    with open(folder / "docs.jsonl", "ab") as f:
        f.write(b'{"id": "d9", "source": "s1", "text": "   "}\n')
    data = (folder / "docs.jsonl").read_bytes()
    import hashlib

    doc = json.loads(m.read_text())
    for s in doc["sources"]:
        s["sha256"] = hashlib.sha256(data).hexdigest()
    m.write_text(json.dumps(doc))
    cmd = [sys.executable, "-m", "flows.cli", "curate", str(m), "--out", str(tmp_path / "out")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), timeout=500)
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("adamshap curate: error: "), res.stderr
    assert "docs.jsonl: line 7, field 'text': whitespace-only text" in last
    assert "on_bad_rows: skip" in last  # the manifest's setting, not a CLI flag curate lacks
    assert "Traceback" not in res.stderr
    assert _done_files(tmp_path / "out") == []

    # Same corpus with the bad row skipped, but more clusters than documents: fails before scoring.
    doc["run"] = {"on_bad_rows": "skip", "clusters": 50}
    m.write_text(json.dumps(doc))
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), timeout=500)
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert "clusters" in last and "50" in last, res.stderr
    assert "Traceback" not in res.stderr
    assert _done_files(tmp_path / "out") == []
    assert not list((tmp_path / "out").glob("score-*")), "scoring started despite a bad setting"


# ----------------------------------------------------------------------------- long texts


@pytest.mark.integration
def test_texts_longer_than_context_are_truncated_and_counted(tmp_path, capsys):
    """Policy: truncate to --seq-len; the count is printed, in .complete and in report.md."""
    rows = _rows(12)
    rows[3]["text"] = " ".join(["a very long document"] * 5000)  # ~100k chars >> 32 tokens
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(_jsonl(rows))
    target = tmp_path / "target.jsonl"
    target.write_bytes(_jsonl([{**r, "id": "t" + r["id"]} for r in _rows(3)]))
    out = tmp_path / "run"
    argv = ["score", corpus, "--target", target, "--out", out, "--preset", "tiny"]
    argv += ["--seq-len", "32", "--vocab-size", "300", "--batch-size", "8"]
    argv += ["--warm-start-steps", "0", "--estimators", "adam2"]
    code, err = _run(argv, capsys)
    assert code == 0, err
    assert "1 of 12 training documents are longer than --seq-len 32 tokens" in err
    assert "target documents" not in err  # none of those was truncated
    assert json.loads((out / ".complete").read_text())["n_truncated"] == 1
    assert cli.main(["report", str(out)]) == 0
    capsys.readouterr()
    assert "1 of 12 examples truncated to the context length" in (out / "report.md").read_text()
