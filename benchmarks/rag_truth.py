"""Source-removal truth for the RAG benchmark: does dropping a retrieval source lower the loss?

    python -m benchmarks.rag_truth [--scores RUN_DIR] [--seeds 3] [--epochs 2]

The question behind the RAG benchmark's "contradicting contexts rank last": is `kb-contradict`
actually the most harmful source for the target at this scale? Same protocol as
`benchmarks.instruct_truth` (its `removal_truth`): the scoring run of `benchmarks.rag` (read, or
made), a fresh proxy retrained on the full mixture and on the mixture minus each retrieval source
for the same number of steps (warm start + epochs x ceil(n_train / batch)), paired seeds. The loss
is measured on an *evaluation split*: answer-bearing rows (`Context: [kb-answer] term: answer`,
question, answer) for terms the corpus uses nowhere (neither as a question nor in a passage),
answer tokens only. Beside the arms: the evaluation split's cross-entropy under the training
mixture's unigram model (answer tokens). Writes benchmarks/results/rag_truth[_eN].{json,md}
(N = epochs, when not the scoring run's 2).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

import polars as pl

from benchmarks.instruct import split
from benchmarks.instruct_truth import check_settings, removal_truth, truth_main
from benchmarks.rag import SETTINGS, TARGET, score


def evaluation_split(df: pl.DataFrame, n_eval: int, seed: int) -> pl.DataFrame:
    """`n_eval` answer-bearing rows for terms and answers the RAG corpus `df` uses nowhere."""
    from curation.corpus import DEFAULT_TEMPLATE, join_template
    from curation.instruct_corpus import READERS, _clip
    from curation.rag_corpus import ANSWER_CHARS, TERM_TASKS, _term

    used_terms = {t.lower() for t in df["term"].to_list()}
    used_terms |= {p.split(": ", 1)[0].lower() for p in df["passage"].to_list()}
    used_text = "\n".join(df["passage"].to_list() + df["response"].to_list())
    fresh: dict[str, tuple[str, str]] = {}  # lower-cased term -> (term, answer)
    for task in TERM_TASKS:
        for p, r in sorted(set(READERS[task]())):
            term, answer = _term(p), _clip(r, ANSWER_CHARS)
            if term.lower() in used_terms or term.lower() in fresh or answer in used_text:
                continue
            fresh[term.lower()] = (term, answer)
    if len(fresh) < n_eval:
        raise SystemExit(f"only {len(fresh)} unused terms; ask for fewer")
    picked = [fresh[k] for k in random.Random(f"{seed}:eval").sample(sorted(fresh), n_eval)]
    prompts = [f"Context: [{TARGET}] {t}: {a}\nQuestion: What does '{t}' mean?" for t, a in picked]
    answers = [a for _, a in picked]
    return pl.DataFrame(
        {
            "id": [f"eval-{k:05d}" for k in range(n_eval)],
            "source": [f"{TARGET}-eval"] * n_eval,
            "prompt": prompts,
            "response": answers,
            "text": [join_template(DEFAULT_TEMPLATE, p, r)[0] for p, r in zip(prompts, answers)],
        }
    )


def measure(cfg: argparse.Namespace) -> dict[str, Any]:
    """Score (or reuse), retrain every arm on every seed, and summarise."""
    from curation.rag_corpus import rag_frame

    run_dir = Path(cfg.scores) if cfg.scores else score(cfg, Path(cfg.work))
    check_settings(run_dir, SETTINGS)
    df = rag_frame(cfg.per_source, cfg.seed)
    train, target = split(df, 0.1, cfg.seed, source=TARGET)
    frames = {
        "train": train.drop("passage", "term"),
        "target": target.drop("passage", "term"),
        "evaluation": evaluation_split(df, cfg.n_eval, cfg.seed),
    }
    res = removal_truth(cfg, run_dir, frames, first="kb-contradict")
    arms = res["arms"]
    by_removal = sorted(res["spearman_sources"], key=lambda s: arms[s]["delta_mean"])
    return {
        "command": "python -m benchmarks.rag_truth"
        + (f" --epochs {cfg.epochs}" if cfg.epochs != SETTINGS["epochs"] else ""),
        "title": "RAG benchmark",
        "mixture": "benchmarks.rag",
        "eval_what": "answer-bearing rows for terms",
        "focus": "kb-contradict",
        "settings": ", ".join(f"{k} {v}" for k, v in SETTINGS.items()),
        "most_harmful_by_removal": by_removal[0] if by_removal else None,
        **res,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the measurement; write benchmarks/results/rag_truth[_eN].{json,md}."""
    return truth_main(argv, "rag_truth", measure, "bench-rag", epochs=SETTINGS["epochs"])


if __name__ == "__main__":
    raise SystemExit(main())
