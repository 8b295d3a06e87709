"""Corpus reading, validation, rejects, writing and atomic output."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation.atomic import atomic_dir, atomic_path, atomic_write_text
from curation.corpus import (
    FieldMap,
    corpus_format,
    corpus_sha256,
    join_template,
    read_corpus,
    write_corpus,
)
from curation.errors import AdamshapError, CorpusError, UsageError

GOOD = {"id": "a", "source": "s", "text": "The quick brown fox."}


def _line(**kw: object) -> str:
    return json.dumps({**GOOD, **kw})


def _write_lines(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    path.write_bytes(data)
    return path


def _digest(path: Path) -> str:
    return corpus_sha256(path)


# ---------------------------------------------------------------------------------- errors

BAD_LINES = [
    # (bad line, field named in the error, words in the message)
    ('{"id": "b", "source": "s", "text": ', None, "invalid JSON"),
    ("[1, 2, 3]", None, "expected a JSON object"),
    (json.dumps({"source": "s", "text": "x"}), "id", "missing id"),
    (json.dumps({"id": "b", "text": "x"}), "source", "missing source"),
    (json.dumps({"id": "b", "source": "s"}), "text", "missing text"),
    (json.dumps({"id": 7, "source": "s", "text": "x"}), "id", "expected a string, got int"),
    (json.dumps({"id": "b", "source": 3.5, "text": "x"}), "source", "got float"),
    (json.dumps({"id": "b", "source": "s", "text": ["x"]}), "text", "got list"),
    (json.dumps({"id": "b", "source": "s", "text": None}), "text", "text is null"),
    (json.dumps({"id": "b", "source": "s", "text": ""}), "text", "empty text"),
    (json.dumps({"id": "b", "source": "s", "text": " \n\t "}), "text", "whitespace-only text"),
    (json.dumps({"id": "", "source": "s", "text": "x"}), "id", "empty id"),
    ('{"id": "b", "source": "s", "text": "\\ud800 lone"}', "text", "not valid Unicode"),
    (json.dumps({"id": "b", "source": "s", "prompt": "Q?"}), "response", "missing response"),
    (json.dumps({"id": "b", "source": "s", "response": "A."}), "prompt", "missing prompt"),
    (
        json.dumps({"id": "b", "source": "s", "prompt": "Q", "response": " "}),
        "response",
        "whitespace-only",
    ),
    (json.dumps({"id": "a", "source": "s", "text": "again"}), "id", "duplicate id 'a'"),
]


@pytest.mark.parametrize("bad, field, words", BAD_LINES)
def test_bad_line_is_reported_with_file_line_and_field(tmp_path, bad, field, words):
    path = _write_lines(tmp_path / "corpus.jsonl", [_line(), _line(id="ok2"), bad, _line(id="z")])
    with pytest.raises(CorpusError) as exc:
        read_corpus(path)
    err = exc.value
    assert (err.path, err.row, err.field) == (path, 3, field)
    assert words in str(err)
    assert str(err).startswith(f"{path}: line 3")
    assert "--on-bad-rows skip" in str(err)
    assert isinstance(err, AdamshapError) and err.exit_code == 2


def test_error_message_format(tmp_path):
    path = _write_lines(tmp_path / "corpus.jsonl", [_line(text="")])
    with pytest.raises(CorpusError) as exc:
        read_corpus(path)
    assert str(exc.value) == (
        f"{path}: line 1, field 'text': empty text (fix the row or pass --on-bad-rows skip)"
    )


def test_corpus_error_pickles():
    import pickle

    err = CorpusError("c.jsonl", 3, "id", "duplicate id 'a'", unit="row")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and (back.row, back.field, back.unit) == (3, "id", "row")


def test_duplicate_id_names_both_rows(tmp_path):
    path = _write_lines(tmp_path / "c.jsonl", [_line(), _line(id="b"), _line(id="a")])
    with pytest.raises(
        CorpusError, match=r"line 3, field 'id': duplicate id 'a' \(first seen on line 1\)"
    ):
        read_corpus(path)


def test_undecodable_bytes_give_the_line(tmp_path):
    bad = b'{"id": "b", "source": "s", "text": "caf\xe9"}'
    path = _write_lines(tmp_path / "c.jsonl", [_line(), bad])
    with pytest.raises(CorpusError, match="line 2: bytes that are not UTF-8") as exc:
        read_corpus(path)
    assert exc.value.row == 2


def test_first_bad_row_wins(tmp_path):
    path = _write_lines(tmp_path / "c.jsonl", [_line(), _line(id="b", text=""), "{nope"])
    with pytest.raises(CorpusError) as exc:
        read_corpus(path)
    assert exc.value.row == 2


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "c.jsonl"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match="empty file"):
        read_corpus(path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(CorpusError, match="file not found"):
        read_corpus(tmp_path / "nope.jsonl")
    (tmp_path / "c.csv").write_text("id,text\n")
    with pytest.raises(CorpusError, match="unknown corpus format"):
        read_corpus(tmp_path / "c.csv")


def test_gzip_that_is_not_gzip(tmp_path):
    path = _write_lines(tmp_path / "c.jsonl.gz", [_line()])
    with pytest.raises(CorpusError, match="not a gzip file"):
        read_corpus(path)


def test_truncated_gzip(tmp_path):
    data = gzip.compress(("\n".join(_line(id=f"d{i}") for i in range(2000)) + "\n").encode())
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match="corrupt or truncated gzip"):
        read_corpus(path)


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "c.parquet"
    pl.DataFrame([GOOD]).write_parquet(path)
    data = path.read_bytes()
    path.write_bytes(data[:20] + b"\0" * 40 + data[60:-12])
    with pytest.raises(CorpusError, match="Parquet"):
        read_corpus(path)
    path.write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(CorpusError, match="not a valid Parquet file"):
        read_corpus(path)


def test_parquet_wrong_type_and_missing_column(tmp_path):
    path = tmp_path / "c.parquet"
    pl.DataFrame({"id": [1, 2], "source": ["s", "s"], "text": ["x", "y"]}).write_parquet(path)
    with pytest.raises(CorpusError) as exc:
        read_corpus(path)
    assert (exc.value.row, exc.value.field) == (1, "id")
    assert str(exc.value).startswith(f"{path}: row 1, field 'id': expected a string, got int")
    pl.DataFrame({"id": ["a", "b"], "source": ["s", "s"]}).write_parquet(path)
    with pytest.raises(CorpusError, match="row 1, field 'text': missing text"):
        read_corpus(path)
    pl.DataFrame({"id": ["a", "b"], "source": ["s", "s"], "text": ["x", None]}).write_parquet(path)
    with pytest.raises(CorpusError, match="row 2, field 'text': text is null"):
        read_corpus(path)


def test_hf_folders(tmp_path):
    import datasets

    df = pl.DataFrame({"id": ["a", "b"], "source": ["s", "t"], "text": ["x y", "z"]})
    datasets.Dataset.from_polars(df).save_to_disk(str(tmp_path / "ds"))
    got = read_corpus(tmp_path / "ds")
    assert got.format == "hf" and got.df.equals(df)
    datasets.DatasetDict({"train": datasets.Dataset.from_polars(df)}).save_to_disk(
        str(tmp_path / "dd")
    )
    assert read_corpus(tmp_path / "dd").df.equals(df)
    datasets.DatasetDict({"test": datasets.Dataset.from_polars(df)}).save_to_disk(
        str(tmp_path / "dt")
    )
    with pytest.raises(CorpusError, match="no 'train' split"):
        read_corpus(tmp_path / "dt")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("hi")
    with pytest.raises(CorpusError, match="not a datasets folder"):
        read_corpus(tmp_path / "junk")
    bad = pl.DataFrame({"id": ["a", "a"], "source": ["s", "s"], "text": ["x", "y"]})
    datasets.Dataset.from_polars(bad).save_to_disk(str(tmp_path / "dup"))
    with pytest.raises(CorpusError, match="row 2, field 'id': duplicate id"):
        read_corpus(tmp_path / "dup")


# ---------------------------------------------------------------------------------- skip mode


def test_skip_writes_every_rejected_row_with_reason(tmp_path):
    lines: list[str | bytes] = [
        _line(),
        _line(id="b", text=""),
        "{broken",
        b'{"id": "c", "text": "\xff"}',
        _line(id=5),
        _line(id="a", text="dup"),
        _line(id="d"),
    ]
    path = _write_lines(tmp_path / "c.jsonl", lines)
    before = _digest(path)
    data = read_corpus(path, on_bad_rows="skip", rejects_path=tmp_path / "rejects.jsonl")
    assert data.df["id"].to_list() == ["a", "d"]
    assert data.n_rejected == 5 and data.n_rows_in == len(lines)
    rejects = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rejects] == [2, 3, 4, 5, 6]
    assert all(r["reason"] and r["file"] == str(path) for r in rejects)
    assert rejects[0]["record"] == {**GOOD, "id": "b", "text": ""}
    assert rejects[1]["raw"] == "{broken"
    assert "not UTF-8" in rejects[2]["reason"]
    assert rejects[4]["field"] == "id" and "duplicate" in rejects[4]["reason"]
    assert _digest(path) == before


def test_skip_with_nothing_left_raises_but_keeps_rejects(tmp_path):
    path = _write_lines(tmp_path / "c.jsonl", [_line(text=""), "{"])
    with pytest.raises(CorpusError, match="no valid rows left"):
        read_corpus(path, on_bad_rows="skip", rejects_path=tmp_path / "r.jsonl")
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2


def test_skip_needs_a_separate_rejects_file(tmp_path):
    path = _write_lines(tmp_path / "c.jsonl", [_line()])
    with pytest.raises(UsageError):
        read_corpus(path, on_bad_rows="skip")
    with pytest.raises(UsageError):
        read_corpus(path, on_bad_rows="skip", rejects_path=path)
    with pytest.raises(UsageError):
        read_corpus(path, on_bad_rows="ignore")  # type: ignore[arg-type]
    assert read_corpus(path).df.height == 1


# ---------------------------------------------------------------------------------- fields, formats


def test_field_map_and_default_source(tmp_path):
    path = _write_lines(tmp_path / "c.jsonl", [json.dumps({"doc": "a", "body": "hello"})])
    fields = FieldMap(id="doc", text="body", source=None)
    df = read_corpus(path, fields=fields, default_source="web").df
    assert df.to_dicts() == [{"id": "a", "source": "web", "text": "hello"}]
    with pytest.raises(CorpusError, match="field 'body'"):
        _write_lines(tmp_path / "d.jsonl", [json.dumps({"doc": "a", "body": 1})])
        read_corpus(tmp_path / "d.jsonl", fields=fields, default_source="web")


def test_instruction_rows_and_template(tmp_path):
    lines = [
        json.dumps({"id": "q1", "source": "qa", "prompt": "Define fox.", "response": "An animal."}),
        json.dumps({"id": "t1", "source": "web", "text": "Plain text."}),
    ]
    path = _write_lines(tmp_path / "c.jsonl", lines)
    df = read_corpus(path).df
    assert df.columns == ["id", "source", "text", "prompt", "response"]
    assert df["text"].to_list() == ["Define fox.\nAn animal.", "Plain text."]
    assert df["prompt"].to_list() == ["Define fox.", None]
    df2 = read_corpus(path, template="Q: {prompt}\nA: {response}").df
    assert df2["text"][0] == "Q: Define fox.\nA: An animal."
    assert join_template("<{prompt}>[{response}]", "p", "r") == ("<p>[r]", 4, 5)
    with pytest.raises(UsageError):
        read_corpus(path, template="{response} {prompt}")
    plain = _write_lines(tmp_path / "p.jsonl", [_line()])
    assert read_corpus(plain).df.columns == ["id", "source", "text"]


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz", "out.parquet"])
def test_write_read_round_trip(tmp_path, name):
    df = pl.DataFrame(
        {
            "id": ["a", "b", "c"],
            "source": ["s", "s", "t"],
            "text": ["x", "Q\nA", "ünïcödé ✓"],
            "prompt": [None, "Q", None],
            "response": [None, "A", None],
        }
    )
    path = write_corpus(df, tmp_path / name)
    assert corpus_format(path) == name.split(".", 1)[1]
    assert read_corpus(path).df.equals(df)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left
    if name.endswith(".gz"):  # deterministic bytes (no mtime, no temp name in the header)
        first = path.read_bytes()
        write_corpus(df, path)
        assert path.read_bytes() == first


def test_write_refuses_bad_frames_and_leaves_nothing(tmp_path):
    with pytest.raises(UsageError):
        write_corpus(pl.DataFrame({"id": ["a"]}), tmp_path / "x.jsonl")
    with pytest.raises(CorpusError):
        write_corpus(pl.DataFrame([GOOD]), tmp_path / "x.txt")
    assert list(tmp_path.iterdir()) == []


def test_inputs_are_never_modified(tmp_path):
    import datasets

    df = pl.DataFrame([GOOD, {**GOOD, "id": "b", "text": ""}])
    paths = [
        write_corpus(df, tmp_path / "c.jsonl"),
        write_corpus(df, tmp_path / "c.jsonl.gz"),
        write_corpus(df, tmp_path / "c.parquet"),
    ]
    datasets.Dataset.from_polars(df).save_to_disk(str(tmp_path / "ds"))
    paths.append(tmp_path / "ds")
    for p in paths:
        before, mtime = _digest(p), p.stat().st_mtime_ns
        with pytest.raises(CorpusError):
            read_corpus(p)
        data = read_corpus(p, on_bad_rows="skip", rejects_path=tmp_path / f"rej-{p.name}.jsonl")
        assert data.n_rejected == 1
        assert _digest(p) == before and p.stat().st_mtime_ns == mtime


def test_corpus_sha256_of_file_and_folder(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"abc")
    assert corpus_sha256(f) == hashlib.sha256(b"abc").hexdigest()
    d = tmp_path / "d"
    d.mkdir()
    (d / "x").write_bytes(b"1")
    (d / "y").write_bytes(b"2")
    h1 = corpus_sha256(d)
    (d / "y").write_bytes(b"3")
    assert corpus_sha256(d) != h1


# ---------------------------------------------------------------------------------- atomic


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = atomic_write_text(tmp_path / "out.json", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".json")
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o044  # readable by others, as a normally created file


def test_atomic_dir_replaces_whole_folder(tmp_path):
    out = tmp_path / "tok"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(ValueError), atomic_dir(out) as tmp:
        (tmp / "b").write_text("2")
        raise ValueError
    assert [p.name for p in out.iterdir()] == ["a"]
    with atomic_dir(out) as tmp:
        (tmp / "c").write_text("3")
    assert [p.name for p in out.iterdir()] == ["c"]
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]


# ---------------------------------------------------------------------------------- property

_row = st.one_of(
    st.tuples(st.just("good"), st.text(min_size=1, max_size=30).filter(lambda s: s.strip())),
    st.tuples(st.just("empty"), st.sampled_from(["", "  ", "\n"])),
    st.tuples(st.just("badjson"), st.just("{oops")),
    st.tuples(st.just("intid"), st.just("x")),
    st.tuples(st.just("nottext"), st.just("x")),
    st.tuples(st.just("dup"), st.just("x")),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(_row, min_size=1, max_size=25))
def test_property_rows_in_equal_valid_plus_rejected(tmp_path_factory, rows):
    tmp = tmp_path_factory.mktemp("prop")
    lines: list[str] = []
    for i, (kind, text) in enumerate(rows):
        if kind == "badjson":
            lines.append(text)
        elif kind == "intid":
            lines.append(json.dumps({"id": i, "source": "s", "text": "x"}))
        elif kind == "nottext":
            lines.append(json.dumps({"id": f"n{i}", "source": "s", "text": 3}))
        elif kind == "dup":
            lines.append(json.dumps({"id": "dup", "source": "s", "text": "again"}))
        else:
            lines.append(json.dumps({"id": f"d{i}", "source": "s", "text": text}))
    path = _write_lines(tmp / "c.jsonl", lines)
    rejects = tmp / "r.jsonl"
    try:
        data = read_corpus(path, on_bad_rows="skip", rejects_path=rejects)
    except CorpusError as exc:
        assert "no valid rows left" in str(exc)
        assert len(rejects.read_text().splitlines()) == len(lines)
        return
    rej = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert data.df.height + len(rej) == len(lines) == data.n_rows_in
    assert data.n_rejected == len(rej)
    first_line = {}
    for n, line in enumerate(lines, start=1):
        try:
            first_line.setdefault(json.loads(line)["id"], n)
        except ValueError:
            pass
    kept_rows = [first_line[i] for i in data.df["id"].to_list()]
    assert sorted(kept_rows + [r["row"] for r in rej]) == list(range(1, len(lines) + 1))
    assert data.df["id"].n_unique() == data.df.height
