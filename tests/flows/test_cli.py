"""The `adamshap` CLI: help for every command, argument errors, user errors and Ctrl-C exit codes."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from curation.errors import CorpusError, UsageError
from flows import cli

COMMANDS = [
    ["score"], ["report"], ["prune"], ["verify"], ["curate"], ["serve"], ["corpus"],
    ["corpus", "build"],
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_help_for_every_command(command: list[str], capsys):
    assert cli.main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: adamshap " + " ".join(command))


def test_no_command_is_a_usage_error(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prune", "c.jsonl", "--keep", "abc"], "argument --keep: not a number: 'abc'"),
        (["prune", "c.jsonl", "--keep", "0"], "argument --keep: must be in (0, 1], got 0"),
        (["prune", "c.jsonl", "--keep", "1.5"], "argument --keep: must be in (0, 1], got 1.5"),
        (["curate", "m.yaml", "--keep", "-1"], "argument --keep: must be in (0, 1]"),
        (["score", "c.jsonl", "--out", "r"], "the following arguments are required: --target"),
        (["score", "c", "--target", "t", "--out", "r", "--estimators", "adam3"], "adam3"),
        (["score", "c", "--target", "t", "--out", "r", "--epochs", "-1"], "must be >= 0"),
        (["score", "c", "--target", "t", "--out", "r", "--on-bad-rows", "x"], "invalid choice"),
        (["score", "c", "--target", "t", "--out", "r", "--contraction", "x"], "invalid choice"),
        (["score", "c", "--target", "t", "--out", "r", "--rank", "0"], "must be >= 1"),
        (["score", "c", "--target", "t", "--out", "r", "--target-chunk", "-1"], "must be >= 0"),
        (["prune", "c.jsonl", "--clusters", "two"], "not an integer"),
        (["prune", "c.jsonl", "--dedup-eps", "-0.1"], "must be >= 0"),
        (["prune", "c.jsonl", "--estimator", "adam3"], "invalid choice"),
        (["prune", "c.jsonl", "--quality", "maybe"], "invalid choice"),
        (["prune", "c.jsonl", "--min-chars", "-5"], "must be >= 0"),
        (["verify", "--curated", "k", "--full", "f", "--target", "t"], "--out"),
        (["serve", "m.yaml"], "one of the arguments --cron --interval is required"),
        (["serve", "m.yaml", "--cron", "* * * * *", "--interval", "5"], "not allowed with"),
        (["serve", "m.yaml", "--interval", "0"], "must be > 0"),
        (["corpus", "build", "other", "--out", "x"], "invalid choice"),
    ],
)
def test_argument_errors_exit_2_with_a_clear_message(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["score", "missing.jsonl", "--target", "t.jsonl", "--out", "run"],
        ["prune", "missing.jsonl"],
        ["verify", "--curated", "missing", "--full", "f", "--target", "t", "--out", "o"],
        ["curate", "missing.yaml"],
        ["serve", "missing.yaml", "--interval", "5"],
        ["report", "not-a-run"],
    ],
)
def test_missing_inputs_are_user_errors(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"adamshap {argv[0]}: error: ") and "Traceback" not in err
    assert not any(tmp_path.iterdir()), "a failed command left output behind"


def _fake_handler(exc: BaseException):
    def handler(args):
        raise exc

    return handler


def _report_raises(monkeypatch, exc: BaseException) -> None:
    """Make `adamshap report`'s handler (in the subcommand table) raise `exc`."""
    table = tuple(
        (name, summary, text, _fake_handler(exc) if name == "report" else handler, add)
        for name, summary, text, handler, add in cli.SUBCOMMANDS
    )
    monkeypatch.setattr(cli, "SUBCOMMANDS", table)


def test_adamshap_error_prints_message_and_exit_code(monkeypatch, capsys):
    error = CorpusError("c.jsonl", 7, "text", "empty text")
    _report_raises(monkeypatch, error)
    assert cli.main(["report", "x"]) == 2
    err = capsys.readouterr().err
    assert err == f"adamshap report: error: {error}\n"
    assert "line 7" in err and "Traceback" not in err


