"""Document embeddings from the proxy: mean-pooled last hidden states, L2-normalised, cached.

`embed_corpus` / `embed_run` return the raw pooled directions (what is cached). Anything that
compares documents by cosine (k-means clusters, near-duplicate candidates) must first pass them
through `prepare_for_similarity`, which removes the corpus-mean direction: an undertrained proxy
maps every document to nearly the same direction (pairwise cosine > 0.98), so raw cosine measures
the shared direction, not the differences between documents.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn
from tqdm.auto import tqdm

from curation.run_dir import RunDir


def _base(model: nn.Module) -> nn.Module:
    """The transformer body (no LM head) of an HF model, or the model itself."""
    return getattr(model, "base_model", model)


@torch.no_grad()
def embed_corpus(
    model: nn.Module, encoded: Any, batch_size: int = 64, progress: bool = True
) -> np.ndarray:
    """Mean of the last hidden states over real tokens, L2-normalised: float32 [N, d]."""
    ids = np.asarray(encoded.input_ids)
    attn = getattr(encoded, "attention_mask", None)
    attn = np.ones_like(ids) if attn is None else np.asarray(attn)
    n = ids.shape[0]
    body = _base(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    d = int(getattr(getattr(model, "config", None), "n_embd", 0) or 0)
    out: list[np.ndarray] = []
    try:
        for start in tqdm(
            range(0, n, batch_size), desc="embed", unit="batch", disable=not progress
        ):
            a = torch.as_tensor(attn[start : start + batch_size], device=device).long()
            x = torch.as_tensor(ids[start : start + batch_size], device=device).long()
            pos = (a.cumsum(dim=1) - 1).clamp(min=0)
            h = body(input_ids=x, attention_mask=a, position_ids=pos)
            h = (h.last_hidden_state if hasattr(h, "last_hidden_state") else h[0]).float()
            m = a.unsqueeze(-1).float()
            pooled = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
            norm = pooled.norm(dim=1, keepdim=True).clamp(min=1e-12)
            out.append((pooled / norm).cpu().numpy().astype(np.float32))
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, d), dtype=np.float32)
    return np.concatenate(out, axis=0)


_BLOCK = 1 << 14  # rows per float64 block in prepare_for_similarity


def prepare_for_similarity(emb: np.ndarray, rel_tol: float = 1e-4) -> np.ndarray:
    """Centre rows on their mean and re-normalise to unit length: float32 [N, d].

    Cosine between the returned rows is the cosine of the documents' deviations from the
    corpus mean. Rows (almost) equal to the mean (centred norm below `rel_tol` times the median
    centred norm) become zero vectors: they have no direction of their own, so they are similar
    to nothing. With fewer than two rows, or when every row is the same (all centred norms zero),
    the input is returned L2-normalised and uncentred: there is no spread to measure.
    """
    x = np.asarray(emb)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array [N, d], got shape {x.shape}")

    def unit(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        nrm = np.linalg.norm(a, axis=1, keepdims=True)
        return np.where(nrm > 0, a / np.where(nrm > 0, nrm, 1.0), 0.0)

    if x.shape[0] < 2:
        return unit(x).astype(np.float32)
    # float64 arithmetic as before, but a block of rows at a time: the float64 copies of a
    # 10^6 x 256 input would otherwise take several GiB. Rows are independent, so the result is
    # the same to the bit; the mean adds rows in the same order as on a float64 copy.
    mean = x.mean(axis=0, dtype=np.float64, keepdims=True)
    n = x.shape[0]
    nrm = np.empty(n, np.float64)
    for a in range(0, n, _BLOCK):
        c = np.asarray(x[a : a + _BLOCK], dtype=np.float64) - mean
        nrm[a : a + _BLOCK] = np.linalg.norm(c, axis=1)
    med = float(np.median(nrm))
    if not np.isfinite(med) or nrm.max() <= 1e-12:
        out = np.empty(x.shape, np.float32)
        for a in range(0, n, _BLOCK):
            out[a : a + _BLOCK] = unit(x[a : a + _BLOCK])
        return out
    tiny = nrm <= rel_tol * max(med, 1e-12)
    out = np.empty(x.shape, np.float32)
    for a in range(0, n, _BLOCK):
        c = np.asarray(x[a : a + _BLOCK], dtype=np.float64) - mean
        blk = c / np.where(tiny[a : a + _BLOCK], 1.0, nrm[a : a + _BLOCK])[:, None]
        blk[tiny[a : a + _BLOCK]] = 0.0
        out[a : a + _BLOCK] = blk
    return out


def document_token_ids(df: pl.DataFrame, tokenizer: Any, template: str | None = None) -> list:
    """Untruncated token ids of every document (no special tokens), for token-level dedup."""
    from curation.corpus import DEFAULT_TEMPLATE, join_template
    from curation.encode import _encodings, _plain_backend

    texts = [str(t) if t is not None else "" for t in df["text"].to_list()]
    if "prompt" in df.columns and "response" in df.columns:
        tpl = template or DEFAULT_TEMPLATE
        for i, (p, r) in enumerate(zip(df["prompt"].to_list(), df["response"].to_list())):
            if p is not None and r is not None:
                texts[i] = join_template(tpl, p, r)[0]
    return [
        np.asarray(e.ids, dtype=np.int64) for _, e in _encodings(_plain_backend(tokenizer), texts)
    ]


def run_token_ids(run_dir: str | Path, df: pl.DataFrame) -> list:
    """`document_token_ids` with RUN_DIR's tokenizer and template."""
    from curation.tokenizer import load_tokenizer

    run_dir = Path(run_dir)
    _, template = _run_seq_len(run_dir)
    return document_token_ids(df, load_tokenizer(RunDir(run_dir).tokenizer), template)


