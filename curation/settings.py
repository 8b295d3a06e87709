"""The rules of the user-facing settings that more than one stage or layer reads.

torch-, numpy- and polars-free, so the command line can apply them while parsing. The stage
settings models (`ScoreArgs`, `PruneArgs`, `VerifyArgs`) are where each setting is validated;
what they share lives here, and the CLI's argparse types and the manifest loader call these
same functions instead of checking again.
"""

from __future__ import annotations

import math
from typing import Any

from curation.errors import UsageError

DEFAULT_KEEP = 0.7


def validate_keep(keep: object) -> float:
    """Parse and check a keep fraction: a number in (0, 1], else UsageError."""
    try:
        k = float(keep)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UsageError(f"--keep must be a number in (0, 1] (e.g. 0.7), got {keep!r}") from None
    if not math.isfinite(k) or k <= 0.0 or k > 1.0:
        raise UsageError(f"--keep must be in (0, 1], got {keep} (e.g. 0.7 keeps 70%)")
    return k


def resolve_keep(keep: float | None, run: dict[str, Any], where: str, hint: str = "") -> float:
    """`keep` (the --keep option), else the manifest's `run.keep` (default 0.7), checked.

    UsageError naming `where` (the manifest) and which of the two was wrong, plus `hint`.
    """
    value = keep if keep is not None else run.get("keep", DEFAULT_KEEP)
    try:
        return validate_keep(value)
    except UsageError as exc:
        what = "--keep" if keep is not None else "run.keep"
        raise UsageError(f"{where}: {what}: {exc}{hint}") from None


def validate_clusters(clusters: object) -> int | None:
    """The number of FAISS clusters: None (the default rule) or a positive integer."""
    if clusters is not None and (
        not isinstance(clusters, int) or isinstance(clusters, bool) or clusters < 1
    ):
        raise UsageError(f"expected a positive integer, got {clusters!r}")
    return clusters
