"""Device and precision check of the scorer: the values a GPU (or bf16 autocast) run gives.

Three runs of the same scored steps from the same model and Adam state (after `warm_steps` plain
float64 steps: the first Adam steps are sign descent, where P = 1/|g| amplifies any rounding, so
they are not where precision is judged), all four estimators:

- reference: CPU, float64 (the precision the gradient-identity tests use);
- `--device`, float32: must match the reference (a device port must not change the numbers);
- `--device`, bf16 autocast (`InRunScorer(amp_dtype=torch.bfloat16)`): forward/backward in bf16,
  captured activations and gradients up-cast, contraction in fp32, values accumulated in fp64.

Reported per estimator: Pearson R and max relative error of the per-example values against the
reference, pooled over the steps, plus the training-loss difference. Needs only torch and
transformers, so it runs on a bare GPU machine (benchmarks/gpu_check.sh).

    python -m benchmarks.amp_check --device cuda
    python -m benchmarks.amp_check --device cpu     # the same check of the bf16 path on CPU
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch

from adamshap_core import ESTIMATORS, InRunScorer, build_model, plain_step

from .common import environment, write_results


@dataclass
class AmpArgs:
    """Model shape and run length of the check."""

    preset: str = "tiny"
    vocab_size: int = 512
    seq_len: int = 64
    batch_size: int = 8
    val_size: int = 8
    steps: int = 4
    warm_steps: int = 30
    lr: float = 1e-3
    device: str = "cpu"


def _batches(a: AmpArgs) -> tuple[dict, list[dict]]:
    g = torch.Generator().manual_seed(0)

    def draw(n: int) -> dict:
        # A skewed token distribution so the model learns something within a few steps.
        ids = (torch.rand(n, a.seq_len, generator=g) ** 3 * (a.vocab_size - 1)).long() + 1
        return {"input_ids": ids}

    return draw(a.val_size), [draw(a.batch_size) for _ in range(a.warm_steps + a.steps)]


def _fresh(a: AmpArgs, device: str = "cpu", dtype: torch.dtype = torch.float64):
    model = build_model(a.preset, a.vocab_size, max(a.seq_len, 128), seed=0)
    model = model.to(device=device, dtype=dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    return model, opt


def warm_state(a: AmpArgs) -> tuple[dict, dict]:
    """Model and Adam state after `warm_steps` plain float64 steps on CPU."""
    model, opt = _fresh(a)
    _, batches = _batches(a)
    for b in batches[: a.warm_steps]:
        plain_step(model, opt, b, 1.0)
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def run(
    a: AmpArgs, device: str, dtype: torch.dtype, amp: torch.dtype | None, init: tuple[dict, dict]
) -> dict[str, np.ndarray]:
    """Scored steps on `device` in `dtype` (optionally under autocast); values per estimator."""
    model, opt = _fresh(a, device, dtype)
    model.load_state_dict(init[0])
    opt.load_state_dict(copy.deepcopy(init[1]))  # cast to the params' dtype and device
    val, batches = _batches(a)
    batches = batches[a.warm_steps :]
    sc = InRunScorer(model, opt, val, estimators=ESTIMATORS, max_grad_norm=1.0, amp_dtype=amp)
    out: dict[str, list] = {e: [] for e in ESTIMATORS}
    losses = []
    for b in batches:
        step = sc.step(b)
        losses.append(step.loss)
        for e in ESTIMATORS:
            out[e].append(step.values[e].cpu().numpy())
    sc.close()
    res = {e: np.concatenate(v) for e, v in out.items()}
    res["loss"] = np.asarray(losses)
    return res


def compare(x: dict, ref: dict) -> dict:
    """Pearson R and max relative error (to the reference's largest |value|) per estimator."""
    out = {}
    for e in ESTIMATORS:
        u, v = x[e], ref[e]
        out[e] = {
            "pearson_r": float(np.corrcoef(u, v)[0, 1]),
            "max_rel_err": float(np.abs(u - v).max() / max(np.abs(v).max(), 1e-300)),
        }
    out["max_loss_diff"] = float(np.abs(x["loss"] - ref["loss"]).max())
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the three configurations and write benchmarks/results/amp_check_<device>.{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--no-write", action="store_true", help="print only (used by the tests)")
    ns = ap.parse_args(argv)
    a = AmpArgs(device=ns.device, preset=ns.preset, steps=ns.steps)
    init = warm_state(a)
    ref = run(a, "cpu", torch.float64, None, init)
    fp32 = run(a, a.device, torch.float32, None, init)
    bf16 = run(a, a.device, torch.float32, torch.bfloat16, init)
    res = {"fp32": compare(fp32, ref), "bf16_autocast": compare(bf16, ref)}
    env = environment()
    lines = [
        f"# Scorer on `{a.device}`: fp32 and bf16 autocast vs the CPU float64 reference",
        "",
        f"{a.preset}, vocab {a.vocab_size}, seq {a.seq_len}, batch {a.batch_size}, target batch "
        f"{a.val_size}, {a.steps} scored AdamW steps (lr {a.lr}, clip 1.0) after {a.warm_steps} "
        "plain float64 steps (the same start for every run), all four estimators. "
        f"Device: {env['device']}, torch {env['torch']}.",
        "",
        "| run | estimator | Pearson R vs fp64 | max rel. error | max training-loss diff |",
        "|---|---|---|---|---|",
    ]
    for name, r in res.items():
        for e in ESTIMATORS:
            lines.append(
                f"| {name} | {e} | {r[e]['pearson_r']:.6f} | {r[e]['max_rel_err']:.2e} | "
                f"{r['max_loss_diff']:.2e} |"
            )
    md = "\n".join(lines) + "\n"
    if not ns.no_write:
        tag = a.device.split(":")[0]
        write_results(f"amp_check_{tag}", {"args": asdict(a), "environment": env, **res}, md)
    print(md)
    return res


if __name__ == "__main__":
    main()
