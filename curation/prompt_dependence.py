"""Prompt dependence: how much a proxy's loss on a response rises when its prompt is swapped.

For an instruction row (prompt p_i, response r_i), `prompt_gain_i` is

    loss(r_i | p_{pi(i)}) - loss(r_i | p_i)      (nats per counted response token)

averaged over `draws` random derangements pi of the rows (no row keeps its own prompt, nor a
prompt with the same text where another is available). The loss is the response-only mean token
loss the scorer uses (curation.encode: the template joins prompt and response, `loss_mask`
covers the response's tokens). A response that answers its prompt gains (the proxy predicts it
better from its own prompt); a response paired with the wrong prompt, as in a shuffled source,
gains about nothing. A direct wrong-answer signal that needs no target and no gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from curation.corpus import DEFAULT_TEMPLATE
from curation.errors import UsageError


@dataclass
class PromptGains:
    """Per-row results; `other_loss` and `perms` have one row per draw."""

    gain: np.ndarray  # [N] mean over draws of other_loss - own_loss
    own_loss: np.ndarray  # [N]
    other_loss: np.ndarray  # [draws, N]
    perms: np.ndarray  # [draws, N]: row i took the prompt of row perms[d, i]


def derangement(prompts: list[str], rng: np.random.Generator, tries: int = 1000) -> np.ndarray:
    """A random permutation with no row keeping its own prompt text (nor its own index).

    Uniform over such permutations (rejection sampling, then a repair pass by swaps if `tries`
    draws all failed, e.g. when one prompt text is most of the rows).
    """
    n = len(prompts)
    if n < 2:
        raise UsageError("prompt swapping needs at least two rows")
    codes = np.unique(np.asarray(prompts, dtype=object), return_inverse=True)[1].ravel()
    if len(set(codes.tolist())) == 1:
        # one prompt text: only an index derangement is possible (the gain is then 0)
        cycle = rng.permutation(n)
        perm = np.empty(n, np.int64)
        perm[cycle] = np.roll(cycle, -1)
        return perm
    for _ in range(tries):
        perm = rng.permutation(n)
        if not (codes[perm] == codes).any():
            return perm
    perm = rng.permutation(n)
    for i in np.flatnonzero(codes[perm] == codes):
        if codes[perm[i]] != codes[i]:
            continue
        for j in rng.permutation(n):
            if codes[perm[j]] != codes[i] and codes[perm[i]] != codes[j]:
                perm[i], perm[j] = perm[j], perm[i]
                break
    return perm


@torch.no_grad()
def response_losses(
    model: torch.nn.Module,
    tokenizer,
    seq_len: int,
    prompts: list[str],
    responses: list[str],
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 64,
) -> np.ndarray:
    """Response-only mean token loss of every (prompt, response) pair, as the scorer counts it."""
    from adamshap_core import per_example_loss, prepare_batch
    from curation.encode import encode_corpus

    n = len(prompts)
    if len(responses) != n:
        raise UsageError("prompts and responses differ in length")
    df = pl.DataFrame(
        {
            "id": [str(i) for i in range(n)],
            "source": [""] * n,
            "text": [""] * n,
            "prompt": prompts,
            "response": responses,
        },
        schema={k: pl.String for k in ("id", "source", "text", "prompt", "response")},
    )
    enc = encode_corpus(df, tokenizer, seq_len, template=template)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for s in range(0, n, batch_size):
        b = prepare_batch(enc.batch(np.arange(s, min(n, s + batch_size))), device)
        out.append(per_example_loss(model, b).double().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0)


@dataclass(frozen=True)
class LossModel:
    """A proxy as `prompt_gains` reads it: model, tokenizer, context, template, batch size."""

    model: torch.nn.Module
    tokenizer: Any
    seq_len: int
    template: str = DEFAULT_TEMPLATE
    batch_size: int = 64

    def losses(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """`response_losses` of the pairs under this proxy."""
        return response_losses(
            self.model,
            self.tokenizer,
            self.seq_len,
            prompts,
            responses,
            self.template,
            self.batch_size,
        )


def prompt_gains(
    proxy: LossModel, prompts: list[str], responses: list[str], draws: int = 2, seed: int = 0
) -> PromptGains:
    """Each row's loss rise when its prompt is replaced by another row's (see module doc)."""
    if draws < 1:
        raise UsageError(f"draws must be >= 1, got {draws}")
    rng = np.random.default_rng(seed)
    own = proxy.losses(prompts, responses)
    perms, other = [], []
    for _ in range(draws):
        perm = derangement(prompts, rng)
        swapped = [prompts[j] for j in perm]
        perms.append(perm)
        other.append(proxy.losses(swapped, responses))
    other_arr = np.stack(other)
    return PromptGains(
        gain=(other_arr - own[None, :]).mean(axis=0),
        own_loss=own,
        other_loss=other_arr,
        perms=np.stack(perms),
    )


def run_prompt_gains(
    run_dir: str | Path,
    prompts: list[str],
    responses: list[str],
    draws: int = 2,
    seed: int = 0,
    device: str = "cpu",
) -> PromptGains:
    """`prompt_gains` under a scoring run's final proxy, tokenizer, context and template."""
    from curation.embed import _run_seq_len
    from curation.proxy_loss import RunProxy

    proxy = RunProxy(run_dir, device)
    _, template = _run_seq_len(Path(run_dir))
    model = LossModel(
        proxy.model,
        proxy.tokenizer,
        proxy.seq_len,
        template or DEFAULT_TEMPLATE,
        proxy.batch_size,
    )
    return prompt_gains(model, prompts, responses, draws=draws, seed=seed)
