"""Seeded FAISS spherical k-means over L2-normalised document embeddings.

On the CPU by default; `gpu=N` runs the assignment search on GPU N (`curation.devices.faiss_gpu`
gives N for a run's `--device`: a GPU only for a CUDA device and a faiss build with GPU support).
The seeded sampling and centroid updates are the same code either way, so CPU and GPU agree up
to float rounding in the nearest-centroid search (benchmarks/gpu_check.sh checks it).
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from curation.errors import UsageError

K_MIN, K_MAX = 2, 256


def default_k(n: int) -> int:
    """Default cluster count: round(sqrt(n / 2)) clamped to [2, 256] (and never above n)."""
    k = min(K_MAX, max(K_MIN, round(math.sqrt(max(n, 0) / 2))))
    return max(1, min(k, n)) if n > 0 else K_MIN


def faiss_gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # noqa: BLE001 - any probe failure means "no GPU"
        return False


def spherical_kmeans(
    emb: np.ndarray,
    k: int,
    seed: int = 0,
    max_train: int = 50_000,
    niter: int = 25,
    gpu: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster rows of `emb` into k groups; returns (labels int64 [N], centroids float32 [k, d])."""
    x = np.ascontiguousarray(emb, dtype=np.float32)
    if x.ndim != 2:
        raise UsageError(f"embeddings must be a 2-D array [N, d], got shape {x.shape}")
    n, d = x.shape
    if n == 0:
        raise UsageError("cannot cluster an empty corpus (0 documents)")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise UsageError(f"the cluster count must be a positive integer, got {k!r}")
    if k > n:
        raise UsageError(
            f"asked for {k} clusters but the corpus has only {n} documents; "
            f"use --clusters {max(1, default_k(n))} or fewer"
        )
    if not np.isfinite(x).all():
        raise UsageError("embeddings contain NaN or infinite values")
    train = x
    if n > max_train:
        rng = np.random.default_rng(seed)
        train = x[np.sort(rng.choice(n, size=max_train, replace=False))]
    km = faiss.Kmeans(
        d,
        int(k),
        niter=niter,
        spherical=True,
        seed=int(seed),
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=max(256, math.ceil(len(train) / k)),
    )
    if gpu is not None:
        if not faiss_gpu_available():
            raise UsageError(
                "FAISS on GPU asked for, but this faiss build has no GPU support or sees no GPU "
                "(install the `gpu` extra: pip install -e '.[gpu]')"
            )
        res = faiss.StandardGpuResources()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.device = int(gpu)
        km.index = faiss.GpuIndexFlatIP(res, d, cfg)
        km.gpu_resources = res  # the index needs these alive while it is used
    km.train(train)
    # Centroids are unit-norm, so nearest by L2 equals highest cosine.
    _, idx = km.index.search(x, 1)
    return idx[:, 0].astype(np.int64), np.asarray(km.centroids, dtype=np.float32)
