"""Read, validate and write corpora: JSONL, JSONL.gz, Parquet and local HF `datasets` folders.

Every row is validated before any work starts. A bad row either stops the read with a
`CorpusError` naming file, 1-based line/row and field (`on_bad_rows="error"`, the default), or is
written with its reason to a rejects file (`on_bad_rows="skip"`). Inputs are only opened for
reading. Blank lines in JSONL are not rows and are ignored.

Instruction rows carry `prompt` and `response` instead of `text`; `text` is then the template-
joined string and the loss counts response tokens only (see `curation.encode`). When a row has
both, the prompt/response pair wins and `text` is rebuilt from the template, so a corpus written
by `write_corpus` reads back unchanged.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from curation.atomic import atomic_path
from curation.errors import CorpusError, UsageError
from curation.settings import ON_BAD_ROWS, check_choice

DEFAULT_TEMPLATE = "{prompt}\n{response}"
OnBadRows = Literal["error", "skip"]
FORMATS = ("jsonl", "jsonl.gz", "parquet", "hf")


@dataclass(frozen=True)
class FieldMap:
    """Names of the input fields that hold each canonical column (`source=None`: use a default)."""

    id: str = "id"
    source: str | None = "source"
    text: str = "text"
    prompt: str = "prompt"
    response: str = "response"


@dataclass
class CorpusData:
    """A validated corpus: the frame plus where it came from and what was rejected."""

    df: pl.DataFrame
    path: Path
    format: str
    n_rejected: int = 0
    rejects_path: Path | None = None

    @property
    def n_rows_in(self) -> int:
        """Rows read from the input: kept + rejected."""
        return self.df.height + self.n_rejected

    @property
    def is_instruction(self) -> bool:
        """True when at least one row is a prompt/response pair."""
        return "prompt" in self.df.columns


class _BadRow(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def split_template(template: str) -> tuple[str, str]:
    """Split a template at `{response}` into (prefix template, suffix); checks both fields."""
    if template.count("{response}") != 1 or "{prompt}" not in template.split("{response}")[0]:
        raise UsageError(
            f"template {template!r} must contain '{{prompt}}' and then '{{response}}' exactly once"
        )
    prefix, suffix = template.split("{response}")
    try:
        prefix.format(prompt="")
        suffix.format()
    except (KeyError, IndexError, ValueError) as exc:
        raise UsageError(
            f"template {template!r} has a field other than {{prompt}}/{{response}} ({exc}); "
            "write literal braces as '{{' and '}}'"
        ) from None
    return prefix, suffix


def join_template(template: str, prompt: str, response: str) -> tuple[str, int, int]:
    """Join prompt and response; return (text, start, end) of the response's characters."""
    prefix, suffix = split_template(template)
    head = prefix.format(prompt=prompt)
    return head + response + suffix.format(), len(head), len(head) + len(response)


def corpus_format(path: str | Path) -> str:
    """Format of a corpus path by its extension or folder: jsonl, jsonl.gz, parquet or hf."""
    p = Path(path)
    if p.is_dir():
        return "hf"
    name = p.name.lower()
    if name.endswith((".jsonl.gz", ".json.gz")):
        return "jsonl.gz"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise CorpusError(
        p,
        None,
        None,
        "unknown corpus format",
        hint="use .jsonl, .jsonl.gz, .parquet or a folder written by datasets' save_to_disk",
    )


def corpus_sha256(path: str | Path, exclude: tuple[str | Path, ...] = ()) -> str:
    """SHA-256 of a file, or of all files of a folder (relative names and bytes, sorted order).

    Files under a folder of `exclude` (e.g. a run directory kept inside a datasets folder) and
    hidden temporary files (`.*.tmp*`) do not count.
    """
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        skip = [Path(os.path.abspath(e)) for e in exclude]

        def counts(x: Path) -> bool:
            a = Path(os.path.abspath(x))
            if any(a == s or s in a.parents for s in skip):
                return False
            return x.is_file() and not (x.name.startswith(".") and ".tmp" in x.name)

        for f in sorted(x for x in p.rglob("*") if counts(x)):
            h.update(f.relative_to(p).as_posix().encode() + b"\0")
            _hash_file(f, h)
    else:
        _hash_file(p, h)
    return h.hexdigest()


def _hash_file(path: Path, h: Any) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


# ---------------------------------------------------------------------------------- raw rows
# Each reader yields (row number, record dict or None, raw text or None, error or None).

RawRow = tuple[int, "dict[str, Any] | None", "str | None", "_BadRow | None"]


