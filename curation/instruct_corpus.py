"""An instruction mixture built from the demo's Debian text: one source per task, two broken ones.

Tasks (prompt -> response), each its own source:
- `define-wordnet`: "Define the word: X" -> the WordNet gloss (without its usage examples);
- `define-devil`: "Define the word: X" -> The Devil's Dictionary's definition;
- `jargon-term`: "What does the hacker term 'X' mean?" -> first paragraph of its Jargon File entry;
- `pydoc-function`: "What does the Python function X do?" -> the first paragraph of its reST
  description in the Python 3.11 docs (`.. function::` / `.. method::` directives);
- `bible-verse`: "Continue the verse: V" -> the next verse of the same chapter (KJV).

Broken sources, drawn from rows of the five tasks that no task source uses:
- `shuffled`: the responses permuted among the prompts (no row keeps its own response);
- `truncated`: each response cut to its first 30% of words (at least two words).

Rows: `id` (`<source>-<nnnnn>`), `source`, `task` (the task a row's prompt comes from; in the
frame only), `prompt`, `response`, `text` (the template-joined pair). The loss counts response tokens only (curation.encode). Same packages and seed give
the same file.
"""

from __future__ import annotations

import gzip
import random
import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import polars as pl

from curation.corpus import DEFAULT_TEMPLATE, join_template, write_corpus
from curation.demo_corpus import (
    JARGON_TXT,
    PYDOCS_DIR,
    WORDNET_DIR,
    bible_chapters,
    devil_entries,
    require_inputs,
)

TASKS = ("define-wordnet", "define-devil", "jargon-term", "pydoc-function", "bible-verse")
BROKEN = ("shuffled", "truncated")
SOURCES = TASKS + BROKEN
MAX_RESPONSE_CHARS = 400
Pair = tuple[str, str]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _clip(text: str, limit: int = MAX_RESPONSE_CHARS) -> str:
    """Whitespace-joined text cut at the last sentence or word end before `limit` characters."""
    t = _one_line(text)
    if len(t) <= limit:
        return t
    cut = t[:limit]
    dot = cut.rfind(". ")
    return cut[: dot + 1] if dot > limit // 2 else cut.rsplit(" ", 1)[0]


