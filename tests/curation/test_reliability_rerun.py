"""Reliability, second pass (issue 13): the hostile-user cases, each through the real CLI.

A failed rerun leaves no earlier outputs, nothing is dropped or decided silently (foreign
scores, unfinished runs, extra columns, curated sets that are not subsets, empty kept sets),
every OS error is one line with exit 2, SIGTERM checkpoints like Ctrl-C, manifests refuse
unknown keys, and results do not depend on the working directory. The inputs are generated
here (72 small documents with extra columns); one tiny scoring run is shared by the module.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
WORDS = {
    "law": "court statute clause party contract breach remedy plaintiff judge verdict appeal".split(),
    "cook": "flour butter oven simmer garlic onion pepper salt whisk bake stir sugar".split(),
    "code": "function variable loop return class module import string integer list error".split(),
}
DONE = ("kept.jsonl", "excluded.jsonl", "kept.parquet", "excluded.parquet", "prune.json")


# ----------------------------------------------------------------------------- helpers


def _docs(prefix: str, n: int, seed: int) -> list[dict]:
    """`n` generated documents over three sources, each with extra columns (url, meta, rank)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        src = sorted(WORDS)[i % 3]
        text = " ".join(rng.choice(WORDS[src], size=int(rng.integers(8, 20))))
        rows.append(
            {
                "id": f"{prefix}{i}",
                "source": src,
                "text": text,
                "url": f"https://example.org/{prefix}{i}",
                "meta": {"lang": "en", "n": i},
                "rank": float(i) / 2,
            }
        )
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return env


def _cli(
    args: list, cwd: Path, fsize: int | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """`python -m flows.cli ARGS` in `cwd`; `fsize` caps the size of any file it writes."""

    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    cmd = [sys.executable, "-m", "flows.cli", *map(str, args)]
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
    )


