"""The demo corpus built from installed Debian packages."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from curation import demo_corpus
from curation.corpus import read_corpus
from curation.demo_corpus import (
    APT_LINE,
    DEMO_APT_PACKAGES,
    SOURCES,
    DemoPackagesMissing,
    build_demo_corpus,
    missing_inputs,
)
from curation.errors import AdamshapError
from curation.manifest import load_manifest, materialise_manifest

MISSING = missing_inputs()
needs_packages = pytest.mark.skipif(
    bool(MISSING),
    reason=f"demo Debian packages not installed ({len(MISSING)} inputs missing); "
    f"install with: {APT_LINE}",
)


def test_missing_packages_message(monkeypatch, tmp_path):
    monkeypatch.setattr(demo_corpus, "JARGON_TXT", tmp_path / "no-such-jargon.txt.gz")
    with pytest.raises(DemoPackagesMissing) as exc:
        build_demo_corpus(tmp_path / "demo.jsonl")
    assert isinstance(exc.value, AdamshapError)
    assert "\n" + APT_LINE in str(exc.value)
    assert APT_LINE == (
        "apt-get install fortunes fortunes-min fortune-anarchism fortunes-bofh-excuses "
        "fortunes-debian-hints bible-kjv-text bible-kjv wordnet-base dict-devil jargon-text "
        "python3.11-doc"
    )
    assert len(DEMO_APT_PACKAGES) == 11
    assert not (tmp_path / "demo.jsonl").exists()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    if MISSING:
        pytest.skip(f"demo Debian packages not installed; install with: {APT_LINE}")
    out = tmp_path_factory.mktemp("demo") / "demo.jsonl"
    return build_demo_corpus(out, per_source=40, seed=0)


@needs_packages
def test_demo_corpus_shape(demo):
    df = read_corpus(demo).df
    counts = dict(df.group_by("source").len().iter_rows())
    assert counts == {s: 40 for s in SOURCES}
    assert df["id"].n_unique() == df.height
    assert all(re.fullmatch(rf"{s}-\d{{5}}", i) for i, s in df.select("id", "source").iter_rows())
    texts = {s: df.filter(pl.col("source") == s)["text"].to_list() for s in SOURCES}
    assert all(len(t) >= 60 for t in texts["fortunes"])
    assert all(len(t.split("\n")) <= 6 and ": " in t for t in texts["wordnet"])
    assert any("LORD" in t or "God" in t for t in texts["bible"])
    entries = [t for t in texts["devil"] if re.match(r"^[A-Z][A-Z' .-]*, ", t)]
    assert len(entries) >= 36  # "WORD, n. definition"; a few are preface or oddly formatted
    assert 300 < sum(map(len, texts["pydocs"])) / 40 < 1400
    assert 300 < sum(map(len, texts["jargon"])) / 40 < 1400


@needs_packages
def test_demo_corpus_is_deterministic(demo, tmp_path):
    again = build_demo_corpus(tmp_path / "again.jsonl", per_source=40, seed=0)
    assert again.read_bytes() == demo.read_bytes()
    other = build_demo_corpus(tmp_path / "other.jsonl", per_source=40, seed=1)
    assert other.read_bytes() != demo.read_bytes()


@needs_packages
def test_demo_manifest_materialises(demo, tmp_path):
    folder = tmp_path / "manifests"
    (folder / "generated").mkdir(parents=True)
    (folder / "generated" / "demo_corpus.jsonl").write_bytes(demo.read_bytes())
    src = Path(__file__).resolve().parents[2] / "data_manifests" / "demo.yaml"
    (folder / "demo.yaml").write_text(src.read_text())
    m = load_manifest(folder / "demo.yaml")
    corpus, target = materialise_manifest(m, tmp_path / "out")
    t = read_corpus(target).df
    assert t.height == 8 and set(t["source"]) == {"pydocs"}  # 20% of 40
    assert read_corpus(corpus).df.height == 6 * 40 - 8


@needs_packages
def test_a_subset_of_sources_holds_the_same_documents(demo, tmp_path):
    sub = build_demo_corpus(
        tmp_path / "sub.jsonl", per_source=40, seed=0, sources=["pydocs", "devil"]
    )
    got = read_corpus(sub).df
    assert got["source"].unique(maintain_order=True).to_list() == ["devil", "pydocs"]  # std order
    full = read_corpus(demo).df.filter(pl.col("source").is_in(["devil", "pydocs"]))
    assert got.to_dicts() == full.to_dicts()


def test_unknown_source_is_refused_before_any_work(tmp_path):
    with pytest.raises(AdamshapError, match="unknown demo source"):
        build_demo_corpus(tmp_path / "x.jsonl", sources=["devil", "klingon"])
    assert demo_corpus.check_sources(None) == SOURCES
    assert not (tmp_path / "x.jsonl").exists()
