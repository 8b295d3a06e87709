"""Mean-pooled, L2-normalised proxy embeddings."""

from types import SimpleNamespace

import numpy as np
import torch

from adamshap_core import build_model
from curation.embed import embed_corpus, ids_key


def test_embed_masks_padding_and_normalises() -> None:
    model = build_model("tiny", vocab_size=50, n_positions=16, seed=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, size=(5, 8))
    attn = np.ones_like(ids)
    attn[1, 4:] = 0
    enc = SimpleNamespace(input_ids=ids, attention_mask=attn)
    emb = embed_corpus(model, enc, batch_size=2, progress=False)
    assert emb.dtype == np.float32 and emb.shape == (5, 128)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # padding content must not matter
    ids2 = ids.copy()
    ids2[1, 4:] = 7
    emb2 = embed_corpus(model, SimpleNamespace(input_ids=ids2, attention_mask=attn), progress=False)
    np.testing.assert_allclose(emb[1], emb2[1], atol=1e-5)
    # matches a manual mean over the real tokens of row 1
    with torch.no_grad():
        h = model.transformer(input_ids=torch.as_tensor(ids[1:2, :4])).last_hidden_state[0]
    v = h.mean(0).numpy()
    np.testing.assert_allclose(emb[1], v / np.linalg.norm(v), atol=1e-4)
    assert model.training  # mode restored


def test_ids_key_order_sensitive() -> None:
    assert ids_key(["a", "b"]) != ids_key(["b", "a"])
    assert ids_key(["ab"]) != ids_key(["a", "b"])


def test_prepare_for_similarity_centres_and_renormalises() -> None:
    from curation.embed import prepare_for_similarity

    rng = np.random.default_rng(0)
    shared = rng.normal(size=16)
    dev = rng.normal(size=(50, 16))
    raw = shared * 20 + dev  # nearly parallel rows, as from an undertrained proxy
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    cos_raw = raw @ raw.T
    assert cos_raw[np.triu_indices(50, 1)].min() > 0.9
    out = prepare_for_similarity(raw.astype(np.float32))
    assert out.dtype == np.float32 and out.shape == raw.shape
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    c = raw - raw.mean(axis=0)
    np.testing.assert_allclose(out, c / np.linalg.norm(c, axis=1, keepdims=True), atol=1e-5)
    # cosine now reflects the differences: typical pairs are far from parallel
    cos = (out @ out.T)[np.triu_indices(50, 1)]
    assert np.median(np.abs(cos)) < 0.5 and (cos > 0.98).mean() < 0.01


def test_prepare_for_similarity_degenerate_inputs() -> None:
    from curation.embed import prepare_for_similarity

    one = np.array([[3.0, 4.0]], np.float32)
    np.testing.assert_allclose(prepare_for_similarity(one), [[0.6, 0.8]], atol=1e-6)
    same = np.tile(np.array([[0.6, 0.8]], np.float32), (5, 1))
    np.testing.assert_allclose(prepare_for_similarity(same), same, atol=1e-6)  # no spread
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], np.float32)  # row 2 is the mean
    out = prepare_for_similarity(x)
    np.testing.assert_allclose(out[2], 0.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out[:2], axis=1), 1.0, atol=1e-5)
