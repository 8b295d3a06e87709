"""Quality rules (curation/quality.py): each rule fires on the text it names and passes real text."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import numpy as np
import pytest

from curation.quality import RULES, QualityRules, check_quality, order_gains, shuffle_words
from tests.fixtures import fixture_rows

CLEAN = (
    "The cat sat on the mat and looked at the door of the house for a long time, "
    "waiting for the rain to stop so that it could go out into the garden again."
)


def _corpus(extra: list[str]) -> list[str]:
    """Forty clean English sentences (varied) plus `extra`."""
    rng = random.Random(0)
    base = CLEAN.split()
    out = []
    for i in range(40):
        words = list(base)
        words[rng.randrange(len(words))] = f"word{i}"
        out.append(" ".join(words))
    return out + extra


def test_clean_text_passes_every_text_rule() -> None:
    res = check_quality(_corpus([]))
    assert not res.flagged.any()
    assert res.dominant_script == "LATIN"
    assert {"the", "for", "and"} <= set(res.function_words)


@pytest.mark.parametrize(
    ("junk", "rule"),
    [
        ("too short to learn from", "too_short"),
        (
            "Τηε ςατ σατ ον τηε ματ ανδ λοοκεδ ατ τηε δοορ οφ τηε ηουσε φορ α λονγ τιμε ωαιτινγ",
            "minority_script",
        ),
        (
            "qwx zzv plok trem vask brin olu fet gram spon dil wu kest prab lom nud eft",
            "no_function_words",
        ),
        (
            "the " + " ".join("x" * 20 + str(i) for i in range(10)) + " of and a to",
            "long_words",
        ),
        (" ".join(f"{i * 3.25:.2f} {i} -{i}.5" for i in range(12)) + " the of", "few_letter_words"),
        ("\n".join(["the cat sat on the mat and looked at the door"] * 4), "repeated_lines"),
    ],
)
def test_each_text_rule_fires_on_its_junk(junk: str, rule: str) -> None:
    # the toy corpus has ~30 distinct words: its 10 most frequent stand for the function words
    res = check_quality(_corpus([junk]), QualityRules(function_words=10))
    assert res.reasons[-1] == rule
    assert not res.flagged[:-1].any()
    assert res.counts()[rule] == 1 and list(res.counts()) == list(RULES)


_RULE = "+" + "-" * 30 + "+" + "-" * 40 + "+"
TABLE = "\n".join(
    ["The syslog levels of the module are listed below:", ""]
    + [
        line
        for name, meaning in (
            ("Constant", "Meaning"),
            ("LOG_ERR", "error level"),
            ("LOG_WARNING", "warning level"),
            ("LOG_INFO", "info level"),
        )
        for line in (_RULE, f"| {name:<28} | {meaning:<38} |")
    ]
    + [_RULE]
)
DOCTEST = """One client can access the server as follows::

>>> from managers import BaseManager
>>> m = BaseManager(address=('foo.bar.org', 50000))
>>> m.connect()

Another client can also use it::

