"""Write files and folders under a temporary name in the same folder, then rename into place.

A reader therefore sees either the old output or the complete new one, never a partial file.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl


def _temp_name(path: Path, suffix: str = "") -> Path:
    """Create an empty file with a fresh name beside `path`, with the usual mode (0666 & ~umask).

    Opening with mode 0o666 lets the kernel apply the umask, so the process-wide umask is never
    read or changed (reading it means setting it, which races with other threads).
    """
    for _ in range(100):
        name = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return name
    raise FileExistsError(f"no free temporary name beside {path}")


def _temp_dir(path: Path, suffix: str) -> Path:
    """Create an empty folder with a fresh name beside `path` (mode 0777 & ~umask)."""
    for _ in range(100):
        name = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            os.mkdir(name, 0o777)
        except FileExistsError:
            continue
        return name
    raise FileExistsError(f"no free temporary name beside {path}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; on success rename it to `path`, else delete it.

    The temporary name keeps `path`'s suffixes so format detection by extension still works.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path, "".join(path.suffixes))
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` (old one removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_dir(path, ".tmp")
    try:
        yield tmp
        if path.exists():
            old = _temp_dir(path, ".old")
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically and return the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_parquet(df: pl.DataFrame, path: str | Path) -> Path:
    """Write a polars DataFrame as Parquet atomically and return the path."""
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)
    return Path(path)


@contextmanager
def staged_outputs(out: str | Path, last: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a fresh hidden folder inside `out` to write a command's outputs into.

    On success every entry of it is moved into `out` (the names in `last`, the completion
    markers, after all others); on any failure the folder and everything in it are deleted, so
    a failed run never leaves a partial set of new outputs.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = _temp_dir(out / "staging", ".tmp")
    try:
        yield stage
        names = sorted(
            os.listdir(stage), key=lambda n: (n in last, last.index(n) if n in last else 0, n)
        )
        for name in names:
            dst = out / name
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            os.replace(stage / name, dst)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
