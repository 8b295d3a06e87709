"""FAISS on GPU vs CPU: the same embeddings clustered by `curation.cluster.spherical_kmeans` twice.

Synthetic unit-norm embeddings with a known cluster structure (`--n` rows, `--dim` columns,
`--k` clusters, noise around each centre) are clustered on the CPU and on GPU 0 (`gpu=0`, what
`--device cuda` selects) with the same seed. The seeded sampling and the centroid updates are the
same code on both sides; only the nearest-centroid search runs elsewhere, so the two must agree
up to float rounding: the share of documents with the same label (>= `--min-agree`) and the
objective, the mean cosine of each row to its centroid (relative difference <= `--max-obj-diff`).
Needs numpy and faiss (the `gpu` extra: faiss-gpu-cu12); benchmarks/gpu_check.sh runs it.

    python -m benchmarks.faiss_gpu_check              # results in benchmarks/results/faiss_gpu.*
    python -m benchmarks.faiss_gpu_check --cpu-only   # the CPU side only (no GPU needed)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def embeddings(n: int, dim: int, k: int, noise: float, seed: int) -> np.ndarray:
    """`n` unit rows around `k` random unit centres (float32 [n, dim])."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    x = centres[rng.integers(0, k, size=n)] + noise * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def objective(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> float:
    """Mean cosine of every row to its assigned centroid."""
    return float((x * centroids[labels]).sum(axis=1).mean())


def cluster(x: np.ndarray, k: int, seed: int, gpu: int | None) -> dict:
    """Labels, centroids, objective and wall time of one clustering."""
    from curation.cluster import spherical_kmeans

    t0 = time.perf_counter()
    labels, cents = spherical_kmeans(x, k, seed=seed, gpu=gpu)
    return {
        "labels": labels,
        "centroids": cents,
        "objective": objective(x, labels, cents),
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> dict:
    """Cluster on CPU and GPU, compare, write benchmarks/results/faiss_gpu.{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--noise", type=float, default=0.08)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-agree", type=float, default=0.99)
    ap.add_argument("--max-obj-diff", type=float, default=1e-3)
    ap.add_argument("--cpu-only", action="store_true", help="no GPU: run the CPU side only")
    ap.add_argument("--no-write", action="store_true", help="print only (used by the tests)")
    ns = ap.parse_args(argv)
    import faiss

    from curation.cluster import faiss_gpu_available

    x = embeddings(ns.n, ns.dim, ns.k, ns.noise, ns.seed)
    cpu = cluster(x, ns.k, ns.seed, None)
    res: dict = {
        "args": vars(ns),
        "faiss": getattr(faiss, "__version__", "?"),
        "faiss_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
        "cpu": {"objective": cpu["objective"], "seconds": round(cpu["seconds"], 3)},
    }
    if ns.cpu_only:
        res["gpu"] = None
    elif not faiss_gpu_available():
        raise SystemExit(
            "faiss_gpu_check: this faiss build has no GPU support or sees no GPU; install the "
            "`gpu` extra (faiss-gpu-cu12) on a CUDA machine"
        )
    else:
        gpu = cluster(x, ns.k, ns.seed, 0)
        agree = float((gpu["labels"] == cpu["labels"]).mean())
        rel = abs(gpu["objective"] - cpu["objective"]) / max(abs(cpu["objective"]), 1e-12)
        res["gpu"] = {"objective": gpu["objective"], "seconds": round(gpu["seconds"], 3)}
        res["label_agreement"] = agree
        res["objective_rel_diff"] = rel
        res["max_centroid_diff"] = float(np.abs(gpu["centroids"] - cpu["centroids"]).max())
        res["ok"] = agree >= ns.min_agree and rel <= ns.max_obj_diff
    lines = [
        "# FAISS spherical k-means: GPU vs CPU (`curation.cluster.spherical_kmeans`)",
        "",
        f"{ns.n} synthetic unit rows, dim {ns.dim}, k {ns.k}, noise {ns.noise}, seed {ns.seed}; "
        f"faiss {res['faiss']} ({res['faiss_gpus']} GPU(s) visible).",
        "",
        "| side | objective (mean cosine to centroid) | seconds |",
        "|---|---|---|",
        f"| cpu | {cpu['objective']:.6f} | {cpu['seconds']:.2f} |",
    ]
    if res["gpu"] is not None:
        lines += [
            f"| gpu 0 | {res['gpu']['objective']:.6f} | {res['gpu']['seconds']:.2f} |",
            "",
            f"Same label: {res['label_agreement']:.4%} (needs >= {ns.min_agree:.0%}); objective "
            f"relative difference {res['objective_rel_diff']:.2e} (needs <= {ns.max_obj_diff:g}); "
            f"largest centroid coordinate difference {res['max_centroid_diff']:.2e}. "
            f"Verdict: **{'agree' if res['ok'] else 'DISAGREE'}**.",
        ]
    md = "\n".join(lines) + "\n"
    if not ns.no_write and res["gpu"] is not None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "faiss_gpu.json").write_text(json.dumps(res, indent=2) + "\n")
        (RESULTS / "faiss_gpu.md").write_text(md)
    print(md)
    if res["gpu"] is not None and not res["ok"]:
        raise SystemExit("faiss_gpu_check: GPU and CPU clusterings disagree (see above)")
    return res


if __name__ == "__main__":
    main()