def _one_line_error(res: subprocess.CompletedProcess, cmd: str, *needles: str) -> str:
    """Exit 2, no traceback, exactly one `adamshap CMD: error:` line holding every needle."""
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = [x for x in res.stderr.splitlines() if x.startswith(f"adamshap {cmd}: error:")]
    assert len(lines) == 1, res.stderr[-3000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _no_outputs(out: Path) -> None:
    left = [n for n in DONE if (out / n).exists()] + [p.name for p in out.glob(".staging*")]
    assert not left, f"left behind in {out}: {left}"


SCORE_OPTS = [
    "--preset", "tiny", "--seq-len", "32", "--vocab-size", "300", "--batch-size", "8",
    "--target-batch-size", "4", "--warm-start-steps", "1", "--estimators", "adam2",
]  # fmt: skip


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> dict[str, Path]:
    """60 training + 12 target documents (with extra columns) and a tiny scoring run.

    `score` runs in the data folder with relative paths, as a user would type them.
    """
    d = tmp_path_factory.mktemp("rerun")
    train, target = _docs("t", 60, 0), _docs("g", 12, 1)
    _write(d / "corpus.jsonl", train)
    _write(d / "target.jsonl", target)
    _write(d / "full.jsonl", train + target)
    res = _cli(
        ["score", "corpus.jsonl", "--target", "target.jsonl", "--out", "run", *SCORE_OPTS], d
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return {
        "dir": d,
        "corpus": d / "corpus.jsonl",
        "target": d / "target.jsonl",
        "full": d / "full.jsonl",
        "run": d / "run",
        "train": train,
        "target_rows": target,
    }


def _prune(s: dict, out: Path, *extra: str) -> list:
    return [
        "prune", s["corpus"], "--scores", s["run"], "--target", s["target"], "--out", out,
        "--keep", "0.5", "--clusters", "2", *extra,
    ]  # fmt: skip


# ----------------------------------------------------------------------------- 1. failed reruns


@pytest.mark.integration
def test_failed_prune_rerun_leaves_no_earlier_outputs(scored):
    """Case 1: a rerun that fails (disk full, bad --scores) leaves no old kept/excluded pair."""
    out = scored["dir"] / "p_rerun"
    ok = _cli(_prune(scored, out), scored["dir"])
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (out / "kept.jsonl").exists() and (out / "excluded.jsonl").exists()

    full = _cli(_prune(scored, out), scored["dir"], fsize=2048)  # "disk full" while writing
    _one_line_error(full, "prune", "File too large")
    _no_outputs(out)

    assert _cli(_prune(scored, out), scored["dir"]).returncode == 0
    bad = _prune(scored, out)
    bad[bad.index("--scores") + 1] = scored["dir"] / "no-such-run"
    _one_line_error(_cli(bad, scored["dir"]), "prune", "no-such-run")
    _no_outputs(out)


@pytest.mark.integration
def test_failed_verify_rerun_leaves_no_earlier_results(scored):
    """Case 1 (verify): a failed rerun removes verify.json, verify.md and the curve."""
    d = scored["dir"]
    sub = _write(d / "sub.jsonl", scored["train"][:16])
    out = d / "v_rerun"
    args = ["verify", "--curated", sub, "--full", scored["corpus"], "--target", scored["target"]]
    args += ["--out", out, "--seeds", "1", "--seq-len", "32", "--batch-size", "8"]
    ok = _cli(args, d)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (out / "verify.json").exists()
    foreign = _write(d / "foreign.jsonl", _docs("x", 8, 5))
    bad = [foreign if a == sub else a for a in args]
    _one_line_error(_cli(bad, d), "verify", "subset")
    left = [n for n in ("verify.json", "verify.md", "verify_curve.png") if (out / n).exists()]
    assert not left, left


# ----------------------------------------------------------------------------- 2, 10: refusals


@pytest.mark.integration
def test_prune_refuses_scores_of_another_corpus(scored):
    """Case 2: scores whose ids do not cover the corpus are refused, not ranked as unscored."""
    other = _write(scored["dir"] / "other.jsonl", _docs("o", 30, 2))
    out = scored["dir"] / "p_other"
    args = _prune(scored, out)
    args[1] = other
    _one_line_error(_cli(args, scored["dir"]), "prune", "have no ckpt value", "another corpus")
    _no_outputs(out)


@pytest.mark.integration
def test_prune_refuses_an_empty_kept_set(scored):
    """Case 10: --keep that keeps no document (1e-9, or 0.5 of one document) is an error."""
    out = scored["dir"] / "p_empty"
    tiny = _cli(_prune(scored, out, "--keep", "1e-9"), scored["dir"])
    _one_line_error(tiny, "prune", "keeps 0", "raise --keep")
    _no_outputs(out)
    one = _write(scored["dir"] / "one.jsonl", scored["train"][:1])
    args = _prune(scored, out, "--keep", "0.5")
    args[1] = one
    args[args.index("--clusters") + 1] = "1"
    _one_line_error(_cli(args, scored["dir"]), "prune", "keeps 0")
    _no_outputs(out)


# ----------------------------------------------------------------------------- 3. working dir


@pytest.mark.integration
def test_results_do_not_depend_on_the_working_directory(scored):
    """Case 3: run.json holds absolute paths; prune from elsewhere protects the run's target."""
    run_json = json.loads((scored["run"] / "run.json").read_text())
    for key in ("corpus", "target", "out"):
        assert Path(run_json["args"][key]).is_absolute(), run_json["args"][key]
    elsewhere = scored["dir"] / "elsewhere"
    elsewhere.mkdir()
    out = scored["dir"] / "p_cwd"
    res = _cli(
        ["prune", scored["full"], "--scores", scored["run"], "--out", out, "--keep", "0.5",
         "--clusters", "2"],
        elsewhere,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "prune.json").read_text())["summary"]
    assert summary["n_target"] == len(scored["target_rows"])
    # the same corpus by absolute path, from another directory, is the same run
    again = _cli(
        ["score", scored["corpus"], "--target", scored["target"], "--out", scored["run"],
         *SCORE_OPTS],
        elsewhere,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already complete" in again.stderr


# ----------------------------------------------------------------------------- 4. extra columns


@pytest.mark.integration
def test_every_input_column_survives_jsonl_and_parquet(scored):
    """Case 4: kept has the input rows as they were; excluded adds reason and value."""
    out = scored["dir"] / "p_cols"
    res = _cli(_prune(scored, out), scored["dir"])
    assert res.returncode == 0, res.stderr[-3000:]
    by_id = {r["id"]: r for r in scored["train"]}
    kept, excl = _read(out / "kept.jsonl"), _read(out / "excluded.jsonl")
    assert all(r == by_id[r["id"]] for r in kept)
    for r in excl:
        assert {k: v for k, v in r.items() if k not in ("reason", "value")} == by_id[r["id"]]
        assert r["reason"]
    assert sorted(r["id"] for r in kept + excl) == sorted(by_id)

    pq = scored["dir"] / "corpus.parquet"
    pl.DataFrame(scored["train"]).write_parquet(pq)
    out_pq = scored["dir"] / "p_cols_pq"
    args = _prune(scored, out_pq)
    args[1] = pq
    res = _cli(args, scored["dir"])
    assert res.returncode == 0, res.stderr[-3000:]
    k, e = pl.read_parquet(out_pq / "kept.parquet"), pl.read_parquet(out_pq / "excluded.parquet")
    assert k.columns == pl.read_parquet(pq).columns
    assert {"url", "meta", "rank", "reason", "value"} <= set(e.columns)
    assert k["meta"].struct.field("lang").to_list() == ["en"] * k.height
    assert sorted(k["id"].to_list() + e["id"].to_list()) == sorted(by_id)


# ----------------------------------------------------------------------------- 5. unfinished


@pytest.mark.integration
def test_unfinished_run_is_reported_as_such_and_refused_by_prune(scored):
    """Case 5: report says UNFINISHED (stderr and report); prune refuses the run, one line."""
    part = scored["dir"] / "run_part"
    shutil.copytree(scored["run"], part)
    (part / ".complete").unlink()
    shutil.rmtree(part / "final_model")
    for f in ("values_by_example.parquet", "values_by_source.parquet"):
        (part / f).unlink(missing_ok=True)
    parts = sorted((part / "ledger").glob("part-*.parquet"))
    for p in parts[1:]:
        p.unlink()
    res = _cli(["report", part], scored["dir"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "UNFINISHED" in res.stderr
    assert "UNFINISHED" in (part / "report.md").read_text()
    out = scored["dir"] / "p_part"
    args = _prune(scored, out)
    args[args.index("--scores") + 1] = part
    _one_line_error(_cli(args, scored["dir"]), "prune", "not a finished scoring run")
    _no_outputs(out)


# ----------------------------------------------------------------------------- 6. verify subset


def test_verify_refuses_a_curated_set_that_is_not_a_subset(tmp_path):
    """Case 6: documents of --curated that --full lacks stop verify before any training."""
    full = _write(tmp_path / "full.jsonl", _docs("f", 20, 0))
    cur = _write(tmp_path / "cur.jsonl", _docs("f", 5, 0) + _docs("z", 3, 9))
    tgt = _write(tmp_path / "tgt.jsonl", _docs("g", 4, 1))
    res = _cli(
        ["verify", "--curated", cur, "--full", full, "--target", tgt, "--out", tmp_path / "v"],
        tmp_path,
    )
    _one_line_error(res, "verify", "3 of the 8 curated documents", "subset")
    assert not (tmp_path / "v" / "verify.json").exists()


# ----------------------------------------------------------------------------- 7. OS errors


def _out_cases(tmp_path: Path) -> dict[str, Path]:
    corpus = _write(tmp_path / "c.jsonl", _docs("c", 12, 0))
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "a_file").write_text("x")
    return {
        "corpus-itself": corpus,
        "a-file": tmp_path / "a_file",
        "dangling-symlink": tmp_path / "dangling",
        "under-a-file": tmp_path / "a_file" / "out",
        "unwritable": Path("/proc/adamshap-test-out/out"),
    }


@pytest.mark.parametrize("command", ["score", "prune", "verify"])
@pytest.mark.parametrize(
    "case", ["corpus-itself", "a-file", "dangling-symlink", "under-a-file", "unwritable"]
)
def test_bad_out_is_one_line_exit_2(command, case, tmp_path, capsys):
    """Case 7: --out that is a file, the corpus, a dangling link or unwritable: one line.

    In-process `cli.main` for the matrix (it fails before any work); one case also runs in a
    subprocess below.
    """
    from flows import cli

    out = _out_cases(tmp_path)[case]
    c = tmp_path / "c.jsonl"
    before = c.read_bytes()
    argv = {
        "score": ["score", c, "--target", c, "--out", out, *SCORE_OPTS],
        "prune": ["prune", c, "--target", c, "--out", out],
        "verify": ["verify", "--curated", c, "--full", c, "--target", c, "--out", out],
    }[command]
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    _one_line_error(subprocess.CompletedProcess(argv, code, "", err), command)
    assert c.read_bytes() == before
    assert os.path.islink(tmp_path / "dangling")


def test_out_is_the_corpus_through_a_subprocess(tmp_path):
    """Case 7: the same through `python -m flows.cli` (no traceback, exit 2)."""
    c = _write(tmp_path / "c.jsonl", _docs("c", 12, 0))
    res = _cli(["prune", c, "--target", c, "--out", c], tmp_path)
    _one_line_error(res, "prune", "is a file, not a folder")


@pytest.mark.integration
def test_disk_full_while_scoring_is_one_line_exit_2(tmp_path):
    """Case 7: a full disk (file-size limit) during score is one line and exit 2."""
    _write(tmp_path / "c.jsonl", _docs("c", 24, 0))
    _write(tmp_path / "t.jsonl", _docs("g", 6, 1))
    args = ["score", "c.jsonl", "--target", "t.jsonl", "--out", "run", *SCORE_OPTS]
    res = _cli(args, tmp_path, fsize=4096)
    _one_line_error(res, "score", "File too large")
    assert not (tmp_path / "run" / ".complete").exists()


def test_report_on_an_empty_ledger_is_one_line(tmp_path):
    """Case 7: `report` on a run that has not scored a step yet."""
    (tmp_path / "run" / "ledger").mkdir(parents=True)
    _one_line_error(_cli(["report", tmp_path / "run"], tmp_path), "report", "no scored steps")


# ----------------------------------------------------------------------------- 8. HF folder


@pytest.mark.integration
def test_run_inside_a_datasets_folder_resumes(tmp_path):
    """Case 8: the run's own files do not change the datasets folder's identity."""
    import datasets

    hf = tmp_path / "hf"
    datasets.Dataset.from_list(_docs("h", 24, 0)).save_to_disk(str(hf))
    _write(tmp_path / "t.jsonl", _docs("g", 6, 1))
    args = ["score", hf, "--target", "t.jsonl", "--out", hf / "run", *SCORE_OPTS]
    first = _cli(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = _cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already complete" in again.stderr


# ----------------------------------------------------------------------------- 9. manifests


def _manifest(folder: Path, **edit) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "docs.jsonl", _docs("m", 12, 0))
    doc = {
        "name": "m",
        "sources": [{"name": s, "files": ["docs.jsonl"], "licence": "test"} for s in WORDS],
        "target": {"holdout": {"sources": ["law"], "n": 1}},
        "run": {"keep": 0.5, "preset": "tiny"},
    }
    for path, value in edit.items():
        node = doc
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[keys[-1]] = value
    path = folder / "m.yaml"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        ({"run__warm_start_step": 2}, ("run:", "'warm_start_step'", "'warm_start_steps'")),
        ({"run__prune": {"cluster": 3}}, ("run.prune", "'cluster'", "'clusters'")),
        ({"sources__0__licnce": "x"}, ("sources[0]", "'licnce'", "'licence'")),
        ({"target__holdout__seeds": 1}, ("target.holdout", "'seeds'", "'seed'")),
        ({"runs": {}}, ("manifest", "'runs'", "'run'")),
        ({"run__warm_start_steps": "two"}, ("run.warm_start_steps", "an integer")),
    ],
)
def test_manifest_unknown_or_bad_keys_are_refused(edit, needles, tmp_path):
    """Case 9: every level refuses unknown keys, naming the key and the nearest valid one."""
    m = _manifest(tmp_path / "m", **edit)
    res = _cli(["curate", m, "--out", tmp_path / "out"], tmp_path)
    _one_line_error(res, "curate", *needles)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- 11. SIGTERM


@pytest.mark.integration
def test_sigterm_checkpoints_like_sigint_and_the_run_resumes(tmp_path):
    """Case 11: SIGTERM during scoring saves a checkpoint, says how to resume, exits 143."""
    _write(tmp_path / "c.jsonl", _docs("c", 24, 0))
    _write(tmp_path / "t.jsonl", _docs("g", 6, 1))
    opts = [o if o != "1" else "400" for o in SCORE_OPTS]  # --warm-start-steps 400
    args = ["score", "c.jsonl", "--target", "t.jsonl", "--out", "run", *opts]
    cmd = [sys.executable, "-m", "flows.cli", *args]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    first = tmp_path / "run" / "checkpoints" / "step-0000050.pt"
    t0 = time.monotonic()
    while not first.exists() and proc.poll() is None and time.monotonic() - t0 < 300:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    assert "SIGTERM" in err and "checkpoint saved" in err and "same command" in err
    steps = [int(p.stem.split("-")[1]) for p in (tmp_path / "run" / "checkpoints").glob("*.pt")]
    assert max(steps) >= 50 and not (tmp_path / "run" / ".complete").exists()


# ----------------------------------------------------------------------------- 12. fields


@pytest.mark.integration
def test_prune_and_verify_take_field_options(scored):
    """Case 12: a corpus with `body` for text can be pruned and verified (--text-field body)."""
    d = scored["dir"]

    def body(rows: list[dict]) -> list[dict]:
        return [{("body" if k == "text" else k): v for k, v in r.items()} for r in rows]

    corpus = _write(d / "body.jsonl", body(scored["train"]))
    target = _write(d / "body_target.jsonl", body(scored["target_rows"]))
    out = d / "p_body"
    args = ["prune", corpus, "--scores", scored["run"], "--target", target, "--out", out]
    args += ["--keep", "0.5", "--clusters", "2"]
    missing = _cli(args, d)
    _one_line_error(missing, "prune", "missing text", "--text-field")
    res = _cli([*args, "--text-field", "body"], d)
    assert res.returncode == 0, res.stderr[-3000:]
    kept = _read(out / "kept.jsonl")
    assert kept and all("body" in r and "text" not in r for r in kept)
    v = _cli(
        ["verify", "--curated", out / "kept.jsonl", "--full", corpus, "--target", target,
         "--out", d / "v_body", "--seeds", "1", "--seq-len", "32", "--text-field", "body"],
        d,
    )  # fmt: skip
    assert v.returncode == 0, v.stderr[-3000:]
    assert (d / "v_body" / "verify.json").exists()


# ----------------------------------------------------------------------------- property test

EXTRA = st.dictionaries(
    st.sampled_from(["url", "meta", "lang", "score", "tags", "reason", "value"]),
    st.one_of(
        st.none(),
        st.integers(-5, 5),
        st.text(max_size=8),
        st.lists(st.integers(0, 3), max_size=3),
        st.fixed_dictionaries({"k": st.text(max_size=4)}),
    ),
    max_size=4,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n_good=st.integers(1, 25),
    bad_at=st.lists(st.integers(0, 30), max_size=4),
    extras=st.lists(EXTRA, min_size=25, max_size=25),
    keep=st.floats(0.05, 1.0),
    fail=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_nothing_lost_every_column_kept_and_failed_rerun_leaves_no_old_pair(
    tmp_path, n_good, bad_at, extras, keep, fail, seed
):
    """in = kept + excluded + rejected, each input row with all its fields; and a rerun that
    fails while writing leaves no kept/excluded pair of the earlier run (nor a partial new one).
    """
    import tempfile

    from curation.atomic import staged_outputs
    from curation.corpus import read_corpus
    from curation.errors import UsageError
    from curation.prune import clear_outputs, input_rows, write_outputs
    from curation.selection import select

    case = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example
    lines, good = [], {}
    for i in range(n_good):
        rec = {**extras[i], "id": f"d{i}", "source": "ab"[i % 2], "text": f"text {i} " * 3}
        lines.append(json.dumps(rec))
        good[len(lines)] = rec
    for j in sorted(bad_at):
        lines.insert(min(j, len(lines)), '{"id": "broken"')  # invalid JSON: rejected
    good = {}  # line numbers moved: rebuild from the final lines
    for ln, text in enumerate(lines, start=1):
        if text != '{"id": "broken"':
            good[ln] = json.loads(text)
    src = case / "c.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # a clean copy (what prune reads strictly) plus the rejects of the skip read
    data = read_corpus(src, on_bad_rows="skip", rejects_path=case / "rejects.jsonl")
    rejected = [json.loads(x) for x in (case / "rejects.jsonl").read_text().splitlines()]
    clean = case / "clean.jsonl"
    clean.write_text("".join(json.dumps(good[ln]) + "\n" for ln in sorted(good)), "utf-8")
    n = data.df.height
    rows = input_rows(clean, n)

    out = case / "out"
    out.mkdir()
    for name in ("kept.jsonl", "excluded.jsonl", "prune.json"):  # an earlier run's outputs
        (out / name).write_text('{"id": "old"}\n')
    rng = np.random.default_rng(seed)
    ids = data.df["id"].to_list()
    values = rng.normal(size=n)
    emb = rng.normal(size=(n, 4)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    try:
        res = select(ids, values, rng.integers(0, 2, n), emb, keep, None, dedup_eps=0.0)
    except UsageError:
        return
    clear_outputs(out)
    try:
        with staged_outputs(out, last=("prune.json",)) as stage:
            write_outputs(stage, rows, np.asarray(res.kept), list(res.reason), values, ".jsonl")
            if fail:
                raise OSError(28, "No space left on device")
            (stage / "prune.json").write_text("{}")
    except OSError:
        assert fail
        left = [p.name for p in out.iterdir()]
        assert left == [], left  # no old pair, no half of a new one, no staging folder
        return
    # records end at "\n" only: str.splitlines would also split inside a field holding U+0085
    read = lambda p: [json.loads(x) for x in p.read_text().split("\n") if x]  # noqa: E731
    kept, excl = read(out / "kept.jsonl"), read(out / "excluded.jsonl")
    by_id = {r["id"]: r for r in good.values()}
    assert all(r == by_id[r["id"]] for r in kept)  # every field, unchanged
    for r in excl:
        assert r["reason"]
        orig = {
            (f"input_{k}" if k in ("reason", "value") else k): v for k, v in by_id[r["id"]].items()
        }
        assert {k: v for k, v in r.items() if k not in ("reason", "value")} == orig
    lines_out = sorted([ln for ln, r in good.items() if r["id"] in {k["id"] for k in kept}])
    lines_out += [ln for ln, r in good.items() if r["id"] in {e["id"] for e in excl}]
    lines_out += [r["row"] for r in rejected]
    assert sorted(lines_out) == list(range(1, len(lines) + 1))


# ----------------------------------------------------------------------------- 13. Prefect


def _temporary_servers(parent: int) -> list[int]:
    """Pids of live Prefect temporary API servers whose parent is `parent` (Linux /proc)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
            state, ppid = (p / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if b"prefect.server.api.server:create_app" in argv and int(ppid) == parent:
            pids.append(int(p.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_sigkilled_curate_leaves_no_prefect_server(tmp_path):
    """Case 13: the temporary Prefect server dies with a SIGKILLed `curate`."""
    m = _manifest(tmp_path / "m")
    env = {k: v for k, v in _env().items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    cmd = [sys.executable, "-m", "flows.cli", "curate", str(m), "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    servers: list[int] = []
    try:
        t0 = time.monotonic()
        while not servers and proc.poll() is None and time.monotonic() - t0 < 240:
            time.sleep(0.1)
            servers = _temporary_servers(proc.pid)
        assert servers, "curate never started its temporary Prefect server"
        proc.kill()
        proc.wait(timeout=60)
        t0 = time.monotonic()
        while any(_alive(p) for p in servers) and time.monotonic() - t0 < 60:
            time.sleep(0.1)
        assert not any(_alive(p) for p in servers), "the Prefect server outlived curate"
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in servers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


# ----------------------------------------------------------------------------- code reading


def test_every_option_named_in_a_message_exists():
    """Error hints name only options the CLI has (not --max-grad-norm etc. that it lacked)."""
    import argparse
    import re

    from flows import cli

    options: set[str] = set()

    def walk(p: argparse.ArgumentParser) -> None:
        for a in p._actions:
            options.update(a.option_strings)
            if isinstance(a, argparse._SubParsersAction):
                for sub in a.choices.values():
                    walk(sub)

    walk(cli.build_parser())
    other_tools = {"--host", "--args-json"}  # `prefect server start`, `python -m ...scoring_run`
    named: dict[str, str] = {}
    files = [*(REPO / "curation").glob("*.py"), *(REPO / "flows").glob("*.py")]
    for f in files:
        for m in re.finditer(r"[\"'` (]--([a-z][a-z0-9-]+)", f.read_text(encoding="utf-8")):
            named.setdefault("--" + m.group(1), f.name)
    missing = {o: f for o, f in named.items() if o not in options | other_tools}
    assert not missing, missing


def test_atomic_writes_never_touch_the_umask(tmp_path, monkeypatch):
    """Files get 0666 & ~umask from the kernel; the process-wide umask is never read or set."""
    from curation.atomic import atomic_dir, atomic_write_text

    mask = os.umask(0o027)
    try:

        def no_umask(*_: object) -> int:
            raise AssertionError("os.umask called")

        monkeypatch.setattr(os, "umask", no_umask)
        p = atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("y")
        monkeypatch.undo()
        assert p.stat().st_mode & 0o777 == 0o640
        assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750
    finally:
        os.umask(mask)


def test_embedding_cache_key_follows_the_texts():
    """An edited corpus that keeps its ids gets another cache key (no stale embeddings)."""
    from curation.embed import content_key

    a = pl.DataFrame({"id": ["1", "2"], "source": ["s", "s"], "text": ["one", "two"]})
    b = a.with_columns(pl.Series("text", ["one", "TWO"]))
    c = pl.DataFrame({"id": ["1", "2"], "source": ["s", "s"], "text": ["one", "two"]})
    assert content_key(a) != content_key(b)
    assert content_key(a) == content_key(c)
    assert content_key(a) != content_key(a.reverse())


def test_curate_applies_offline_settings_before_prefect_is_imported():
    """`flows.curate` sets the offline/telemetry defaults before the first `import prefect`."""
    probe = (
        "import builtins, os, sys\n"
        "real = builtins.__import__\n"
        "def imp(name, *a, **k):\n"
        "    if name.split('.')[0] == 'prefect' and 'prefect' not in sys.modules:\n"
        "        if os.environ.get('DO_NOT_TRACK') != '1':\n"
        "            sys.exit(3)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = imp\n"
        "import flows.curate\n"
    )
    env = {k: v for k, v in _env().items() if k not in ("DO_NOT_TRACK",)}
    env = {k: v for k, v in env.items() if not k.startswith("PREFECT_SERVER_ANALYTICS")}
    res = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]


def test_prune_never_deletes_its_own_input(tmp_path):
    """Pruning a previous kept file into its own folder is refused before anything is deleted."""
    out = tmp_path / "p"
    out.mkdir()
    kept = _write(out / "kept.jsonl", _docs("k", 12, 0))
    before = kept.read_bytes()
    res = _cli(["prune", kept, "--target", kept, "--out", out], tmp_path)
    _one_line_error(res, "prune", "choose another --out")
    assert kept.read_bytes() == before