def test_keyboard_interrupt_exits_130(monkeypatch, capsys):
    _report_raises(monkeypatch, KeyboardInterrupt())
    assert cli.main(["report", "x"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_bugs_are_not_swallowed(monkeypatch):
    _report_raises(monkeypatch, ZeroDivisionError("bug"))
    with pytest.raises(ZeroDivisionError):
        cli.main(["report", "x"])


def test_prune_default_out_and_args_dataclass(monkeypatch, tmp_path):
    import curation.prune as prune

    corpus = tmp_path / "web.jsonl.gz"
    corpus.write_bytes(b"")
    seen = {}

    def fake_run_prune(args):
        seen["args"] = args
        return Path(args.out)

    monkeypatch.setattr(prune, "run_prune", fake_run_prune)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["prune", str(corpus), "--keep", "0.6", "--estimator", "adam-loo"]) == 0
    args = seen["args"]
    assert isinstance(args, prune.PruneArgs)
    assert (args.keep, args.estimator) == (0.6, "adam-loo")
    assert Path(args.out) == tmp_path / "adamshap-prune-web"


def test_score_maps_options_to_score_args(monkeypatch, tmp_path):
    import curation.scoring_run as scoring_run

    for name in ("c.jsonl", "t.jsonl"):
        (tmp_path / name).write_text("")
    seen = {}
    monkeypatch.setattr(scoring_run, "run_scoring", lambda a: seen.setdefault("a", a) and a.out)
    argv = ["score", str(tmp_path / "c.jsonl"), "--target", str(tmp_path / "t.jsonl")]
    argv += ["--out", str(tmp_path / "run"), "--estimators", "adam2,sgd", "--epochs", "2"]
    argv += ["--text-field", "body", "--on-bad-rows", "skip", "--warm-start-steps", "0"]
    argv += ["--contraction", "lowrank", "--rank", "16", "--target-chunk", "4"]
    assert cli.main(argv) == 0
    a = seen["a"]
    assert a.contraction == "lowrank" and a.rank == 16 and a.target_chunk == 4
    assert a.estimators == ("adam2", "sgd") and a.epochs == 2 and a.warm_start_steps == 0
    assert a.fields == {"text": "body"} and a.on_bad_rows == "skip"
    assert a.preset == scoring_run.ScoreArgs.__dataclass_fields__["preset"].default


def test_build_args_rejects_unknown_options():
    import dataclasses

    @dataclasses.dataclass
    class A:
        out_dir: str
        k: int = 1

    assert cli.build_args(A, {"out": "x", "k": None}, cli.OUT_ALIASES) == A(out_dir="x")
    with pytest.raises(UsageError, match="no option"):
        cli.build_args(A, {"out": "x", "zzz": 1}, cli.OUT_ALIASES)


@pytest.mark.parametrize(
    ("path", "stem"),
    [("data/web.jsonl.gz", "web"), ("a.parquet", "a"), ("x/ds", "ds"), ("b.jsonl", "b")],
)
def test_corpus_stem(path, stem):
    assert cli.corpus_stem(path) == stem


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "adamshap"
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "curate" in res.stdout


def test_user_error_log_filter_hides_prefect_tracebacks():
    from flows.quiet import UserErrorFilter

    f = UserErrorFilter()
    try:
        raise UsageError("bad")
    except UsageError:
        rec = logging.LogRecord("prefect.flow_runs", logging.ERROR, "", 0, "x", (), sys.exc_info())
    assert not f.filter(rec)
    rec = logging.LogRecord("p", logging.ERROR, "", 0, "Failed: ManifestError('x')", (), None)
    assert not f.filter(rec)
    rec = logging.LogRecord("p", logging.ERROR, "", 0, "Failed: ValueError('x')", (), None)
    assert f.filter(rec)


def test_transient_errors_are_retried_user_errors_not():
    from flows.curate import is_transient

    assert is_transient(OSError(5, "I/O error"))
    assert is_transient(ConnectionResetError())
    assert not is_transient(FileNotFoundError("x"))
    assert not is_transient(UsageError("x"))
    assert not is_transient(ValueError("x"))


def test_offline_defaults_do_not_override_user_settings(monkeypatch):
    from flows.prefect_env import apply_offline_defaults

    monkeypatch.setenv("DO_NOT_TRACK", "0")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    applied = apply_offline_defaults()
    import os

    assert os.environ["DO_NOT_TRACK"] == "0" and os.environ["HF_HUB_OFFLINE"] == "1"
    assert "DO_NOT_TRACK" not in applied


def _choices(parser, dest: str) -> set[tuple[str, ...]]:
    """Every `choices` of option `dest` across the parser's subcommands."""
    found = set()
    for sub in parser._subparsers._group_actions[0].choices.values():  # noqa: SLF001
        for action in sub._actions:  # noqa: SLF001
            if action.dest == dest and action.choices is not None:
                found.add(tuple(action.choices))
    return found


def test_preset_and_contraction_choices_are_the_cores_lists():
    from adamshap_core.lowrank import CONTRACTIONS
    from adamshap_core.models import PRESETS

    parser = cli.build_parser()
    assert _choices(parser, "preset") == {tuple(PRESETS)}
    assert _choices(parser, "contraction") == {CONTRACTIONS}


def test_command_line_module_does_not_import_torch():
    code = "import sys, flows.cli; sys.exit(int('torch' in sys.modules))"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_server_shutdown_errors_are_silenced_after_the_flow(caplog):
    """The temporary server's services may log errors while the process exits; after the flow
    they are dropped (a loaded CI machine printed a task-run recorder traceback after curate's
    one-line error)."""
    import logging

    from flows.prefect_env import quiet_server_shutdown

    recorder = logging.getLogger("prefect.server.services.task_run_recorder")
    other = logging.getLogger("adamshap.elsewhere")  # not a Prefect logger: no API handler
    names = [n for n in logging.root.manager.loggerDict if n.startswith("prefect")]
    before = {n: logging.getLogger(n).level for n in [*names, "prefect.server"]}
    try:
        with caplog.at_level(logging.ERROR):
            recorder.error("before")
            quiet_server_shutdown()
            recorder.error("after")
            logging.getLogger("prefect.server.api.late").error("late child")
            other.error("other error")
        messages = [r.getMessage() for r in caplog.records]
        assert "before" in messages and "other error" in messages
        assert "after" not in messages and "late child" not in messages
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize(
    ("flag", "attr", "expected"),
    [
        # one shared batch order only with --coupled-order
        ([], "coupled_order", False),
        (["--coupled-order"], "coupled_order", True),
        (["--no-coupled-order"], "coupled_order", False),
        # one token budget (packed documents) unless --no-pack
        ([], "pack", True),
        (["--no-pack"], "pack", False),
    ],
)
def test_verify_protocol_flags(flag, attr, expected, tmp_path, monkeypatch):
    """`verify` pairs its arms with one shared batch order only with --coupled-order, and gives
    every arm one token budget unless --no-pack."""
    import curation.verify

    seen = []

    def fake_run_verify(args):
        seen.append(args)
        return Path(args.out)

    monkeypatch.setattr(curation.verify, "run_verify", fake_run_verify)
    for name in ("k.jsonl", "f.jsonl", "t.jsonl"):
        (tmp_path / name).write_text('{"id": "a", "text": "x"}\n')
    argv = ["verify", "--curated", "k.jsonl", "--full", "f.jsonl", "--target", "t.jsonl"]
    monkeypatch.chdir(tmp_path)
    assert cli.main([*argv, "--out", "o", *flag]) == 0
    assert [getattr(a, attr) for a in seen] == [expected]
