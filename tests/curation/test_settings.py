"""The shared setting rules (curation/settings.py) and the stage models that apply them."""

from __future__ import annotations

import argparse

import pytest

from curation.errors import UsageError
from curation.settings import resolve_keep, validate_clusters, validate_keep


def test_keep_rule():
    assert validate_keep("0.5") == 0.5 and validate_keep(1) == 1.0
    for bad in (0, 1.5, -0.1, float("nan"), "abc", None):
        with pytest.raises(UsageError, match="--keep"):
            validate_keep(bad)


def test_resolve_keep_prefers_the_option_then_the_manifest_then_the_default():
    assert resolve_keep(0.4, {"keep": 0.9}, "m.yaml") == 0.4
    assert resolve_keep(None, {"keep": 0.9}, "m.yaml") == 0.9
    assert resolve_keep(None, {}, "m.yaml") == 0.7
    with pytest.raises(UsageError, match=r"m.yaml: run.keep: --keep must be in \(0, 1\]"):
        resolve_keep(None, {"keep": 2}, "m.yaml")
    with pytest.raises(UsageError, match="m.yaml: --keep: "):
        resolve_keep(0, {}, "m.yaml")


def test_clusters_rule():
    assert validate_clusters(None) is None and validate_clusters(3) == 3
    for bad in (0, -1, True, 2.5, "4"):
        with pytest.raises(UsageError, match="positive integer"):
            validate_clusters(bad)


def test_the_cli_keep_type_is_the_same_rule():
    from flows.cli import keep_fraction

    assert keep_fraction("0.25") == 0.25
    for text in ("0", "1.5", "nan"):
        with pytest.raises(argparse.ArgumentTypeError, match=rf"must be in \(0, 1\], got {text}"):
            keep_fraction(text)
        with pytest.raises(UsageError):
            validate_keep(text)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("keep", 0, "--keep"),
        ("clusters", 0, "--clusters"),
        ("by", "doc", "--by"),
        ("target_frac", 1.0, "--target-frac"),
        ("min_chars", -1, "--min-chars"),
        ("rank_by", "loss", "--rank-by"),
    ],
)
def test_prune_args_validate_each_setting(field, value, words):
    from curation.prune import PruneArgs

    assert PruneArgs(corpus="c.jsonl").validate() == 0.7
    with pytest.raises(UsageError, match=words):
        PruneArgs(corpus="c.jsonl", **{field: value}).validate()


def test_verify_args_are_checked_on_construction():
    from curation.verify import VerifyArgs

    for kw, words in (
        ({"seeds": 0}, "--seeds"),
        ({"steps": 0}, "steps"),
        ({"baselines": "x"}, "x"),
    ):
        with pytest.raises(UsageError, match=words):
            VerifyArgs(curated="k", full="f", target="t", out="o", **kw)
