"""The adam-vs-sgd profile: phases are seen, the scorer is left as found (timings never asserted)."""

from __future__ import annotations

from adamshap_core import scorer as scorer_mod
from benchmarks import adam_vs_sgd


def test_measure_times_every_phase_and_restores_the_scorer():
    saved = scorer_mod.record_function
    a = adam_vs_sgd.Args(
        preset="tiny", seq_len=16, batch_size=4, val_size=2, vocab_size=64,
        rounds=2, steps_per_round=1, warmup=1,
    )  # fmt: skip
    res = adam_vs_sgd.measure(a)
    assert scorer_mod.record_function is saved
    for e in adam_vs_sgd.RUNS:
        phases = res["rounds"][e]["phases_ms"]
        assert set(phases) == {*adam_vs_sgd.PHASES, "other"}
        # every labelled phase of a sgd/adam step ran, so each got some time
        assert all(phases[p] > 0 for p in adam_vs_sgd.PHASES), (e, phases)
        assert len(res["rounds"][e]["raw_s"]) == 2
    assert len(res["ratio_rounds"]) == 2 and res["ratio"] > 0
    assert len(res["control_rounds"]) == 2 and res["control_ratio"] > 0
    assert set(res["extra_ms"]) == {*adam_vs_sgd.PHASES, "other", "step"}
    md = adam_vs_sgd.markdown({"before": res, "after": res})
    assert "| phase | before | after |" in md
    assert f"**{res['ratio']:.3f}**" in md
