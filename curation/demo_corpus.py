"""The built-in demo corpus: real text from six installed Debian packages.

Sources and what one document is:
- bible: 4 consecutive KJV verses of one chapter (text from the `bible` program of bible-kjv);
- fortunes: one fortune of 60+ characters (English files of the five fortune packages);
- wordnet: 6 glosses of one lexicographer file (synsets sorted by first lemma, then chunked);
- devil: one Devil's Dictionary entry (dictd files of dict-devil);
- jargon: ~700-character chunk of paragraphs of the Jargon File (jargon-text);
- pydocs: ~700-character chunk of paragraphs of the python3.11-doc reST sources.

Each source is sampled down to `per_source` documents with a seeded RNG of its own, so a subset
of sources (`sources=`, `--sources` on the command line) holds the same documents of each source as
the full build; ids are `<source>-<nnnnn>`. The same packages and seed give the same file. The
tests (tests/fixtures.py) and the benchmarks (benchmarks/common.py) build their corpora with this
code, so the repository needs no corpus file from outside it.
"""

from __future__ import annotations

import gzip
import random
import re
import shutil
import subprocess
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl

from curation.corpus import write_corpus
from curation.errors import AdamshapError

DEMO_APT_PACKAGES = (
    "fortunes fortunes-min fortune-anarchism fortunes-bofh-excuses fortunes-debian-hints "
    "bible-kjv-text bible-kjv wordnet-base dict-devil jargon-text python3.11-doc"
).split()
APT_LINE = "apt-get install " + " ".join(DEMO_APT_PACKAGES)

SOURCES = ("bible", "fortunes", "wordnet", "devil", "jargon", "pydocs")
LICENCES = {
    "bible": "public domain",
    "fortunes": "BSD / public domain / GPL-3+ (fortune-anarchism)",
    "wordnet": "WordNet 3.0 licence (permissive)",
    "devil": "public domain",
    "jargon": "public domain",
    "pydocs": "PSF",
}

FORTUNE_DIR = Path("/usr/share/games/fortunes")
FORTUNE_FILES = (
    # fortunes
    "art ascii-art computers cookie debian definitions disclaimer drugs education ethnic food "
    "goedel humorists kids knghtbrd law linux linuxcookie love magic medicine men-women "
    "miscellaneous news paradoxum people perl pets platitudes politics pratchett science "
    "songs-poems sports startrek tao translate-me wisdom work zippy "
    # fortunes-min, fortune-anarchism, fortunes-bofh-excuses, fortunes-debian-hints
    "fortunes literature riddles anarchism bofh-excuses debian-hints"
).split()
BIBLE_DATA = Path("/usr/lib/bible.data")
BIBLE_BIN = "bible"
WORDNET_DIR = Path("/usr/share/wordnet")
DEVIL_INDEX = Path("/usr/share/dictd/devil.index")
DEVIL_DICT = Path("/usr/share/dictd/devil.dict.dz")
JARGON_TXT = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
PYDOCS_DIR = Path("/usr/share/doc/python3.11/html/_sources")
CHUNK_CHARS = 700


