"""The rule that picks the default contraction from the speed/fidelity table."""

from __future__ import annotations

from benchmarks.speed_fidelity import SpeedArgs, choose


def _row(ratio: float, r: float, stress: float | None = None) -> dict:
    row = {"ratio_vs_plain": ratio, "r_vs_exact": r}
    if stress is not None:
        row["stress_min_r"] = stress
    return row


def test_fastest_faithful_setting_wins():
    rows = {
        "plain": {"ratio_vs_plain": 1.0},
        "adam exact": _row(0.43, 1.0),
        "adam vge4": _row(0.74, 0.56),  # fast but unfaithful
        "adam lowrank r16": _row(0.60, 0.9999, 0.995),
    }
    assert choose(rows, SpeedArgs()) == "adam lowrank r16"


def test_flat_spectrum_failure_disqualifies():
    rows = {
        "adam exact": _row(0.43, 1.0),
        "adam lowrank r8": _row(0.60, 0.9999, 0.954),
    }
    assert choose(rows, SpeedArgs()) == "adam exact"


def test_ties_within_noise_go_to_the_most_faithful():
    rows = {
        "adam exact": _row(0.436, 1.0),
        "adam lowrank r16": _row(0.442, 0.99998, 0.993),  # 1.4% faster: inside the 2% band
        "adam2 exact": _row(0.9, 1.0),  # another estimator: never chosen for adam
    }
    assert choose(rows, SpeedArgs()) == "adam exact"
    assert choose(rows, SpeedArgs(noise=0.0)) == "adam lowrank r16"
    assert choose(rows, SpeedArgs(), "adam2") == "adam2 exact"


def test_table_shows_live_tensor_and_rss_memory():
    from benchmarks.speed_fidelity import markdown

    rows = {"plain": {"seconds_per_step": 0.3, "ratio_vs_plain": 1.0}}
    rows["adam exact"] = {**_row(0.43, 1.0), "seconds_per_step": 0.7}
    rows["adam exact"].update(median_step_r=1.0, min_step_r=1.0)
    res = {
        "rows": rows,
        "memory": {
            "plain": {"ratio_vs_plain": 1.0, "tensor_ratio_vs_plain": 1.0},
            "adam exact": {"ratio_vs_plain": 1.31, "tensor_ratio_vs_plain": 1.14},
        },
        "fastest_ok": "adam exact",
        "meets_goal": False,
        "profiles": {},
    }
    env = {"threads": 2, "cpu_count": 2}
    md = markdown(res, SpeedArgs(), env)
    assert "peak mem x plain (tensors / RSS)" in md
    assert "| adam exact | 0.700 | 0.430 | 1.0000 | 1.0000 | 1.0000 | – | 1.14 / 1.31 |" in md
    assert "goal 0.95: not met" in md
