"""Quality rules that run before value ranking: documents no model should learn from.

Value ranking asks "does this document lower the target's loss?". At proxy scale that question
does not separate broken text from clean off-target text (the proxy learns each kind of junk as a
domain), so `prune` first drops documents that fail one of these rules, writes each with its
reason (`quality:<rule>`), and ranks the rest by value. Every rule is measured against the corpus
itself, so none needs a language list:

- `too_short`: fewer than `min_chars` non-blank characters.
- `minority_script`: most of the document's letters are in a Unicode script that holds less than
  `minority_script_share` of the corpus's letters (e.g. a few transliterated pages in a Latin
  corpus; a corpus that is 30% Cyrillic keeps its Cyrillic documents).
- `no_function_words`: at least `min_words_for_function_rate` words and fewer than
  `min_function_word_rate` of them among the corpus's `function_words` most frequent words (the
  Gopher "stop word" rule with the stop words taken from the corpus). The floor is 16 words
  because a clean sentence of 8 words holds none of them by chance about 5% of the time
  (0.7^8 with ~30% function words), of 16 words 0.3%.
- `long_words`: mean length of the whitespace words that hold a letter or digit above
  `max_mean_word_len` characters (table rules such as `+-----+` are not words).
- `few_letter_words`: at least `min_words_for_rates` whitespace words and fewer than
  `min_letter_word_share` of them contain a letter (number tables, symbol dumps). Gopher uses
  0.8; code-bearing text (Python docs) falls below that, so the default is 0.5.
- `repeated_lines`: more than `max_duplicate_line_share` of the lines that hold a letter or digit
  repeat an earlier line of the same document (Gopher's duplicate-line rule). Gopher's
  threshold, 0.3, is set for web pages; documentation repeats 30-40% of its lines by design
  (doctest sessions shown twice, table rows, "This field is not inherited."), so it is 0.5 here.
- `repeated_text`: the same text (case, whitespace and digits normalised) occurs in at least
  `repeat_min_copies` documents: templates, not content. Every copy is dropped.
- `no_word_order` (needs the scoring proxy; `order_gains`): shuffling the document's words costs
  the proxy less than `order_gain_frac` of the corpus's median cost, in nats per token. Real text
  loses much of its predictability when its words are shuffled; word salad, shuffled text and
  character noise lose almost none.

`check_quality` returns one reason per document (`""` when it passes) and the figures behind it.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

QUALITY_PREFIX = "quality:"
RULES = (
    "too_short",
    "minority_script",
    "no_function_words",
    "long_words",
    "few_letter_words",
    "repeated_lines",
    "repeated_text",
    "no_word_order",
)
_LETTERS = re.compile(r"[^\W\d_]+", re.UNICODE)
_DIGITS = re.compile(r"\d+")


@dataclass
class QualityRules:
    """Thresholds of the quality rules (saved with the prune arguments)."""

    min_chars: int = 50
    minority_script_share: float = 0.1
    function_words: int = 30
    min_function_word_rate: float = 0.02
    min_words_for_rates: int = 8
    min_words_for_function_rate: int = 16
    max_mean_word_len: float = 12.0
    min_letter_word_share: float = 0.5
    max_duplicate_line_share: float = 0.5
    repeat_min_copies: int = 5
    order_gain_frac: float = 0.2


@dataclass
class QualityResult:
    """Per-document reason (`""` = passes) and the corpus-level figures the rules used."""

    reasons: list[str]
    order_gain: np.ndarray  # nats/token; NaN where not measured
    order_gain_threshold: float
    dominant_script: str
    function_words: list[str] = field(default_factory=list)
    disabled: dict[str, str] = field(default_factory=dict)  # rule -> why it was not applied

    @property
    def flagged(self) -> np.ndarray:
        """bool [N]: the document fails a rule."""
        return np.array([bool(r) for r in self.reasons], bool)

    def counts(self) -> dict[str, int]:
        """Documents flagged per rule (first failing rule only), in rule order."""
        c = Counter(r for r in self.reasons if r)
        return {r: c.get(r, 0) for r in RULES}


def _script(ch: str) -> str:
    """First word of the character's Unicode name (LATIN, CYRILLIC, GREEK, CJK, ...)."""
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else "UNKNOWN"


def _letter_scripts(text: str) -> Counter:
    """Letters of `text` counted by script."""
    return Counter(_script(c) for c in text if c.isalpha())


def _has_content(text: str) -> bool:
    """`text` holds a letter or a digit (not only punctuation, rules or box drawing)."""
    return any(c.isalnum() for c in text)


def _normalised(text: str) -> str:
    """Case-, whitespace- and digit-normalised text (for `repeated_text`)."""
    return _DIGITS.sub("0", " ".join(text.split()).lower())