def wordnet_pairs() -> list[Pair]:
    """("Define the word: lemma", gloss) for every WordNet synset's first lemma."""
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        with open(WORDNET_DIR / f"data.{pos}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" ") or " | " not in line:
                    continue
                head, gloss = line.rstrip("\n").split(" | ", 1)
                lemma = head.split()[4].replace("_", " ")
                lemma = re.sub(r"\(\w+\)$", "", lemma)  # adjective markers like (a)
                definition = gloss.split('; "')[0].strip().rstrip(";")
                if len(definition) >= 10:
                    out.append(
                        (f"Define the word: {lemma}", definition[0].upper() + definition[1:])
                    )
    return out


def devil_pairs() -> list[Pair]:
    """("Define the word: word", definition) from The Devil's Dictionary (verse entries left out)."""
    out = []
    for body in devil_entries():
        m = re.match(r"\s*([A-Z][A-Z' -]*),\s*([a-z.]+)\s+(.+)", body, flags=re.S)
        if not m:
            continue
        definition = _clip(m.group(3).split("\n\n")[0])
        if len(definition) >= 15:
            out.append((f"Define the word: {m.group(1).strip().lower()}", definition))
    return out


def jargon_pairs() -> list[Pair]:
    """("What does the hacker term 'X' mean?", first paragraph of its Jargon File entry)."""
    text = gzip.decompress(JARGON_TXT.read_bytes()).decode("utf-8", errors="replace")
    out = []
    parts = re.split(r"^\s+:([^:\n]{1,60}):[^\n]*$", text, flags=re.M)
    for term, body in zip(parts[1::2], parts[2::2]):
        paras = [p for p in re.split(r"\n\s*\n", body) if p.strip()]
        paras = [p for p in paras if not re.fullmatch(r"\s*\[[^\]]*\]\s*", p)]  # etymology only
        if not paras:
            continue
        first = re.sub(r"^\s*1\.\s+", "", paras[0].strip())
        answer = _clip(first)
        if len(answer) >= 20:
            out.append((f"What does the hacker term '{term.strip()}' mean?", answer))
    return out


def pydoc_pairs() -> list[Pair]:
    """("What does the Python function X do?", first paragraph of its documentation)."""
    out = []
    directive = re.compile(r"^(\s*)\.\. (?:function|method)::\s+([\w.]+)\(")
    for f in sorted(PYDOCS_DIR.rglob("*.txt")):
        lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
        for i, line in enumerate(lines):
            m = directive.match(line)
            if not m:
                continue
            indent = len(m.group(1))
            j = i + 1
            # skip continuation signatures and options, then blank lines
            while j < len(lines) and (
                lines[j].strip().startswith(":")
                or directive.match(lines[j])
                or not lines[j].strip()
            ):
                if lines[j].strip() and len(lines[j]) - len(lines[j].lstrip()) <= indent:
                    break
                j += 1
            para = []
            while j < len(lines) and lines[j].strip():
                if len(lines[j]) - len(lines[j].lstrip()) <= indent:
                    break
                para.append(lines[j].strip())
                j += 1
            answer = _clip(re.sub(r":\w+:`~?([^`]+)`", r"\1", " ".join(para)).replace("``", ""))
            if len(answer) >= 20:
                out.append((f"What does the Python function {m.group(2)} do?", answer))
    return out


def bible_pairs() -> list[Pair]:
    """("Continue the verse: v_k", v_{k+1}) for consecutive verses of one chapter (KJV)."""
    chapters = bible_chapters()
    return [
        (f"Continue the verse: {v[k]}", v[k + 1]) for v in chapters for k in range(0, len(v) - 1, 2)
    ]


READERS: dict[str, Callable[[], list[Pair]]] = {
    "define-wordnet": wordnet_pairs,
    "define-devil": devil_pairs,
    "jargon-term": jargon_pairs,
    "pydoc-function": pydoc_pairs,
    "bible-verse": bible_pairs,
}


def _truncate(response: str) -> str:
    words = response.split()
    return " ".join(words[: max(2, int(0.3 * len(words)))])


def instruct_frame(per_source: int = 200, seed: int = 0) -> pl.DataFrame:
    """The instruction mixture as a frame (id, source, task, prompt, response)."""
    require_inputs(per_source)
    rows: dict[str, list[str]] = {k: [] for k in ("id", "source", "task", "prompt", "response")}

    def add(source: str, task: str, k: int, prompt: str, response: str) -> None:
        rows["id"].append(f"{source}-{k:05d}")
        rows["source"].append(source)
        rows["task"].append(task)
        rows["prompt"].append(textwrap.shorten(prompt, 300, placeholder=" ..."))
        rows["response"].append(response)

    spare: list[tuple[str, str, str]] = []  # (task, prompt, response) not used by a task source
    n_spare = -(-2 * per_source // len(TASKS))  # enough for both broken sources
    for task in TASKS:
        pairs = list(dict.fromkeys(READERS[task]()))
        rng = random.Random(f"{seed}:{task}")
        picked = rng.sample(pairs, min(per_source + n_spare, len(pairs)))
        for k, (p, r) in enumerate(picked[:per_source]):
            add(task, task, k, p, r)
        spare.extend((task, p, r) for p, r in picked[per_source:])
    rng = random.Random(f"{seed}:broken")
    rng.shuffle(spare)
    shuf, trunc = spare[:per_source], spare[per_source : 2 * per_source]
    # Shuffle the responses, then rotate by one: no prompt keeps its own response.
    order = list(range(len(shuf)))
    rng.shuffle(order)
    responses = [shuf[order[(i + 1) % len(order)]][2] for i in range(len(order))]
    for k, i in enumerate(order):
        add("shuffled", shuf[i][0], k, shuf[i][1], responses[k])
    for k, (task, p, r) in enumerate(trunc):
        add("truncated", task, k, p, _truncate(r))
    rows["text"] = [
        join_template(DEFAULT_TEMPLATE, p, r)[0] for p, r in zip(rows["prompt"], rows["response"])
    ]
    return pl.DataFrame(rows, schema={k: pl.String for k in rows})


def build_instruct_corpus(out: Path, per_source: int = 200, seed: int = 0) -> Path:
    """Write the mixture to `out` (format by extension, atomically; `task` is not written)."""
    return write_corpus(instruct_frame(per_source, seed), Path(out))