>>> from managers import BaseManager
>>> m = BaseManager(address=('foo.bar.org', 50000))
>>> m.connect()
>>> print(m.get_queue())
"""


@pytest.mark.parametrize(
    "doc",
    [
        TABLE,  # rule lines are not words and not lines of text
        DOCTEST,  # a session shown twice: 3 of 8 lines repeat (Gopher's 0.3 would drop it)
        "Small things make base men proud. -- William Shakespeare, Henry VI",  # 10 words
    ],
)
def test_structured_and_short_clean_text_passes(doc: str) -> None:
    # Python docs repeat lines and draw tables by design; a short quote can hold no function
    # word by chance: none of these may be dropped as junk (the demo lost such documents)
    res = check_quality(_corpus([doc]), QualityRules(function_words=10))
    assert res.reasons[-1] == ""


def test_repeated_template_drops_every_copy_but_not_fewer_copies() -> None:
    t = "Click here to subscribe to our newsletter! Page {n} of 20. All rights reserved by us."
    five = [t.format(n=i) for i in range(5)]  # digits differ: still one template
    res = check_quality(_corpus(five))
    assert [r for r in res.reasons[-5:]] == ["repeated_text"] * 5
    res4 = check_quality(_corpus(five[:4]))
    assert not res4.flagged.any()
    assert check_quality(_corpus(five), QualityRules(repeat_min_copies=6)).flagged.sum() == 0


def test_majority_script_of_a_mixed_corpus_is_not_minority() -> None:
    greek = "Τηε ςατ σατ ον τηε ματ ανδ λοοκεδ ατ τηε δοορ οφ τηε ηουσε φορ α λονγ τιμε ωαιτινγ"
    res = check_quality(_corpus([greek] * 1) + [greek + f" {i}" for i in range(3)] * 4)
    # 13 Greek documents out of 53: a real share of the corpus, kept by this rule
    assert "minority_script" not in res.reasons


def test_word_order_rule_uses_the_corpus_median_and_skips_short_documents() -> None:
    texts = _corpus(["the a of"])
    gains = np.full(len(texts), 0.5)
    gains[3] = 0.05  # < 0.2 x median 0.5
    gains[-1] = 0.0  # too few words for the rate rules: not judged on order
    res = check_quality(texts, order_gain=gains)
    assert res.order_gain_threshold == pytest.approx(0.1)
    assert res.reasons[3] == "no_word_order"
    assert res.reasons[-1] == "too_short"
    assert sum(r == "no_word_order" for r in res.reasons) == 1
    with pytest.raises(ValueError, match="order gains"):
        check_quality(texts, order_gain=gains[:-1])


def test_order_gains_is_shuffled_minus_original_loss() -> None:
    """A 'model' that knows one word order: loss = share of adjacent pairs out of order."""
    vocab = {w: i for i, w in enumerate("a b c d e f g h i j k l".split())}

    def losses_of(texts: list[str]) -> np.ndarray:
        out = []
        for t in texts:
            ids = [vocab[w] for w in t.split()]
            out.append(np.mean([b != a + 1 for a, b in zip(ids, ids[1:])]))
        return np.array(out, float)

    ordered = "a b c d e f g h i j k l"
    rng = random.Random(1)
    salad = shuffle_words(ordered, rng)
    g = order_gains(losses_of, [ordered, salad], shuffles=4, seed=0)
    assert g[0] > 0.7  # shuffling destroys almost all of the order it had
    assert abs(g[1]) < 0.35  # a shuffled text has little order left to lose
    assert sorted(shuffle_words(ordered, rng).split()) == sorted(ordered.split())


def test_real_text_is_rarely_flagged_and_synthetic_junk_is() -> None:
    """On the Debian fixture corpus the text rules flag few documents; junk of each kind is."""
    rows = fixture_rows(30)
    texts = [r["text"] for r in rows]
    rng = random.Random(0)
    junk = {
        "minority_script": [
            "".join(
                dict(zip(string.ascii_lowercase, "αβψδεφγηιξκλμνοπ;ρστθωςχυζ")).get(c, c) for c in t
            )
            for t in texts[:3]
        ],
        "no_function_words": [
            " ".join(
                "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))
                for _ in range(60)
            )
            for _ in range(3)
        ],
    }
    all_junk = [t for v in junk.values() for t in v]
    res = check_quality(texts + all_junk)
    clean_flagged = res.flagged[: len(texts)].mean()
    assert clean_flagged < 0.1, [(r, t[:60]) for r, t in zip(res.reasons, texts) if r]
    got = res.reasons[len(texts) :]
    assert got == [k for k, v in junk.items() for _ in v]


@pytest.mark.integration
def test_prune_excludes_quality_failures_with_their_reason(tmp_path: Path) -> None:
    """End to end on real text: junk rows are written to excluded with reason quality:<rule>,
    nothing is lost, the held-out target holds no junk, and --quality off turns it off."""
    from curation.prune import PruneArgs, run_prune

    rows = fixture_rows(12)
    rng = random.Random(0)
    junk = [
        {
            "id": f"junk-{i}",
            "source": "junk",
            "text": " ".join(
                "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))
                for _ in range(60)
            ),
        }
        for i in range(8)
    ]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows + junk))
    n = len(rows) + len(junk)

    def run(out: str, **kw: object) -> tuple[dict, list[dict], list[dict]]:
        o = run_prune(PruneArgs(corpus=str(corpus), keep=0.7, out=str(tmp_path / out), **kw))
        summary = json.loads((o / "prune.json").read_text())["summary"]
        kept = [json.loads(x) for x in (o / "kept.jsonl").read_text().splitlines()]
        exc = [json.loads(x) for x in (o / "excluded.jsonl").read_text().splitlines()]
        target_file = Path(summary["target"])  # held out here, or the scoring run's
        target = [json.loads(x) for x in target_file.read_text().splitlines()]
        assert len(kept) + len(exc) == n
        assert not any(r["id"].startswith("junk") for r in target)
        return summary, kept, exc

    summary, kept, exc = run("on", progress=False)
    # no --target: the target is a slice of this corpus, so the budget is filled by perplexity
    assert summary["ranked_by"].startswith("perplexity")
    reasons = {r["id"]: r["reason"] for r in exc}
    assert all(reasons.get(j["id"]) == "quality:no_function_words" for j in junk)
    q = summary["quality"]
    assert q["enabled"] and q["flagged"]["no_function_words"] == 8 and q["n_flagged"] >= 8
    assert summary["reasons"]["quality:no_function_words"] == 8
    html = (tmp_path / "on" / "prune_report.html").read_text()
    assert "quality rules excluded" in html
    summary_off, _, exc_off = run("off", progress=False, quality=False, scores=summary["scores"])
    assert not any(r["reason"].startswith("quality:") for r in exc_off)
    assert summary_off["quality"] == {"enabled": False, "note": "off (--quality off)"}
    assert summary_off["ranked_by"] == "value (ckpt)"  # the scoring run's target file: values
    summary_v, _, _ = run("v", progress=False, rank_by="value")
    assert summary_v["ranked_by"] == "value (ckpt)" and summary_v["quality"]["enabled"]


def test_held_out_target_is_drawn_from_rows_that_pass() -> None:
    from curation.prune import holdout_target

    n = 200
    eligible = np.ones(n, bool)
    eligible[::3] = False
    mask = holdout_target(n, 0.1, seed=0, eligible=eligible)
    assert mask.sum() == 20 and not (mask & ~eligible).any()
    # nothing flagged: the same draw as without the rules
    assert (holdout_target(n, 0.1, 0, np.ones(n, bool)) == holdout_target(n, 0.1, 0)).all()


def test_prune_args_quality_defaults_and_bad_min_chars() -> None:
    from curation.errors import UsageError
    from curation.prune import PruneArgs, _quality_rules

    args = PruneArgs(corpus="c.jsonl")
    assert args.quality is True and _quality_rules(args).min_chars == 50
    with pytest.raises(UsageError, match="min_chars: must be >= 0, got -1"):
        _quality_rules(PruneArgs(corpus="c.jsonl", min_chars=-1))


def test_rank_by_auto_is_perplexity_only_for_a_self_target_of_plain_text() -> None:
    from curation.errors import UsageError
    from curation.prune import resolve_rank_by

    assert resolve_rank_by("auto", held_out=True, plain=True) == "perplexity"
    assert resolve_rank_by("auto", held_out=False, plain=True) == "value"
    assert resolve_rank_by("value+dsir", held_out=False, plain=True) == "value+dsir"
    assert resolve_rank_by("value+perplexity", held_out=False, plain=True) == "value+perplexity"
    assert resolve_rank_by("auto", held_out=True, plain=False) == "value"
    assert resolve_rank_by("auto", held_out=False, plain=False) == "value"
    assert resolve_rank_by("value", held_out=True, plain=True) == "value"
    for name in ("perplexity", "value+perplexity", "value+dsir"):
        with pytest.raises(UsageError, match="plain-text"):
            resolve_rank_by(name, held_out=True, plain=False)
    with pytest.raises(UsageError, match="--rank-by"):
        resolve_rank_by("loss", held_out=True, plain=True)


def test_mean_rank_averages_ranks_over_rows_where_both_are_finite() -> None:
    from curation.quality import mean_rank

    a = np.array([0.1, 0.3, np.nan, 0.2, 5.0])
    b = np.array([-3.0, -1.0, -2.0, -2.5, -9.0])
    r = mean_rank(a, b)
    assert np.isnan(r[2])
    # ranks among the 4 finite rows: a -> [0, 2, -, 1, 3], b -> [1, 3, -, 2, 0]; / (2 * 3)
    assert np.allclose(r[[0, 1, 3, 4]], [1 / 6, 5 / 6, 3 / 6, 3 / 6])


def test_ranking_scores_ranks_among_rows_that_pass() -> None:
    from curation.prune import ranking_scores

    values = np.array([np.nan, 1.0, 2.0, 3.0])  # row 0: a target
    losses = np.array([1.0, 3.0, 2.0, 1.0])
    assert ranking_scores("value", values, losses, None) is values
    assert np.allclose(ranking_scores("perplexity", values, losses, None)[1:], [-3, -2, -1])
    both = ranking_scores("value+perplexity", values, losses, ["", "", "", "quality:x"][:4])
    assert np.isnan(both[0]) and np.isnan(both[3]) and both[2] > both[1]
    dsir = np.array([9.0, 5.0, -1.0, 0.0])  # row 1 most target-like, row 2 least
    mixed = ranking_scores("value+dsir", values, None, ["", "", "", ""], dsir)
    # ranks among rows 1-3: value -> [0, 1, 2], dsir -> [2, 0, 1]; mean / 2
    assert np.isnan(mixed[0]) and np.allclose(mixed[1:], [0.5, 0.25, 0.75])


def test_a_rule_the_target_fails_as_often_as_the_corpus_is_not_applied() -> None:
    """A target of short texts asks for short texts: too_short is not applied, others are."""
    salad = "qwx zzv plok trem vask brin olu fet gram spon dil wu kest prab lom nud eft"
    texts = _corpus(["short one here", salad]) + ["short target", "another short"]
    target = np.zeros(len(texts), bool)
    target[-2:] = True
    res = check_quality(texts, QualityRules(function_words=10), target=target)
    assert "too_short" in res.disabled and "no_function_words" not in res.disabled
    assert res.reasons[-4] == "" and res.reasons[-3] == "no_function_words"
    assert res.reasons[-2:] == ["", ""]  # target rows are judged, never excluded
    plain = check_quality(texts[:-2], QualityRules(function_words=10))
    assert plain.reasons[-2] == "too_short" and not plain.disabled
