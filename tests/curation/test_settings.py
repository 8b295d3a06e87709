"""The shared setting rules (curation/settings.py) and the stage models that apply them."""

from __future__ import annotations

import argparse

import pytest

from curation.errors import UsageError
from curation.settings import RULES, Rule, SettingError, check_value, resolve_keep, validate_keep


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
    assert check_value("prune", "clusters", None) is None
    assert check_value("prune", "clusters", 3) == 3
    for bad in (0, -1, True, 2.5, "4"):
        with pytest.raises(SettingError, match="clusters: "):
            check_value("prune", "clusters", bad)


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
        ("clusters", 0, "clusters: must be >= 1"),
        ("by", "doc", "--by"),
        ("target_frac", 1.0, r"target_frac: must be in \(0, 1\)"),
        ("min_chars", -1, "min_chars: must be >= 0"),
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
        ({"seeds": 0}, "seeds: must be >= 1"),
        ({"steps": 0}, "steps"),
        ({"baselines": "x"}, "x"),
        ({"preset": "gpt3"}, "preset must be one of tiny, cpu-small, gpt2, got 'gpt3'"),
    ):
        with pytest.raises(UsageError, match=words):
            VerifyArgs(curated="k", full="f", target="t", out="o", **kw)


# ----------------------------------------------------------------------------- one rule per setting


def _cli_options(stage: str) -> dict[str, argparse.Action]:
    """The options of `adamshap <stage>` by their dest (the stage model's field)."""
    from flows import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[stage]._actions if a.option_strings}


def _bad_texts(rule: Rule) -> list[str]:
    """A bad value of each kind the rule refuses, as typed on a command line (and in YAML)."""
    bad = ["x"]  # not of the rule's kind
    step = 1 if rule.integer else 0.5
    if rule.low is not None:
        bad.append(str(rule.low - step if not rule.integer else int(rule.low) - 1))
    if rule.high is not None:
        bad.append(str(rule.high + step))
    return bad


CASES = [
    (stage, name, text)
    for stage in ("score", "prune", "verify")
    for name, rule in RULES[stage].items()
    if name in _cli_options(stage)
    for text in _bad_texts(rule)
]


@pytest.mark.parametrize(("stage", "name", "text"), CASES, ids=lambda v: str(v))
def test_a_bad_value_gets_the_same_words_from_the_cli_and_a_manifest(
    stage, name, text, tmp_path, capsys
):
    import yaml

    from curation.errors import ManifestError
    from curation.manifest import load_manifest
    from flows import cli

    flag = _cli_options(stage)[name].option_strings[0]
    corpus, target = tmp_path / "c.jsonl", tmp_path / "t.jsonl"
    corpus.touch(), target.touch()  # a range the stage model checks comes after the paths
    base = {
        "score": ["score", str(corpus), "--target", str(target), "--out", str(tmp_path / "r")],
        "prune": ["prune", str(corpus), "--out", str(tmp_path / "p")],
        "verify": [
            *("verify", "--curated", str(corpus), "--full", str(corpus)),
            *("--target", str(target), "--out", str(tmp_path / "v")),
        ],
    }[stage]
    assert cli.main([*base, flag, text]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    prefix = f"adamshap {stage}: error: "
    assert line.startswith(prefix), line
    said = line.removeprefix(prefix).removeprefix("argument ")
    assert said.startswith(f"{flag}: "), said
    problem = said.removeprefix(f"{flag}: ")

    doc = {
        "sources": [{"name": "a", "files": ["c.jsonl"], "licence": "CC0"}],
        "target": {"file": "t.jsonl"},
        "run": {stage: {name: yaml.safe_load(text)}},
    }
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ManifestError) as err:
        load_manifest(path, check_files=False)
    assert str(err.value) == f"{path}: run.{stage}.{name}: {problem}"
    # and the stage model, from Python: the field's name and the same words
    with pytest.raises(SettingError) as err2:
        check_value(stage, name, yaml.safe_load(text))
    assert str(err2.value) == f"{name}: {problem}"


def test_every_numeric_option_is_typed_by_its_rule():
    """The CLI checks a stage setting with its rule, not with a range of its own."""
    for stage, rules in RULES.items():
        options = _cli_options(stage)
        for name, rule in rules.items():
            if name not in options:
                continue
            parse = options[name].type
            assert parse.__qualname__ == "Rule.cli_type.<locals>.parse", (stage, name)
            cells = dict(zip(parse.__code__.co_freevars, parse.__closure__, strict=True))
            assert cells["self"].cell_contents is rule, (stage, name)


def test_the_manifest_checks_prune_and_verify_settings_up_front():
    from curation.errors import ManifestError
    from curation.manifest import check_run_settings

    for run, words in (
        ({"clusters": 0}, "run.clusters: must be >= 1, got 0"),
        ({"prune": {"dedup_jaccard": 2}}, r"run.prune.dedup_jaccard: must be in \[0, 1\], got 2"),
        ({"verify": {"steps": "ten"}}, "run.verify.steps: not an integer: 'ten'"),
        ({"n_evals": 0}, "run.n_evals: must be >= 1, got 0"),
        ({"epochs": 0}, r"run.epochs \(verify\): must be >= 1, got 0"),
        ({"keep": 1.5}, r"run.keep: --keep must be in \(0, 1\]"),
        ({"prune": {"by": "doc"}}, "run: --by must be one of row, source"),
        ({"verify": {"baselines": ["coin"]}}, "run: unknown baseline"),
        ({"preset": "huge"}, "run: preset must be one of tiny, cpu-small, gpt2, got 'huge'"),
    ):
        with pytest.raises(ManifestError, match=words):
            check_run_settings(run)
    check_run_settings({"score": {"epochs": 0}, "clusters": 4, "verify": {"steps": 10}})
    check_run_settings({"max_grad_norm": None, "floor": 0, "seed": -3})


def test_rule_words():
    assert RULES["score"]["seq_len"].problem(1) == (
        "must be >= 2 (one input and one target token), got 1"
    )
    assert RULES["score"]["lr"].problem(float("nan")) == "must be a finite number > 0, got nan"
    assert RULES["prune"]["target_frac"].problem(1) == "must be in (0, 1), got 1"
    assert RULES["score"]["epochs"].problem(True) == (
        "not an integer: True (must be >= 0 (0 = warm start only, nothing scored))"
    )
    assert RULES["verify"]["steps"].problem(None) is None
    assert RULES["score"]["seed"].problem(-1) is None and RULES["score"]["seed"].parse("7") == 7


def test_word_valued_settings_have_one_list_each():
    from curation import devices, prune
    from curation import settings as s
    from flows.cli import build_parser

    assert s.check_choice("--by", "row", s.PRUNE_BY) == "row"
    with pytest.raises(UsageError, match=r"--by must be one of row, source, got 'doc'"):
        s.check_choice("--by", "doc", s.PRUNE_BY)
    assert prune.RANK_BY is s.RANK_BY and devices.PRECISIONS is s.PRECISIONS
    choices = {}
    parser = build_parser()
    for sub in parser._subparsers._group_actions[0].choices.values():
        for action in sub._actions:
            if action.choices is not None and action.option_strings:
                choices.setdefault(action.option_strings[0], set()).add(tuple(action.choices))
    assert choices["--rank-by"] == {s.RANK_BY} and choices["--by"] == {s.PRUNE_BY}
    assert choices["--on-bad-rows"] == {s.ON_BAD_ROWS} and choices["--precision"] == {s.PRECISIONS}
