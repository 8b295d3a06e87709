"""Ghost contraction vs torch.func per-example gradients, layer type by layer type."""

from __future__ import annotations

import pytest
import torch
from oracle import contract, per_example_grads
from torch import nn

from adamshap_core.batch import per_example_loss, prepare_batch
from adamshap_core.ghost import GhostCapture, UnsupportedModuleError, check_supported

from .conftest import TinyLM, make_batch


def ghost_values(model, batch, G_by_name):
    """Contract random val-side tensors G with the captured per-layer a, b of one backward."""
    cap = GhostCapture(model)
    b = prepare_batch(batch)
    cap.active = True
    loss = per_example_loss(model, b).mean()
    loss.backward()
    cap.active = False
    params = dict(model.named_parameters())
    val_side = {id(params[k]): G[None] for k, G in G_by_name.items()}
    out = cap.contract(val_side, b["input_ids"].shape[0], dtype=torch.float64)[:, 0]
    cap.remove()
    return out


def random_G(model, names=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(p.shape, generator=g, dtype=p.dtype)
        * torch.rand(p.shape, generator=g, dtype=p.dtype)
        for k, p in model.named_parameters()
        if names is None or k in names
    }


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


LAYER_GROUPS = {
    "embedding(tied with head)": ["wte.weight"],
    "position embedding": ["wpe.weight"],
    "layernorm weight+bias": ["ln.weight", "ln.bias", "ln_f.weight", "ln_f.bias"],
    "linear weight+bias": ["fc.weight", "fc.bias"],
    "linear no bias": ["proj.weight"],
}


@pytest.mark.parametrize("group", list(LAYER_GROUPS))
def test_plain_torch_layers_match_per_example_grads(tinylm, group):
    batch = make_batch(5, 9, pad_lengths=[9, 4, 7, 2, 9])
    G = random_G(tinylm, LAYER_GROUPS[group])
    got = ghost_values(tinylm, batch, G)
    want = contract(per_example_grads(tinylm, batch), G)
    assert rel_err(got, want) < 1e-4


def test_untied_head_counts_separately():
    torch.manual_seed(0)
    m = TinyLM(tied=False).double()
    batch = make_batch(4, 8)
    G = random_G(m, ["head.weight", "wte.weight"])
    got = ghost_values(m, batch, G)
    want = contract(per_example_grads(m, batch), G)
    assert rel_err(got, want) < 1e-4


GPT2_GROUPS = {
    "wte (tied lm_head)": ["transformer.wte.weight"],
    "wpe": ["transformer.wpe.weight"],
    "conv1d c_attn": ["transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias"],
    "conv1d mlp": ["transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.bias"],
    "layernorms": [
        "transformer.h.0.ln_1.weight",
        "transformer.ln_f.bias",
        "transformer.ln_f.weight",
    ],
    "all": None,
}


@pytest.mark.parametrize("group", list(GPT2_GROUPS))
def test_gpt2_layers_match_per_example_grads(gpt2, group):
    batch = make_batch(4, 12, pad_lengths=[12, 5, 9, 3])
    G = random_G(gpt2, GPT2_GROUPS[group])
    got = ghost_values(gpt2, batch, G)
    want = contract(per_example_grads(gpt2, batch), G)
    assert rel_err(got, want) < 1e-4


def test_tied_weight_sums_both_uses(gpt2):
    """Dropping either use of the tied matrix breaks agreement: both contribute."""
    batch = make_batch(3, 10)
    G = random_G(gpt2, ["transformer.wte.weight"])
    got = ghost_values(gpt2, batch, G)
    want = contract(per_example_grads(gpt2, batch), G)
    cap = GhostCapture(gpt2)
    assert sum(u.module.weight is gpt2.transformer.wte.weight for u in cap.uses) == 2
    cap.remove()
    assert rel_err(got, want) < 1e-4


def test_left_padding_matches(gpt2):
    batch = make_batch(3, 10)
    batch["attention_mask"][1, :4] = 0
    batch["input_ids"][1, :4] = 0
    G = random_G(gpt2)
    got = ghost_values(gpt2, batch, G)
    want = contract(per_example_grads(gpt2, batch), G)
    assert rel_err(got, want) < 1e-4


def test_loss_mask_only_counts_marked_tokens(gpt2):
    batch = make_batch(3, 10)
    lm = torch.ones(3, 10, dtype=torch.long)
    lm[:, :6] = 0  # prompt tokens
    batch["loss_mask"] = lm
    G = random_G(gpt2)
    got = ghost_values(gpt2, batch, G)
    want = contract(per_example_grads(gpt2, batch), G)
    assert rel_err(got, want) < 1e-4


def test_embedding_padding_idx():
    class M(TinyLM):
        def __init__(self):
            super().__init__(tied=False)
            self.wte = nn.Embedding(53, 12, padding_idx=0)

    torch.manual_seed(0)
    m = M().double()
    batch = make_batch(3, 8)
    batch["input_ids"][:, 2] = 0
    G = random_G(m, ["wte.weight"])
    got = ghost_values(m, batch, G)
    want = contract(per_example_grads(m, batch), G)
    assert rel_err(got, want) < 1e-4


def test_unsupported_module_raises_naming_it():
    class WithConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.conv = nn.Conv1d(4, 4, 3)

    with pytest.raises(UnsupportedModuleError, match=r"'conv' \(Conv1d\)"):
        check_supported(WithConv())


def test_root_level_parameter_raises():
    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))
            self.lin = nn.Linear(3, 3)

    with pytest.raises(UnsupportedModuleError, match="<root>"):
        check_supported(Bare())


def test_frozen_unsupported_module_is_fine():
    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 4, 3)
            self.conv.requires_grad_(False)
            self.lin = nn.Linear(3, 3)

    check_supported(Frozen())