def _jsonl_rows(path: Path, fh: io.BufferedIOBase) -> Iterator[RawRow]:
    for lineno, raw in enumerate(fh, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield (
                lineno,
                None,
                raw.decode("utf-8", errors="backslashreplace").rstrip("\r\n"),
                _BadRow(None, f"bytes that are not UTF-8 at byte {exc.start} of the line"),
            )
            continue
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, None, line.rstrip("\r\n"), _BadRow(None, f"invalid JSON ({exc.msg})")
            continue
        if not isinstance(rec, dict):
            err = _BadRow(None, f"expected a JSON object, got {type(rec).__name__}")
            yield lineno, None, line.rstrip("\r\n"), err
            continue
        yield lineno, rec, None, None


def _iter_jsonl(path: Path, gz: bool) -> Iterator[RawRow]:
    if gz:
        with open(path, "rb") as probe:
            if probe.read(2) != b"\x1f\x8b":
                raise CorpusError(path, None, None, "not a gzip file", hint=_GZ_HINT)
    if not gz:
        with open(path, "rb") as fh:
            yield from _jsonl_rows(path, fh)
        return
    lineno = 0
    try:
        with gzip.open(path, "rb") as fh:
            for row in _jsonl_rows(path, fh):  # type: ignore[arg-type]
                lineno = row[0]
                yield row
    except (OSError, EOFError, zlib.error) as exc:
        raise CorpusError(
            path, lineno + 1, None, f"corrupt or truncated gzip data ({exc})", hint=_GZ_HINT
        ) from None


_GZ_HINT = "re-create or re-download the file; a .gz name needs gzip-compressed JSONL"


def _iter_table_rows(path: Path, batches: Iterator[Any]) -> Iterator[RawRow]:
    row = 0
    for batch in batches:
        for rec in batch.to_pylist():
            row += 1
            yield row, rec, None, None


def _iter_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(
            path, None, None, f"not a valid Parquet file ({exc})", hint=_PQ_HINT
        ) from None
    try:
        yield from _iter_table_rows(path, pf.iter_batches(batch_size=4096))
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(
            path, None, None, f"corrupt Parquet data ({exc})", hint=_PQ_HINT
        ) from None


_PQ_HINT = "re-create or re-download the file"


def _iter_hf(path: Path) -> Iterator[RawRow]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises several types for a folder it cannot read
        raise CorpusError(
            path,
            None,
            None,
            f"not a datasets folder ({type(exc).__name__}: {exc})",
            hint="pass a folder written by Dataset.save_to_disk, or a .jsonl/.parquet file",
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise CorpusError(
                path,
                None,
                None,
                f"DatasetDict has no 'train' split (splits: {sorted(ds)})",
                hint="save the split you want as its own Dataset",
            )
        ds = ds["train"]
    table = ds.with_format("arrow")
    batches = (table[i : i + 4096] for i in range(0, len(ds), 4096))
    yield from _iter_table_rows(path, batches)


def _iter_raw(path: Path, fmt: str) -> Iterator[RawRow]:
    if fmt == "jsonl":
        return _iter_jsonl(path, gz=False)
    if fmt == "jsonl.gz":
        return _iter_jsonl(path, gz=True)
    if fmt == "parquet":
        return _iter_parquet(path)
    return _iter_hf(path)


# ---------------------------------------------------------------------------------- validation


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _get_str(rec: dict[str, Any], name: str, what: str, allow_blank: bool = False) -> str:
    if name not in rec or rec[name] is None:
        raise _BadRow(name, f"missing {what}" if name not in rec else f"{what} is null")
    v = rec[name]
    if not isinstance(v, str):
        raise _BadRow(name, f"expected a string, got {_type_name(v)} {v!r:.40}")
    if not allow_blank and not v.strip():
        raise _BadRow(name, f"empty {what}" if not v else f"whitespace-only {what}")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise _BadRow(name, f"{what} is not valid Unicode (lone surrogate escape)") from None
    return v


def _validate(
    rec: dict[str, Any], fields: FieldMap, default_source: str | None, template: str
) -> dict[str, Any]:
    out: dict[str, Any] = {"id": _get_str(rec, fields.id, "id")}
    if fields.source is None or (default_source is not None and fields.source not in rec):
        if default_source is None:
            raise _BadRow("source", "no source field and no default source")
        out["source"] = default_source
    else:
        out["source"] = _get_str(rec, fields.source, "source")
    has_p = rec.get(fields.prompt) is not None
    has_r = rec.get(fields.response) is not None
    if has_p or has_r:
        if not has_r:
            raise _BadRow(fields.response, f"missing response (the row has '{fields.prompt}')")
        if not has_p:
            raise _BadRow(fields.prompt, f"missing prompt (the row has '{fields.response}')")
        prompt = _get_str(rec, fields.prompt, "prompt", allow_blank=True)
        response = _get_str(rec, fields.response, "response")
        out["text"] = join_template(template, prompt, response)[0]
        out["prompt"], out["response"] = prompt, response
    else:
        out["text"] = _get_str(rec, fields.text, "text")
        out["prompt"] = out["response"] = None
    return out


# ---------------------------------------------------------------------------------- read


def read_corpus(
    path: str | Path,
    fields: FieldMap = FieldMap(),
    on_bad_rows: OnBadRows = "error",
    rejects_path: str | Path | None = None,
    template: str = DEFAULT_TEMPLATE,
    default_source: str | None = None,
) -> CorpusData:
    """Read and validate a corpus; bad rows raise `CorpusError` or go to `rejects_path`."""
    path = Path(path)
    fmt, rejects = _check_read(path, on_bad_rows, rejects_path, template)
    unit = "line" if fmt.startswith("jsonl") else "row"
    rows: list[dict[str, Any]] = []
    first_seen: dict[str, int] = {}
    rejected: list[dict[str, Any]] = []
    n_in = 0
    for rowno, rec, raw, err in _iter_raw(path, fmt):
        n_in += 1
        try:
            if err is not None:
                raise err
            assert rec is not None
            clean = _validate(rec, fields, default_source, template)
            if clean["id"] in first_seen:
                raise _BadRow(
                    fields.id,
                    f"duplicate id {clean['id']!r} (first seen on {unit} {first_seen[clean['id']]})",
                )
        except _BadRow as bad:
            if on_bad_rows == "error":
                raise CorpusError(path, rowno, bad.field, bad.message, unit=unit) from None
            entry: dict[str, Any] = {"row": rowno, "reason": bad.message, "field": bad.field}
            entry.update({"raw": raw} if rec is None else {"record": rec})
            rejected.append(entry)
            continue
        first_seen[clean["id"]] = rowno
        rows.append(clean)
    if n_in == 0:
        raise CorpusError(path, None, None, "empty file: no rows", hint="the corpus needs rows")
    if rejects is not None and on_bad_rows == "skip":
        _write_rejects(rejects, path, rejected)
    _check_rows(path, n_in, rows, rejects)
    return CorpusData(
        df=_frame(rows),
        path=path,
        format=fmt,
        n_rejected=len(rejected),
        rejects_path=rejects if on_bad_rows == "skip" else None,
    )


def _check_read(
    path: Path, on_bad_rows: str, rejects_path: str | Path | None, template: str
) -> tuple[str, Path | None]:
    """The corpus format and the rejects file; UsageError/CorpusError before any row is read."""
    check_choice("on_bad_rows", on_bad_rows, ON_BAD_ROWS)
    split_template(template)
    if not path.exists():
        raise CorpusError(path, None, None, "file not found", hint="check the path")
    fmt = corpus_format(path)
    if fmt != "hf" and path.stat().st_size == 0:
        raise CorpusError(path, None, None, "empty file: no rows", hint="the corpus needs rows")
    rejects = Path(rejects_path) if rejects_path is not None else None
    if on_bad_rows == "skip":
        if rejects is None:
            raise UsageError("on_bad_rows='skip' needs a rejects file (rejects_path)")
        if rejects.resolve() == path.resolve():
            raise UsageError(f"the rejects file {rejects} must not be the input corpus")
    return fmt, rejects


def _check_rows(path: Path, n_in: int, rows: list, rejects: Path | None) -> None:
    """CorpusError when every row was rejected (the rejects file says why)."""
    if not rows:
        raise CorpusError(
            path,
            None,
            None,
            f"no valid rows left: all {n_in} rows were rejected",
            hint=f"see the reasons in {rejects}",
        )


def _write_rejects(rejects: Path, source_path: Path, rejected: list[dict[str, Any]]) -> None:
    with atomic_path(rejects) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for entry in rejected:
            entry = {"file": str(source_path), **entry}
            f.write(json.dumps(entry, ensure_ascii=False, default=repr) + "\n")


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    cols: dict[str, list[Any]] = {k: [r[k] for r in rows] for k in ("id", "source", "text")}
    schema: dict[str, Any] = {"id": pl.String, "source": pl.String, "text": pl.String}
    if any(r["prompt"] is not None for r in rows):
        cols["prompt"] = [r["prompt"] for r in rows]
        cols["response"] = [r["response"] for r in rows]
        schema.update(prompt=pl.String, response=pl.String)
    return pl.DataFrame(cols, schema=schema)


# ---------------------------------------------------------------------------------- write

_COLUMNS = ("id", "source", "text", "prompt", "response")


def write_corpus(df: pl.DataFrame, path: str | Path) -> Path:
    """Write a corpus frame in the format of `path`'s extension, atomically; returns the path."""
    path = Path(path)
    fmt = corpus_format(path) if not path.is_dir() else "hf"
    if fmt == "hf":
        raise UsageError(f"cannot write a corpus to {path}: use .jsonl, .jsonl.gz or .parquet")
    missing = [c for c in ("id", "source", "text") if c not in df.columns]
    if missing:
        raise UsageError(f"corpus frame lacks columns {missing}")
    df = df.select([c for c in _COLUMNS if c in df.columns])
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            df.write_parquet(tmp)
        elif fmt == "jsonl.gz":
            with open(tmp, "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as g:
                _write_jsonl(df, g)
        else:
            with open(tmp, "wb") as f:
                _write_jsonl(df, f)
    return path


_WRITE_ROWS = 8192  # rows encoded per write: memory stays at one slice, not a copy of the corpus


def _write_jsonl(df: pl.DataFrame, out: Any) -> None:
    """Write `df` as JSON lines (null fields left out) to a binary file, a slice at a time."""
    for a in range(0, df.height, _WRITE_ROWS):
        buf = io.StringIO()
        for rec in df.slice(a, _WRITE_ROWS).iter_rows(named=True):
            rec = {k: v for k, v in rec.items() if v is not None}
            buf.write(json.dumps(rec, ensure_ascii=False) + "\n")
        out.write(buf.getvalue().encode("utf-8"))