def ids_key(ids: list[str] | pl.Series) -> str:
    """sha256 over the ordered document ids (the embedding cache key)."""
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def content_key(df: pl.DataFrame) -> str:
    """sha256 over the ordered (id, text) pairs: the embedding cache key.

    Keyed by content, not ids alone, so an edited corpus that keeps its ids is embedded again.
    """
    h = hashlib.sha256()
    for i, t in zip(df["id"].to_list(), df["text"].to_list()):
        for part in (str(i), str(t)):
            b = part.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    return h.hexdigest()


def _run_seq_len(run_dir: Path, default: int = 256) -> tuple[int, Any]:
    """Read seq_len and template from RUN_DIR/run.json (flat or under 'args')."""
    try:
        args = RunDir(run_dir).run_args()
    except (OSError, ValueError):
        return default, None
    return int(args.get("seq_len", default)), args.get("template")


def embed_run(
    run_dir: str | Path,
    corpus_df: pl.DataFrame,
    batch_size: int = 64,
    progress: bool = True,
    device: str = "cpu",
) -> np.ndarray:
    """Embed `corpus_df` with RUN_DIR's final proxy (on `device`); cached in RUN_DIR.

    The cache (embeddings.npy) is keyed by the documents' ids and texts (`content_key`).
    """
    from transformers import GPT2LMHeadModel

    from curation.atomic import atomic_path, atomic_write_text
    from curation.encode import encode_corpus
    from curation.tokenizer import load_tokenizer

    run = RunDir(run_dir)
    key = content_key(corpus_df)
    cache, meta_path = run.embeddings, run.embeddings_meta
    if cache.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("content_sha256") == key:
                emb = np.load(cache)
                if emb.shape[0] == corpus_df.height:
                    return emb
        except (OSError, ValueError):
            pass
    model = GPT2LMHeadModel.from_pretrained(run.final_model).to(device)
    tok = load_tokenizer(run.tokenizer)
    seq_len, template = _run_seq_len(run.path)
    kwargs = {} if template is None else {"template": template}
    encoded = encode_corpus(corpus_df, tok, seq_len, **kwargs)
    emb = embed_corpus(model, encoded, batch_size=batch_size, progress=progress)
    meta_path.unlink(missing_ok=True)  # the key goes last: never beside another array
    with atomic_path(cache) as tmp, open(tmp, "wb") as f:
        np.save(f, emb)
    atomic_write_text(
        meta_path,
        json.dumps(
            {"content_sha256": key, "n": int(emb.shape[0]), "d": int(emb.shape[1])}, indent=2
        ),
    )
    return emb
