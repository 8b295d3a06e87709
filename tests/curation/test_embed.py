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
