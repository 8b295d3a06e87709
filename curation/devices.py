"""Where the proxy runs: `--device auto|cpu|cuda|cuda:N` and `--precision fp32|bf16`.

`auto` is CUDA when torch sees a GPU, else the CPU. A run records the device it resolved to
(`cpu`, `cuda` or `cuda:N`), never `auto`, so run.json says where it ran. `bf16` runs the
scorer's forward and backward passes under bf16 autocast (the values are still accumulated in
fp32/fp64) and needs a CUDA device. FAISS clustering uses the GPU when the device is CUDA and the
installed faiss has GPU support (`pip install -e '.[gpu]'`), else the CPU.
"""

from __future__ import annotations

import re

from curation.errors import UsageError
from curation.settings import PRECISIONS, check_choice

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_SPEC = re.compile(r"^(auto|cpu|cuda(?::(\d+))?)$")


def check_device(spec: str) -> str:
    """Normalise a device spelling (`auto`, `cpu`, `cuda`, `cuda:N`) or raise UsageError."""
    text = str(spec).strip().lower()
    if not _SPEC.match(text):
        raise UsageError(f"--device must be {DEVICE_CHOICES}, got {spec!r}")
    return text


def resolve_device(spec: str) -> str:
    """The device a run uses: `auto` picks CUDA when present; CUDA asked for but absent raises."""
    import torch

    text = check_device(spec)
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return text
    if not torch.cuda.is_available():
        raise UsageError(
            f"--device {text}: no CUDA device is visible to torch "
            f"(torch {torch.__version__}, cuda build {torch.version.cuda or 'none'}); "
            "use --device cpu or --device auto"
        )
    index = int(text.split(":")[1]) if ":" in text else None
    if index is not None and index >= torch.cuda.device_count():
        raise UsageError(
            f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) visible "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
        )
    return text


def validate_precision(precision: object) -> str:
    """`precision` when it is one of PRECISIONS, else UsageError (the one place this is checked)."""
    return check_choice("--precision", precision, PRECISIONS)


def check_precision(precision: str, device: str) -> str:
    """Validate `--precision` for a resolved device: bf16 needs CUDA. Returns the precision."""
    validate_precision(precision)
    if precision == "bf16" and not device.startswith("cuda"):
        raise UsageError(
            f"--precision bf16 needs a CUDA device (this run uses {device}); "
            "use --precision fp32 on the CPU"
        )
    return precision


def amp_dtype(precision: str):  # -> torch.dtype | None
    """The autocast dtype the scorer takes for a precision (None for fp32)."""
    import torch

    return torch.bfloat16 if precision == "bf16" else None


def faiss_gpu(device: str) -> int | None:
    """The GPU FAISS should use for `device` (None: the CPU).

    A GPU only when the device is CUDA and this faiss build sees one; `cuda:N` picks GPU N.
    """
    if not str(device).startswith("cuda"):
        return None
    from curation.cluster import faiss_gpu_available

    if not faiss_gpu_available():
        return None
    return int(device.split(":")[1]) if ":" in device else 0
