"""User-facing errors: the CLI prints their message (no traceback) and exits with `exit_code`."""

from __future__ import annotations

from pathlib import Path


class AdamshapError(Exception):
    """Base of every error caused by the user's input or options (not by a bug)."""

    exit_code: int = 2


class UsageError(AdamshapError):
    """A command-line option or argument that cannot be used."""


class ManifestError(AdamshapError):
    """A data manifest that is malformed, unsafe or does not match its files."""


class CorpusError(AdamshapError):
    """A corpus file or row that cannot be read; names the file, 1-based line/row and field.

    `unit` is "line" for JSONL and "row" for Parquet and datasets folders.
    """

    def __init__(
        self,
        path: str | Path,
        row: int | None,
        field: str | None,
        message: str,
        hint: str | None = "fix the row or pass --on-bad-rows skip",
        unit: str = "line",
    ) -> None:
        self.path = Path(path)
        self.row = row
        self.field = field
        self.message = message
        self.hint = hint
        self.unit = unit
        super().__init__(str(self))

    def __reduce__(self):  # type: ignore[override]
        """Pickle with the constructor arguments (Prefect and multiprocessing copy errors)."""
        return (
            type(self),
            (self.path, self.row, self.field, self.message, self.hint, self.unit),
        )

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"{self.unit} {self.row}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        parts = [str(self.path), ", ".join(where), self.message]
        text = ": ".join(p for p in parts if p)
        return f"{text} ({self.hint})" if self.hint else text


class Interrupted(KeyboardInterrupt):
    """A run stopped on SIGINT or SIGTERM after saving its state; the CLI exits 128 + signum.

    A KeyboardInterrupt, so code that cleans up on Ctrl-C does the same for it; library code
    raises this instead of calling `sys.exit`.
    """

    def __init__(self, signum: int = 2, message: str = "") -> None:
        self.signum = signum
        self.message = message
        super().__init__(message)

    def __reduce__(self):  # type: ignore[override]
        """Pickle with the constructor arguments."""
        return (type(self), (self.signum, self.message))
