"""The instruction mixture: one source per task, a shuffled-response and a truncated source."""

from __future__ import annotations

import pytest

from curation import instruct_corpus as ic
from curation.corpus import read_corpus
from curation.demo_corpus import missing_inputs

pytestmark = pytest.mark.skipif(
    bool(missing_inputs()), reason="the demo's Debian packages are not installed"
)
PER = 30


@pytest.fixture(scope="module")
def frame():
    return ic.instruct_frame(per_source=PER, seed=0)


@pytest.fixture(scope="module")
def true_pairs():
    return {t: set(ic.READERS[t]()) for t in ic.TASKS}


def test_sources_sizes_and_task_rows_are_real_pairs(frame, true_pairs):
    counts = dict(frame.group_by("source").len().iter_rows())
    assert counts == {s: PER for s in ic.SOURCES}
    assert frame["id"].n_unique() == frame.height
    for r in frame.filter(frame["source"].is_in(list(ic.TASKS))).iter_rows(named=True):
        assert r["task"] == r["source"]
        assert (r["prompt"], r["response"]) in true_pairs[r["task"]]
        assert r["text"] == f"{r['prompt']}\n{r['response']}"


def test_shuffled_rows_carry_another_prompts_response(frame, true_pairs):
    every = set().union(*true_pairs.values())
    responses = {r for _, r in every}
    rows = frame.filter(frame["source"] == "shuffled")
    for r in rows.iter_rows(named=True):
        assert (r["prompt"], r["response"]) not in every
        assert r["response"] in responses
    # the prompts were drawn from several tasks
    assert rows["task"].n_unique() >= 3


def test_truncated_rows_are_prefixes_of_their_true_response(frame, true_pairs):
    for r in frame.filter(frame["source"] == "truncated").iter_rows(named=True):
        full = [resp for p, resp in true_pairs[r["task"]] if p == r["prompt"]]
        assert full, r["prompt"]
        assert any(
            f.startswith(r["response"]) and len(f) > len(r["response"]) for f in full
        ) or any(len(f.split()) <= 2 and f == r["response"] for f in full)


def test_written_file_reads_back_as_instruction_data(frame, tmp_path):
    path = ic.build_instruct_corpus(tmp_path / "i.jsonl", per_source=PER, seed=0)
    df = read_corpus(path).df
    assert df.height == frame.height
    assert df["response"].to_list() == frame["response"].to_list()
    again = ic.instruct_frame(per_source=PER, seed=0)
    assert again.equals(frame)
