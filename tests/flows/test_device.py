"""`--device auto|cpu|cuda[:N]` and `--precision` from the command line to the run records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from curation import devices
from curation.errors import UsageError
from curation.ledger import read_ledger
from flows import cli
from tests.flows.conftest import write_tiny_docs

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(
    not CUDA, reason="needs a CUDA device (torch.cuda.is_available() is False)"
)

TINY = ["--preset", "tiny", "--seq-len", "32", "--vocab-size", "300", "--batch-size", "8"]
TINY += ["--target-batch-size", "4", "--warm-start-steps", "1", "--estimators", "adam2,adam"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("device")
    docs = write_tiny_docs(d / "docs.jsonl", per_source=4)  # 24 real docs
    rows = [json.loads(x) for x in docs.read_text().splitlines()]
    (d / "target.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[-4:]))
    return {"corpus": str(docs), "target": str(d / "target.jsonl"), "dir": str(d)}


def _score(data: dict[str, str], out: Path, *extra: str) -> list[str]:
    return ["score", data["corpus"], "--target", data["target"], "--out", str(out), *TINY, *extra]


@pytest.mark.parametrize("command", ["score", "prune", "verify", "curate"])
def test_help_shows_device(command, capsys):
    assert cli.main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "--device" in text and "cuda:N" in text
    assert ("--precision" in text) == (command in ("score", "curate"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        (["--device", "cuda:x"], "--device must be auto, cpu, cuda or cuda:N, got 'cuda:x'"),
        (["--device", "cpu", "--precision", "bf16"], "--precision bf16 needs a CUDA device"),
    ],
)
def test_bad_device_is_one_line_and_exit_2(data, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert cli.main(_score(data, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("adamshap score: error: "), err
    assert message in err
    assert not (out / "run.json").exists()


@pytest.mark.skipif(CUDA, reason="checks the message for a machine without CUDA")
def test_cuda_without_a_gpu_says_so(data, tmp_path, capsys):
    assert cli.main(_score(data, tmp_path / "run", "--device", "cuda")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda: no CUDA device is visible to torch" in err


def test_score_and_prune_on_cpu_record_the_device(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(_score(data, run, "--device", "cpu")) == 0
    args = json.loads((run / "run.json").read_text())["args"]
    assert args["device"] == "cpu" and args["precision"] == "fp32"
    ledger = read_ledger(run)
    n_docs = len(Path(data["corpus"]).read_text().splitlines())
    assert ledger.height == n_docs and np.isfinite(ledger["value_adam2"].to_numpy()).all()

    auto = tmp_path / "auto"
    assert cli.main(_score(data, auto)) == 0  # no --device: auto, recorded as where it ran
    assert json.loads((auto / "run.json").read_text())["args"]["device"] == (
        "cuda" if CUDA else "cpu"
    )

    out = tmp_path / "pruned"
    argv = ["prune", data["corpus"], "--scores", str(run), "--target", data["target"]]
    argv += ["--keep", "0.5", "--clusters", "2", "--out", str(out), "--device", "cpu"]
    assert cli.main(argv) == 0
    assert json.loads((out / "prune.json").read_text())["args"]["device"] == "cpu"
    capsys.readouterr()


@needs_cuda
def test_score_on_cuda_matches_cpu(data, tmp_path):
    cpu, gpu, bf16 = tmp_path / "cpu", tmp_path / "cuda", tmp_path / "bf16"
    assert cli.main(_score(data, cpu, "--device", "cpu")) == 0
    assert cli.main(_score(data, gpu, "--device", "cuda")) == 0
    assert cli.main(_score(data, bf16, "--device", "cuda", "--precision", "bf16")) == 0
    rec = json.loads((bf16 / "run.json").read_text())["args"]
    assert rec["device"] == "cuda" and rec["precision"] == "bf16"

    def values(run: Path) -> np.ndarray:
        return read_ledger(run).sort("step", "id")["value_adam2"].to_numpy()

    a, b, c = values(cpu), values(gpu), values(bf16)
    assert np.isfinite(c).all()
    assert np.corrcoef(a, b)[0, 1] > 0.999  # fp32 on either device: float rounding apart
    assert np.corrcoef(a, c)[0, 1] > 0.9


def test_device_spellings_and_resolution(monkeypatch):
    assert devices.check_device(" CUDA:1 ") == "cuda:1"
    for bad in ("gpu", "cuda:", "cuda:-1", "cpu:0", ""):
        with pytest.raises(UsageError, match="--device must be"):
            devices.check_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto") == "cpu"
    with pytest.raises(UsageError, match="no CUDA device is visible"):
        devices.resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.resolve_device("auto") == "cuda"
    assert devices.resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(UsageError, match=r"only 2 CUDA device\(s\)"):
        devices.resolve_device("cuda:2")
    assert devices.check_precision("bf16", "cuda:1") == "bf16"
    assert devices.amp_dtype("bf16") is torch.bfloat16 and devices.amp_dtype("fp32") is None
    with pytest.raises(UsageError, match="--precision must be"):
        devices.check_precision("fp16", "cuda")


def test_faiss_gpu_only_for_cuda_devices(monkeypatch):
    import curation.cluster as cluster

    monkeypatch.setattr(cluster, "faiss_gpu_available", lambda: True)
    assert devices.faiss_gpu("cpu") is None
    assert devices.faiss_gpu("cuda") == 0 and devices.faiss_gpu("cuda:3") == 3
    monkeypatch.setattr(cluster, "faiss_gpu_available", lambda: False)
    assert devices.faiss_gpu("cuda:3") is None


def test_kmeans_on_gpu_agrees_with_cpu_or_refuses():
    from curation.cluster import faiss_gpu_available, spherical_kmeans

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    x = np.repeat(centres, 50, axis=0) + 0.05 * rng.normal(size=(200, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels, cents = spherical_kmeans(x, 4, seed=0)
    if not faiss_gpu_available():
        with pytest.raises(UsageError, match="no GPU support or sees no GPU"):
            spherical_kmeans(x, 4, seed=0, gpu=0)
        return
    g_labels, g_cents = spherical_kmeans(x, 4, seed=0, gpu=0)
    assert (g_labels == labels).mean() > 0.99
    assert np.allclose(g_cents, cents, atol=1e-4)


def test_manifest_device_is_checked_before_any_work(tmp_path):
    with pytest.raises(UsageError, match=r"m\.yaml: run\.device: --device must be"):
        cli.check_run_settings({"device": "tpu"}, None, where="m.yaml")
    with pytest.raises(
        UsageError, match=r"m\.yaml: run\.precision: --precision must be one of fp32, bf16"
    ):
        cli.check_run_settings({"precision": "fp16"}, None, where="m.yaml")
    assert cli.check_run_settings({"device": "cuda:0", "precision": "bf16"}, 0.5, "m") == 0.5


def test_curate_checks_device_before_starting_prefect(tiny_manifest, capsys):
    assert cli.main(["curate", str(tiny_manifest), "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device must be auto, cpu, cuda or cuda:N, got 'gpu'" in err
