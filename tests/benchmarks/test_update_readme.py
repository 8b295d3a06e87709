"""Copying benchmark tables into the README: image links still resolve from the README."""

from __future__ import annotations

from benchmarks.update_readme import rebase_images


def test_relative_images_are_rebased_and_others_left_alone() -> None:
    body = (
        "text [a link](other.md)\n"
        "![curves](pruning_pydocs.png)\n"
        "![web](https://example.org/x.png) ![abs](/tmp/y.png)"
    )
    out = rebase_images(body, "benchmarks/results/regime2400")
    assert "![curves](benchmarks/results/regime2400/pruning_pydocs.png)" in out
    assert "[a link](other.md)" in out  # not an image
    assert "![web](https://example.org/x.png)" in out and "![abs](/tmp/y.png)" in out
