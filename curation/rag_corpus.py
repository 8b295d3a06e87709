"""A RAG corpus from the demo's Debian text: (retrieved context, question, answer) rows.

Each row asks what a term means (WordNet, The Devil's Dictionary, the Jargon File, the Python
docs: the instruction tasks of curation/instruct_corpus.py) and answers with the reference text.
The prompt holds the retrieved passage and the question; the response is the answer, so the loss
(and the value) counts answer tokens only. Rows are tagged with the retrieval source their
passage came from:
- `kb-answer`: the passage is the term's own entry (it holds the answer);
- `kb-irrelevant`: the passage is another term's entry (about something else);
- `kb-contradict`: the passage gives the term another term's definition (it contradicts the
  answer).

Columns: `id` (`<source>-<nnnnn>`), `source`, `prompt` ("Context: [<source>] <passage>\\n
Question: ..."), `response` (the answer), `text` (template-joined). Frame-only columns:
`passage` and `term`. Every question (term) appears in one row only.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import polars as pl

from curation.corpus import DEFAULT_TEMPLATE, join_template, write_corpus
from curation.demo_corpus import require_inputs
from curation.errors import AdamshapError
from curation.instruct_corpus import READERS, _clip

ANSWER_CHARS = 200

RAG_SOURCES = ("kb-answer", "kb-irrelevant", "kb-contradict")
TERM_TASKS = ("define-wordnet", "define-devil", "jargon-term", "pydoc-function")
_TERM = (
    r"Define the word: (.+)$",
    r"What does the hacker term '(.+)' mean\?$",
    r"What does the Python function (.+) do\?$",
)


def _term(prompt: str) -> str:
    for pat in _TERM:
        m = re.match(pat, prompt)
        if m:
            return m.group(1)
    raise ValueError(f"no term in {prompt!r}")


def rag_frame(per_source: int = 200, seed: int = 0) -> pl.DataFrame:
    """The RAG corpus as a frame (id, source, prompt, response, text, passage, term)."""
    require_inputs(per_source)
    rng = random.Random(f"{seed}:rag")
    entries: list[tuple[str, str]] = []  # (term, definition), one per term
    seen: set[str] = set()
    per_task = -(-2 * 3 * per_source // len(TERM_TASKS))  # questions + donor definitions
    for task in TERM_TASKS:
        pairs = sorted(set(READERS[task]()))
        random.Random(f"{seed}:rag:{task}").shuffle(pairs)
        k = 0
        for p, r in pairs:
            t = _term(p)
            if t.lower() in seen:
                continue
            seen.add(t.lower())
            entries.append((t, _clip(r, ANSWER_CHARS)))
            k += 1
            if k >= per_task:
                break
    rng.shuffle(entries)
    n = 3 * per_source
    if len(entries) < 2 * n:
        raise AdamshapError(f"only {len(entries)} distinct terms; lower per_source")
    questions, donors = entries[:n], entries[n : 2 * n]
    rows: dict[str, list[str]] = {
        k: [] for k in ("id", "source", "prompt", "response", "passage", "term")
    }
    for i, (term, answer) in enumerate(questions):
        source = RAG_SOURCES[i % 3]
        dterm, dans = donors[i]
        passage = {
            "kb-answer": f"{term}: {answer}",
            "kb-irrelevant": f"{dterm}: {dans}",
            "kb-contradict": f"{term}: {dans}",
        }[source]
        rows["id"].append(f"{source}-{i // 3:05d}")
        rows["source"].append(source)
        rows["prompt"].append(f"Context: [{source}] {passage}\nQuestion: What does '{term}' mean?")
        rows["response"].append(answer)
        rows["passage"].append(passage)
        rows["term"].append(term)
    rows["text"] = [
        join_template(DEFAULT_TEMPLATE, p, r)[0] for p, r in zip(rows["prompt"], rows["response"])
    ]
    return pl.DataFrame(rows, schema={k: pl.String for k in rows})


def build_rag_corpus(out: Path, per_source: int = 200, seed: int = 0) -> Path:
    """Write the RAG corpus to `out` (format by extension, atomically; frame-only columns dropped)."""
    return write_corpus(rag_frame(per_source, seed), Path(out))
