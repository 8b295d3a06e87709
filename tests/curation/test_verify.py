"""Retrain-to-verify on a tiny corpus: every arm, same steps, files written."""

import json
from pathlib import Path

import numpy as np
import pytest

from curation.verify import VerifyArgs, eval_points, run_verify


def _write(path: Path, rows: list[tuple[str, str, str]]) -> None:
    path.write_text(
        "".join(json.dumps({"id": i, "source": s, "text": t}) + "\n" for i, s, t in rows)
    )


def test_eval_points() -> None:
    assert eval_points(10, 5) == [0, 2, 4, 6, 8, 10]
    assert eval_points(1, 10) == [0, 1]


@pytest.mark.parametrize("unigram", [None, 6.5])
def test_curves_plot_draws_the_unigram_line_when_given(
    tmp_path: Path, monkeypatch, unigram
) -> None:
    from matplotlib.axes import Axes

    from curation.verify import plot_curves

    drawn = []
    real = Axes.axhline
    monkeypatch.setattr(Axes, "axhline", lambda ax, y, **kw: drawn.append(y) or real(ax, y, **kw))
    arm = {"curve_steps": [0, 10], "curve_mean": [7.6, 6.0], "curve_std": [0.0, 0.1]}
    plot_curves({"curated": arm}, tmp_path / "c.png", "t", unigram)
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert drawn == ([] if unigram is None else [6.5])


def test_epoch_order_own_rows_is_the_plain_permutation() -> None:
    from curation.verify import ProxyRun, TrainConfig, epoch_order

    run = ProxyRun(10, TrainConfig(), seed=3, vocab_size=8)
    got = epoch_order(run, 7, 0, np.random.default_rng(3))
    assert (got == np.random.default_rng(3).permutation(7)).all()


def test_epoch_order_coupled_keeps_the_shared_rows_in_one_order() -> None:
    """Two arms that differ by one pool row visit their common rows in the same relative order,
    epoch by epoch; a different seed or epoch gives a different order."""
    from curation.verify import ProxyRun, TrainConfig, epoch_order

    pool = 50
    a_rows = np.arange(0, 40)
    b_rows = np.r_[np.arange(0, 39), 45]  # row 39 swapped for row 45
    runs = {
        k: ProxyRun(10, TrainConfig(), seed=1, vocab_size=8, pool_rows=r, pool_size=pool)
        for k, r in (("a", a_rows), ("b", b_rows))
    }
    rng = np.random.default_rng(0)  # not used by the coupled order
    for epoch in (0, 1):
        oa = epoch_order(runs["a"], 40, epoch, rng)
        ob = epoch_order(runs["b"], 40, epoch, rng)
        assert sorted(oa) == list(range(40)) and sorted(ob) == list(range(40))
        seq_a = [int(a_rows[i]) for i in oa if a_rows[i] < 39]
        seq_b = [int(b_rows[i]) for i in ob if b_rows[i] < 39]
        assert seq_a == seq_b
    first = [int(a_rows[i]) for i in epoch_order(runs["a"], 40, 0, rng)]
    second = [int(a_rows[i]) for i in epoch_order(runs["a"], 40, 1, rng)]
    other_seed = ProxyRun(10, TrainConfig(), seed=2, vocab_size=8, pool_rows=a_rows, pool_size=50)
    assert first != second
    assert first != [int(a_rows[i]) for i in epoch_order(other_seed, 40, 0, rng)]


@pytest.mark.integration
def test_run_verify_tiny(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat dog ran far away".split()
    rows = [(f"d{i}", "s", " ".join(rng.choice(words, 10))) for i in range(24)]
    _write(tmp_path / "full.jsonl", rows)
    _write(tmp_path / "cur.jsonl", rows[:12] + rows[20:22])  # d20, d21 are target docs
    _write(tmp_path / "target.jsonl", rows[20:])
    out = run_verify(
        VerifyArgs(
            curated=str(tmp_path / "cur.jsonl"),
            full=str(tmp_path / "full.jsonl"),
            target=str(tmp_path / "target.jsonl"),
            out=str(tmp_path / "v"),
            seeds=2,
            steps=3,
            seq_len=16,
            batch_size=4,
            vocab_size=300,
            n_evals=3,
            progress=False,
        )
    )
    rep = json.loads((out / "verify.json").read_text())
    assert set(rep["arms"]) == {"curated", "random", "full"}
    assert rep["meta"]["n_curated"] == 12 and rep["meta"]["n_full"] == 20
    for arm in rep["arms"].values():
        assert len(arm["runs"]) == 2 and arm["curve_steps"] == [0, 1, 2, 3]
        assert np.isfinite(arm["target_loss_mean"]) and arm["perplexity_mean"] > 1
    # same seed, same init: every arm starts from the same target loss
    starts = {a["runs"][0]["curve"][0][1] for a in rep["arms"].values()}
    assert len(starts) == 1
    assert (out / "verify.md").exists() and (out / "verify_curve.png").exists()
    page = (out / "verify.html").read_text()  # the same page, the curve embedded
    assert "Lowest evaluation loss" in page and page.count('src="data:image/png;base64,') == 1
    # one token budget by default: every arm's step is batch x seq_len packed tokens
    assert rep["meta"]["pack"] is True and "64 tokens a step" in (out / "verify.md").read_text()


@pytest.mark.integration
def test_shared_order_follows_the_full_corpus_rows_not_the_file_order(tmp_path: Path) -> None:
    """The curated file holds every document of the full corpus in another order: with the
    shared order its arm trains on the very batches of the full arm (equal losses, seed by seed);
    with each arm's own order it does not."""
    rng = np.random.default_rng(1)
    words = "the cat sat on a mat dog ran far away".split()
    rows = [(f"d{i}", "s", " ".join(rng.choice(words, 10))) for i in range(24)]
    _write(tmp_path / "full.jsonl", rows)
    _write(tmp_path / "cur.jsonl", [rows[i] for i in rng.permutation(20)])
    _write(tmp_path / "target.jsonl", rows[20:])

    def finals(coupled: bool) -> tuple[list[float], list[float]]:
        out = run_verify(
            VerifyArgs(
                curated=str(tmp_path / "cur.jsonl"),
                full=str(tmp_path / "full.jsonl"),
                target=str(tmp_path / "target.jsonl"),
                out=str(tmp_path / f"v{coupled}"),
                seeds=2,
                steps=6,
                seq_len=16,
                batch_size=4,
                vocab_size=300,
                n_evals=2,
                baselines=("full",),
                coupled_order=coupled,
                progress=False,
            )
        )
        rep = json.loads((out / "verify.json").read_text())
        assert rep["meta"]["coupled_order"] is coupled and rep["args"]["coupled_order"] is coupled
        return tuple([r["final_loss"] for r in rep["arms"][a]["runs"]] for a in ("curated", "full"))

    cur, full = finals(True)
    assert cur == full
    cur, full = finals(False)
    assert cur != full