def _rules_failed(
    text: str,
    words: list[str],
    scripts: Counter,
    corpus_scripts: Counter,
    top: set[str],
    copies: int,
    rules: QualityRules,
) -> set[str]:
    """Every text rule `text` fails."""
    failed = set()
    if len("".join(text.split())) < rules.min_chars:
        failed.add("too_short")
    n_letters = sum(scripts.values())
    total = sum(corpus_scripts.values()) or 1
    if n_letters:
        own, k = scripts.most_common(1)[0]
        if k > n_letters / 2 and corpus_scripts[own] / total < rules.minority_script_share:
            failed.add("minority_script")
    if len(words) >= rules.min_words_for_function_rate:
        rate = sum(w in top for w in words) / len(words)
        if rate < rules.min_function_word_rate:
            failed.add("no_function_words")
    tokens = text.split()
    content = [tk for tk in tokens if _has_content(tk)]
    if content and sum(map(len, content)) / len(content) > rules.max_mean_word_len:
        failed.add("long_words")
    if len(tokens) >= rules.min_words_for_rates:
        lettered = sum(any(c.isalpha() for c in tk) for tk in tokens)
        if lettered / len(tokens) < rules.min_letter_word_share:
            failed.add("few_letter_words")
    lines = [ln.strip() for ln in text.splitlines() if _has_content(ln)]
    if lines and 1 - len(set(lines)) / len(lines) > rules.max_duplicate_line_share:
        failed.add("repeated_lines")
    if copies >= rules.repeat_min_copies:
        failed.add("repeated_text")
    return failed


def _asked_for(failed: list[set[str]], target: np.ndarray) -> dict[str, str]:
    """Rules the target itself fails at least as often as the rest of the corpus, with why."""
    out = {}
    rest = ~target
    for rule in RULES:
        hit = np.array([rule in f for f in failed], bool)
        t_rate = float(hit[target].mean())
        c_rate = float(hit[rest].mean()) if rest.any() else 0.0
        if t_rate > 0 and t_rate >= c_rate:
            out[rule] = (
                f"{t_rate:.1%} of the target fails it (rest of the corpus {c_rate:.1%}): "
                "the target asks for that kind of text"
            )
    return out


def check_quality(
    texts: Sequence[str],
    rules: QualityRules | None = None,
    order_gain: np.ndarray | None = None,
    target: np.ndarray | None = None,
) -> QualityResult:
    """Apply the rules to `texts`; `order_gain` (from `order_gains`) enables `no_word_order`.

    `target` marks rows that are the target (judged, never excluded): a rule the target fails
    at least as often as the other rows is not applied (`QualityResult.disabled` says why), so
    a code-heavy target keeps the code-heavy rows a prose rule would drop.
    """
    rules = rules or QualityRules()
    texts = ["" if t is None else str(t) for t in texts]
    n = len(texts)
    words = [[w.lower() for w in _LETTERS.findall(t)] for t in texts]
    freq = Counter(w for ws in words for w in ws)
    top = {w for w, _ in freq.most_common(rules.function_words)}
    scripts = [_letter_scripts(t) for t in texts]
    corpus_scripts: Counter = Counter()
    for sc in scripts:
        corpus_scripts.update(sc)
    norm = [_normalised(t) for t in texts]
    copies = Counter(norm)
    failed = [
        _rules_failed(t, ws, sc, corpus_scripts, top, copies[k], rules)
        for t, ws, sc, k in zip(texts, words, scripts, norm)
    ]
    gain = np.full(n, np.nan) if order_gain is None else np.asarray(order_gain, float)
    if len(gain) != n:
        raise ValueError(f"got {len(gain)} order gains for {n} documents")
    long_enough = np.array([len(ws) >= rules.min_words_for_rates for ws in words], bool)
    usable = long_enough & np.isfinite(gain)
    threshold = float("nan")
    if usable.any():
        threshold = rules.order_gain_frac * float(np.median(gain[usable]))
        for i in np.flatnonzero(usable & (gain < threshold)):
            failed[i].add("no_word_order")
    is_target = np.zeros(n, bool) if target is None else np.asarray(target, bool)
    disabled = _asked_for(failed, is_target) if is_target.any() else {}
    reasons = [
        "" if t else next((r for r in RULES if r in f and r not in disabled), "")
        for f, t in zip(failed, is_target)
    ]
    dominant = corpus_scripts.most_common(1)[0][0] if corpus_scripts else "UNKNOWN"
    return QualityResult(
        reasons=reasons,
        order_gain=gain,
        order_gain_threshold=threshold,
        dominant_script=dominant,
        function_words=sorted(top, key=lambda w: (-freq[w], w)),  # ties by name: stable
        disabled=disabled,
    )


def shuffle_words(text: str, rng: random.Random) -> str:
    """`text` with its whitespace-separated words in a random order."""
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def order_gains(
    losses_of: object,
    texts: Sequence[str],
    fits: Sequence[str] | None = None,
    shuffles: int = 2,
    seed: int = 0,
    base: np.ndarray | None = None,
) -> np.ndarray:
    """Nats per token the proxy loses when each document's words are shuffled.

    `losses_of(list_of_texts) -> np.ndarray` gives the proxy's mean token loss per text; `fits`
    are the parts of `texts` that fit in the proxy's context (so the shuffled and the original
    text cover the same words); the gain is mean(shuffled losses) - original loss (`base`, when
    the caller has it already).
    """
    fits = list(texts if fits is None else fits)
    rng = random.Random(seed)
    base = np.asarray(losses_of(fits) if base is None else base, float)
    shuffled = [
        np.asarray(losses_of([shuffle_words(t, rng) for t in fits]), float) for _ in range(shuffles)
    ]
    return np.mean(shuffled, axis=0) - base


def mean_rank(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean of the two scores' ranks in [0, 1] (1 = highest) over rows where both are finite;
    NaN elsewhere. Combines a value with a perplexity score without mixing their units."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    out = np.full(len(a), np.nan)
    n = int(ok.sum())
    if n:
        ra = np.argsort(np.argsort(a[ok], kind="stable"), kind="stable")
        rb = np.argsort(np.argsort(b[ok], kind="stable"), kind="stable")
        out[ok] = (ra + rb) / (2.0 * max(1, n - 1))
    return out
