"""Manifests: safe loading, confined paths, checksums, build hints, materialising."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from curation.corpus import corpus_sha256, read_corpus, write_corpus
from curation.errors import ManifestError
from curation.manifest import load_manifest, materialise_manifest

REPO = Path(__file__).resolve().parents[2]


def _corpus(path: Path, sources: dict[str, int]) -> Path:
    rows = [
        {"id": f"{s}-{i:03d}", "source": s, "text": f"document {i} of source {s}."}
        for s, n in sources.items()
        for i in range(n)
    ]
    return write_corpus(pl.DataFrame(rows), path)


def _manifest(folder: Path, doc: dict) -> Path:
    path = folder / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _doc(**over) -> dict:
    doc = {
        "name": "t",
        "sources": [
            {"name": "a", "files": ["data/c.jsonl"], "licence": "CC0"},
            {"name": "b", "files": ["data/c.jsonl"], "licence": "CC0"},
        ],
        "target": {"holdout": {"sources": ["b"], "fraction": 0.2, "seed": 3}},
        "run": {"preset": "tiny", "seq_len": 64},
    }
    doc.update(over)
    return doc


def test_load_and_materialise_holdout(tmp_path):
    data = _corpus(tmp_path / "data" / "c.jsonl", {"a": 10, "b": 20})
    before = corpus_sha256(data)
    m = load_manifest(_manifest(tmp_path, _doc()))
    assert [s.name for s in m.sources] == ["a", "b"]
    assert m.sources[0].files == [tmp_path / "data" / "c.jsonl"]
    assert m.run == {"preset": "tiny", "seq_len": 64}
    corpus, target = materialise_manifest(m, tmp_path / "out")
    c, t = read_corpus(corpus).df, read_corpus(target).df
    assert t.height == 4 and set(t["source"]) == {"b"}
    assert c.height == 26 and not set(c["id"]) & set(t["id"])
    assert sorted(c["id"].to_list() + t["id"].to_list()) == sorted(read_corpus(data).df["id"])
    # same seed, same split; other seed, other split
    again = materialise_manifest(load_manifest(tmp_path / "m.yaml"), tmp_path / "out2")[1]
    assert read_corpus(again).df["id"].to_list() == t["id"].to_list()
    doc = _doc(target={"holdout": {"sources": ["b"], "n": 4, "seed": 4}})
    other = materialise_manifest(load_manifest(_manifest(tmp_path, doc)), tmp_path / "o3")[1]
    assert read_corpus(other).df["id"].to_list() != t["id"].to_list()
    assert corpus_sha256(data) == before


def test_target_file_and_field_renames(tmp_path):
    rows = [{"key": f"x{i}", "body": f"text {i}"} for i in range(5)]
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _corpus(tmp_path / "t.jsonl", {"tgt": 3})
    doc = _doc(
        sources=[
            {
                "name": "web",
                "files": ["x.jsonl"],
                "licence": "MIT",
                "fields": {"id": "key", "source": None},
                "text_field": "body",
            }
        ],
        target={"file": "t.jsonl", "sha256": corpus_sha256(tmp_path / "t.jsonl")},
    )
    m = load_manifest(_manifest(tmp_path, doc))
    corpus, target = materialise_manifest(m, tmp_path / "out")
    c = read_corpus(corpus).df
    assert c["source"].unique().to_list() == ["web"] and c.height == 5
    assert read_corpus(target).df.height == 3


@pytest.mark.parametrize(
    "bad_path", ["/etc/passwd", "../outside.jsonl", "data/../../outside.jsonl", "~/x.jsonl"]
)
def test_paths_may_not_escape_the_manifest_folder(tmp_path, bad_path):
    folder = tmp_path / "m"
    folder.mkdir()
    doc = _doc()
    doc["sources"][1]["files"] = [bad_path]
    with pytest.raises(ManifestError, match=r"sources\[1\] \(b\)\.files\[0\]"):
        load_manifest(_manifest(folder, doc), check_files=False)
    with pytest.raises(ManifestError, match="target.file"):
        load_manifest(_manifest(folder, _doc(target={"file": bad_path})), check_files=False)


def test_checksum_mismatch_names_both_hashes(tmp_path):
    data = _corpus(tmp_path / "data" / "c.jsonl", {"a": 3, "b": 3})
    good = corpus_sha256(data)
    doc = _doc()
    doc["sources"][0]["sha256"] = good
    doc["sources"][1]["sha256"] = {"data/c.jsonl": good}
    load_manifest(_manifest(tmp_path, doc))
    doc["sources"][0]["sha256"] = "0" * 64
    with pytest.raises(ManifestError) as exc:
        load_manifest(_manifest(tmp_path, doc))
    msg = str(exc.value)
    assert "0" * 64 in msg and good in msg and "sha256 mismatch" in msg and "restore" in msg


def test_missing_file_gives_build_command(tmp_path):
    doc = _doc()
    for s in doc["sources"]:
        s["build"] = "adamshap corpus build demo --out {file}"
    path = _manifest(tmp_path, doc)
    with pytest.raises(ManifestError, match="create it with: adamshap corpus build demo --out "):
        load_manifest(path)
    m = load_manifest(path, check_files=False)
    ((missing, cmd),) = m.missing_files()
    assert missing == tmp_path / "data" / "c.jsonl"
    assert cmd == f"adamshap corpus build demo --out {missing}"


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned > pwned']\nsources: []\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "change, words",
    [
        ({"sources": "x"}, "sources"),
        ({"sources": [{"name": "a", "files": ["c.jsonl"]}]}, "licence"),
        ({"target": {"holdout": {"sources": ["zzz"], "fraction": 0.1}}}, "zzz"),
        ({"target": {"holdout": {"sources": ["a"], "fraction": 1.5}}}, "fraction"),
        ({"target": {"holdout": {"sources": ["a"], "fraction": 0.1, "n": 3}}}, "exactly one"),
        ({"target": {}}, "exactly one of 'file' or 'holdout'"),
        ({"run": [1, 2]}, "run"),
    ],
)
def test_malformed_manifests(tmp_path, change, words):
    with pytest.raises(ManifestError, match=words):
        load_manifest(_manifest(tmp_path, _doc(**change)), check_files=False)
    (tmp_path / "n.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ManifestError, match="mapping"):
        load_manifest(tmp_path / "n.yaml")


def test_unclaimed_sources_and_empty_sources_are_errors(tmp_path):
    _corpus(tmp_path / "data" / "c.jsonl", {"a": 3, "b": 3, "stray": 2})
    m = load_manifest(_manifest(tmp_path, _doc()))
    with pytest.raises(ManifestError, match="stray"):
        materialise_manifest(m, tmp_path / "out")
    _corpus(tmp_path / "data" / "c.jsonl", {"a": 3})
    with pytest.raises(ManifestError, match="source 'b' has no rows"):
        materialise_manifest(load_manifest(tmp_path / "m.yaml"), tmp_path / "out")


def test_holdout_cannot_take_a_whole_source(tmp_path):
    _corpus(tmp_path / "data" / "c.jsonl", {"a": 3, "b": 2})
    doc = _doc(target={"holdout": {"sources": ["b"], "n": 2}})
    with pytest.raises(ManifestError, match="none to train on"):
        materialise_manifest(load_manifest(_manifest(tmp_path, doc)), tmp_path / "out")


def test_max_docs_per_source(tmp_path):
    _corpus(tmp_path / "data" / "c.jsonl", {"a": 30, "b": 30})
    doc = _doc(run={"max_docs_per_source": 10, "seed": 1})
    corpus, target = materialise_manifest(load_manifest(_manifest(tmp_path, doc)), tmp_path / "o")
    c = read_corpus(corpus).df
    assert c.filter(pl.col("source") == "a").height == 10
    assert c.filter(pl.col("source") == "b").height + read_corpus(target).df.height == 10


def test_demo_manifest_parses():
    m = load_manifest(REPO / "data_manifests" / "demo.yaml", check_files=False)
    assert [s.name for s in m.sources] == [
        "bible",
        "fortunes",
        "wordnet",
        "devil",
        "jargon",
        "pydocs",
    ]
    assert all(s.licence for s in m.sources)
    assert m.target.holdout is not None and m.target.holdout.sources == ["pydocs"]
    assert m.target.holdout.fraction == 0.2
    assert m.run["preset"] == "tiny" and m.run["seq_len"] == 128
    f = m.sources[0].files[0]
    assert f == REPO / "data_manifests" / "generated" / "demo_corpus.jsonl"
    assert m.sources[0].build_command(f) == f"adamshap corpus build demo --out {f}"


@pytest.mark.parametrize(
    ("run", "words"),
    [
        ({"momentum_window": -1}, r"run.momentum_window: must be >= 0 \(0 = off\), got -1"),
        ({"score": {"momentum_window": -2}}, "got -2"),
        ({"momentum_window": "3"}, "run.momentum_window: not an integer: '3'"),
    ],
)
def test_momentum_window_is_checked_like_the_cli(run, words):
    from curation.manifest import check_run_settings

    with pytest.raises(ManifestError, match=words):
        check_run_settings(run)
    check_run_settings({"momentum_window": 3, "score": {"momentum_window": 0}})
