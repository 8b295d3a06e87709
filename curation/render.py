"""One renderer for every report page: Jinja2 templates for HTML and Markdown, one table writer.

A report is described once as a `Page` (the answer first, then details and sections holding
tables and figures); `write_page` renders it twice from `curation/templates/`: a self-contained
HTML page (shared base template and stylesheet, figures embedded as data URIs) and a Markdown file
whose figures link the PNG files written beside it. `md_table` is the project's only Markdown-table
writer (the Prefect artifacts use it too). No Prefect import here.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

TEMPLATES = Path(__file__).parent / "templates"
Formatter = Callable[[Any], str]


def fmt(x: Any) -> str:
    """Default cell text: floats to 4 significant digits, None as empty."""
    if isinstance(x, float):
        return f"{x:.4g}"
    return "" if x is None else str(x)


def md_table(head: Sequence[str], rows: Sequence[Sequence[Any]], fmt: Formatter = fmt) -> str:
    """A Markdown table (no trailing newline); `|` inside cells is escaped."""
    cell = lambda x: fmt(x).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def inline_html(text: str) -> Markup:
    """Escape text for HTML, then show its `code` and **bold** spans (the reports' only markup)."""
    t = str(escape(text))
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return Markup(re.sub(r"`(.+?)`", r"<code>\1</code>", t))


@dataclass
class Table:
    """Header and rows of raw values; `fmt` turns a value into its cell text."""

    head: list[str]
    rows: list[list[Any]]
    fmt: Formatter = fmt

    def markdown(self) -> str:
        return md_table(self.head, self.rows, self.fmt)

    def cells(self) -> list[list[tuple[str, bool]]]:
        """(text, is_number) per cell, for the HTML table (numbers are right-aligned)."""
        num = lambda x: isinstance(x, int | float) and not isinstance(x, bool)  # noqa: E731
        return [[(self.fmt(x), num(x)) for x in r] for r in self.rows]


@dataclass
class Figure:
    """A PNG: embedded in the HTML page, linked by `path` (relative) from the Markdown file."""

    title: str
    png: bytes
    path: str
    caption: str = ""

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class Section:
    """A heading with, in this order, paragraphs, bullets, a table and a figure (each optional)."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    table: Table | None = None
    figure: Figure | None = None
    level: int = 2


@dataclass
class Page:
    """A report page: the answer first (`answer`, `alerts`), then `note`, `details`, `sections`."""

    title: str
    answer: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    note: str = ""
    details: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)


@lru_cache(maxsize=2)
def _env(markdown: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=not markdown,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["inline"] = (lambda t: t) if markdown else inline_html
    return env


def render_html(page: Page) -> str:
    """The page as one self-contained HTML document."""
    return _env(False).get_template("page.html").render(page=page)


def render_markdown(page: Page) -> str:
    """The page as Markdown (figures as links to their PNG files)."""
    text = _env(True).get_template("page.md").render(page=page)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def write_page(folder: Path, stem: str, page: Page) -> tuple[Path, Path]:
    """Write `<stem>.md`, `<stem>.html` and every figure's PNG (at its `path`) atomically."""
    from .atomic import atomic_write_bytes, atomic_write_text

    folder = Path(folder)
    for s in page.sections:
        if s.figure is not None:
            atomic_write_bytes(folder / s.figure.path, s.figure.png)
    md = atomic_write_text(folder / f"{stem}.md", render_markdown(page))
    html = atomic_write_text(folder / f"{stem}.html", render_html(page))
    return md, html