class DemoPackagesMissing(AdamshapError):
    """The Debian packages the demo corpus is built from are not installed."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(
            "the demo corpus is built from Debian packages that are not installed here "
            f"(missing: {', '.join(missing)}). Install them with:\n{APT_LINE}"
        )

    def __reduce__(self):  # type: ignore[override]
        """Pickle with the constructor argument."""
        return (type(self), (self.missing,))


def required_paths() -> list[Path]:
    """Files (and folders) the builder reads."""
    fortunes = [FORTUNE_DIR / f for f in FORTUNE_FILES]
    wordnet = [WORDNET_DIR / f"data.{p}" for p in ("noun", "verb", "adj", "adv")]
    return [BIBLE_DATA, *fortunes, *wordnet, DEVIL_INDEX, DEVIL_DICT, JARGON_TXT, PYDOCS_DIR]


def missing_inputs() -> list[str]:
    """Paths or programs the builder needs that are absent (empty list: all there)."""
    missing = [str(p) for p in required_paths() if not p.exists()]
    if shutil.which(BIBLE_BIN) is None:
        missing.append(f"program '{BIBLE_BIN}'")
    return missing


def require_inputs(per_source: int) -> None:
    """Refuse a build early: the Debian packages it reads are absent, or `per_source` < 1."""
    if per_source < 1:
        raise AdamshapError(f"per_source must be >= 1, got {per_source}")
    missing = missing_inputs()
    if missing:
        raise DemoPackagesMissing(missing)


# ---------------------------------------------------------------------------------- helpers


def _paragraphs(text: str) -> list[str]:
    paras = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        block = textwrap.dedent(block).strip("\n").rstrip()
        if block.strip():
            paras.append(block)
    return paras


def _chunks(paragraphs: list[str], size: int = CHUNK_CHARS) -> list[str]:
    """Pack consecutive paragraphs into chunks of about `size` characters."""
    out: list[str] = []
    cur: list[str] = []
    n = 0
    for p in paragraphs:
        if cur and n + len(p) > size * 1.5:
            out.append("\n\n".join(cur))
            cur, n = [], 0
        cur.append(p)
        n += len(p) + 2
        if n >= size:
            out.append("\n\n".join(cur))
            cur, n = [], 0
    if cur:
        out.append("\n\n".join(cur))
    return out


# ---------------------------------------------------------------------------------- sources


def bible_chapters() -> list[list[str]]:
    """The verses of every chapter (KJV), Genesis to Revelation."""
    res = subprocess.run(
        [BIBLE_BIN, "-l", "100000", "Gen1:1-Rev22:21"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
        text=True,
    )
    chapters: list[list[str]] = []
    for line in res.stdout.splitlines():
        m = re.match(r"^\s+\d+ (.*)$", line)
        if m:
            chapters[-1].append(m.group(1).strip())
        elif line.strip():
            chapters.append([])  # "Genesis 1": a chapter heading
    return chapters


def bible_docs() -> list[str]:
    """Groups of 4 consecutive verses within a chapter, Genesis to Revelation."""
    chapters = bible_chapters()
    return [" ".join(v[i : i + 4]) for v in chapters for i in range(0, len(v), 4)]


def fortune_docs() -> list[str]:
    """Every fortune of 60+ characters from the English fortune files."""
    docs = []
    for name in FORTUNE_FILES:
        raw = (FORTUNE_DIR / name).read_bytes().decode("utf-8", errors="replace")
        for item in re.split(r"^%\s*$", raw, flags=re.M):
            item = item.strip("\n").rstrip()
            if len(item.strip()) >= 60:
                docs.append(item)
    return docs


def wordnet_docs() -> list[str]:
    """Six 'lemma, lemma: gloss' lines of one lexicographer file per document."""
    by_lexfile: dict[str, list[tuple[str, str]]] = {}
    for pos in ("noun", "verb", "adj", "adv"):
        with open(WORDNET_DIR / f"data.{pos}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" ") or " | " not in line:
                    continue  # licence header
                head, gloss = line.rstrip("\n").split(" | ", 1)
                parts = head.split()
                n_words = int(parts[3], 16)
                words = [parts[4 + 2 * k].replace("_", " ") for k in range(n_words)]
                entry = f"{', '.join(words)}: {gloss.strip()}"
                by_lexfile.setdefault(parts[1], []).append((words[0].lower(), entry))
    docs = []
    for lexfile in sorted(by_lexfile):
        entries = [e for _, e in sorted(by_lexfile[lexfile])]
        docs.extend("\n".join(entries[i : i + 6]) for i in range(0, len(entries), 6))
    return docs


def _b64_number(s: str) -> int:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    n = 0
    for ch in s:
        n = n * 64 + alphabet.index(ch)
    return n


def devil_entries() -> list[str]:
    """The raw text of every entry of The Devil's Dictionary (dictd metadata entries left out)."""
    data = gzip.decompress(DEVIL_DICT.read_bytes())
    entries = []
    for line in DEVIL_INDEX.read_text(encoding="utf-8").splitlines():
        word, off, length = line.split("\t")[:3]
        if word.startswith("00database"):
            continue
        start = _b64_number(off)
        entries.append(data[start : start + _b64_number(length)].decode("utf-8", errors="replace"))
    return entries


def devil_docs() -> list[str]:
    """One entry of The Devil's Dictionary per document (dictd metadata entries left out)."""
    docs = []
    for body in devil_entries():
        body = textwrap.dedent(body).strip()
        if body:
            docs.append(body)
    return docs


def jargon_docs() -> list[str]:
    """~700-character chunks of paragraphs of the Jargon File (index pages included)."""
    text = gzip.decompress(JARGON_TXT.read_bytes()).decode("utf-8", errors="replace")
    return _chunks(_paragraphs(text))


def pydocs_docs() -> list[str]:
    """~700-character chunks of paragraphs of each Python 3.11 reST source file."""
    docs = []
    for f in sorted(PYDOCS_DIR.rglob("*.txt")):
        docs.extend(_chunks(_paragraphs(f.read_text(encoding="utf-8", errors="replace"))))
    return docs


READERS: dict[str, Callable[[], list[str]]] = {
    "bible": bible_docs,
    "fortunes": fortune_docs,
    "wordnet": wordnet_docs,
    "devil": devil_docs,
    "jargon": jargon_docs,
    "pydocs": pydocs_docs,
}


def check_sources(sources: Sequence[str] | None) -> tuple[str, ...]:
    """The demo sources asked for, in the standard order (None: all six); unknown names raise."""
    if sources is None:
        return SOURCES
    wanted = [s.strip() for s in sources if s.strip()]
    unknown = sorted(set(wanted) - set(SOURCES))
    if unknown or not wanted:
        raise AdamshapError(
            f"unknown demo source(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {','.join(SOURCES)}"
        )
    return tuple(s for s in SOURCES if s in wanted)


def demo_frame(
    per_source: int = 300, seed: int = 0, sources: Sequence[str] | None = None
) -> pl.DataFrame:
    """The demo corpus as a frame (id, source, text); `per_source` sampled docs per source."""
    chosen = check_sources(sources)
    require_inputs(per_source)
    rows: dict[str, list[str]] = {"id": [], "source": [], "text": []}
    for source in chosen:
        docs = list(dict.fromkeys(d for d in READERS[source]() if d.strip()))  # de-duplicated
        rng = random.Random(f"{seed}:{source}")
        picked = rng.sample(docs, min(per_source, len(docs)))
        for k, text in enumerate(picked):
            rows["id"].append(f"{source}-{k:05d}")
            rows["source"].append(source)
            rows["text"].append(text)
    return pl.DataFrame(rows, schema={"id": pl.String, "source": pl.String, "text": pl.String})


def build_demo_corpus(
    out: Path, per_source: int = 300, seed: int = 0, sources: Sequence[str] | None = None
) -> Path:
    """Write the demo corpus to `out` (format by extension, atomically); returns `out`."""
    return write_corpus(demo_frame(per_source, seed, sources), Path(out))
