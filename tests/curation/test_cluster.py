"""FAISS spherical k-means and the default cluster-count rule."""

import numpy as np
import pytest

from curation.cluster import default_k, spherical_kmeans
from curation.errors import UsageError


def _blobs(n_per: int = 30, k: int = 3, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[:k] * 5
    x = np.concatenate([c + rng.normal(scale=0.3, size=(n_per, d)) for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(k), n_per)


def test_default_k_rule() -> None:
    assert default_k(8) == 2
    assert default_k(200) == 10
    assert default_k(10**7) == 256
    assert default_k(1) == 1


def test_recovers_blobs_and_is_seeded() -> None:
    x, truth = _blobs()
    labels, cent = spherical_kmeans(x, 3, seed=1)
    assert labels.dtype == np.int64 and labels.shape == (90,)
    assert cent.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(cent, axis=1), 1.0, atol=1e-4)
    # each true blob maps to exactly one cluster
    assert all(len(set(labels[truth == c])) == 1 for c in range(3))
    again, _ = spherical_kmeans(x, 3, seed=1)
    np.testing.assert_array_equal(labels, again)


def test_sample_training_path() -> None:
    x, truth = _blobs()
    labels, _ = spherical_kmeans(x, 3, seed=0, max_train=30)
    assert labels.shape == (90,)
    assert set(labels) <= {0, 1, 2}


@pytest.mark.parametrize("k", [0, 91])
def test_bad_k(k: int) -> None:
    x, _ = _blobs()
    with pytest.raises(UsageError):
        spherical_kmeans(x, k, seed=0)
