"""Per-source value report of a scoring run: `report.md` and a self-contained `report.html`."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import polars as pl

from .aggregate import aggregate_run
from .bootstrap import LEVEL, source_bootstrap
from .ledger import read_ledger
from .render import Figure, Page, Section, Table, fmt, write_page
from .run_dir import COMPLETE_MARKER, PLOT_DIR, REPORT_STEM, RunDir

N_TOP = 10
SNIPPET_CHARS = 160


def _primary_estimator(columns: list[str]) -> str:
    ests = [c.removeprefix("mean_") for c in columns if c.startswith("mean_")]
    for pref in ("adam2", "adam_loo", "adam", "sgd"):
        if pref in ests:
            return pref
    return ests[0]


def _snippet(text: str | None) -> str:
    t = " ".join((text or "").split())
    return t if len(t) <= SNIPPET_CHARS else t[: SNIPPET_CHARS - 1] + "…"


def _texts(run_dir: Path, ids: list[str]) -> dict[str, str]:
    """Texts of some example ids, read from the corpus named in run.json (empty on failure)."""
    import tempfile

    try:
        from .corpus import FieldMap, read_corpus

        args = RunDir(run_dir).read_run_json()["args"]
        fields = FieldMap(**args["fields"]) if args.get("fields") else FieldMap()
        extra = {"template": args["template"]} if args.get("template") else {}
        with tempfile.TemporaryDirectory() as tmp:
            df = read_corpus(
                args["corpus"],
                fields=fields,
                on_bad_rows=args.get("on_bad_rows", "error"),
                rejects_path=Path(tmp) / "rejects.jsonl",
                **extra,
            ).df
        df = df.filter(pl.col("id").is_in(ids))
        texts = dict(zip(df["id"].to_list(), df["text"].to_list()))
        if "prompt" in df.columns:  # instruction rows read as prompt → response
            for i, p, r in zip(df["id"], df["prompt"], df["response"]):
                if p is not None and r is not None:
                    texts[i] = f"{_snippet(p)} → {r}"
        return texts
    except Exception:
        return {}


# ----------------------------------------------------------------------------- plots


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _plots(
    by_src: pl.DataFrame, by_ex: pl.DataFrame, ledger: pl.DataFrame, est: str
) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    srcs = by_src["source"].to_list()

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, col, title in (
        (axes[0], f"total_{est}", "total value"),
        (axes[1], f"mean_{est}", "mean value per example"),
    ):
        vals = by_src[col].to_list()
        ax.bar(srcs, vals, color=["#3a7" if v >= 0 else "#c44" for v in vals])
        ax.axhline(0, color="#888", lw=0.8)
        ax.set_title(f"{title} by source ({est})")
        ax.tick_params(axis="x", rotation=30)
    out["value_by_source"] = _png(fig)

    fig, ax = plt.subplots(figsize=(11, 4))
    data = [by_ex.filter(pl.col("source") == s)[f"value_{est}"].to_numpy() for s in srcs]
    ax.boxplot(data, showfliers=True, flierprops={"markersize": 2})
    ax.set_xticks(range(1, len(srcs) + 1), srcs, rotation=30)
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_title(f"distribution of example values per source ({est})")
    out["value_distribution"] = _png(fig)

    fig, ax = plt.subplots(figsize=(11, 4))
    v = by_ex.sort(f"value_{est}", descending=True)[f"value_{est}"].to_numpy()
    ax.plot(range(1, len(v) + 1), v.cumsum(), color="#357")
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_xlabel("examples, sorted by value (highest first)")
    ax.set_ylabel("cumulative value")
    ax.set_title(f"cumulative value of the corpus ({est})")
    out["cumulative_value"] = _png(fig)

    fig, ax = plt.subplots(figsize=(11, 4))
    per_step = (
        ledger.group_by("step", "source")
        .agg(pl.col(f"value_{est}").sum())
        .sort("step")
        .pivot(on="source", index="step", values=f"value_{est}")
        .sort("step")
        .fill_null(0.0)
    )
    for s in srcs:
        if s in per_step.columns:
            ax.plot(per_step["step"].to_numpy(), per_step[s].cum_sum().to_numpy(), label=s)
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel("cumulative value")
    ax.set_title(f"value per source over training ({est})")
    ax.legend(fontsize=8)
    out["value_over_steps"] = _png(fig)
    return out


# ----------------------------------------------------------------------------- tables

PLOT_TITLES = {
    "value_by_source": "Value by source",
    "value_distribution": "Value distribution per source",
    "cumulative_value": "Cumulative value of the corpus, sorted by value",
    "value_over_steps": "Value per source over training steps",
}


def _source_table(by_src: pl.DataFrame, est: str) -> Table:
    cols = ["source", "n_examples", "n_tokens"]
    cols += [f"{k}_{est}" for k in ("total", "mean", "share", "frac_negative")]
    return Table(cols, [list(r) for r in by_src.select(cols).iter_rows()])


def _verdict(lo: float, hi: float) -> str:
    return "helps" if lo > 0 else "hurts" if hi < 0 else "unclear (CI spans 0)"


def _ci_table(ci: pl.DataFrame) -> Table:
    """Sources ranked by mean example value, each with a bootstrap CI of that mean."""
    cols = ["rank", "source", "n_examples", "mean", "ci_low", "ci_high", "frac_negative"]
    rows = [list(r) for r in ci.select(cols).iter_rows()]
    for r, lo, hi in zip(rows, ci["ci_low"], ci["ci_high"]):
        r.append(_verdict(lo, hi))
    return Table(cols + ["verdict"], rows)


def _answer(ci: pl.DataFrame, est: str) -> list[str]:
    """Which sources help most and least (from the bootstrap table), and how many clearly help."""

    def line(what: str, r: dict[str, Any]) -> str:
        return (
            f"{what}: **{r['source']}** (mean value per example {fmt(r['mean'])}, "
            f"{LEVEL:.0%} CI {fmt(r['ci_low'])} to {fmt(r['ci_high'])}: "
            f"{_verdict(r['ci_low'], r['ci_high'])})"
        )

    rows = ci.to_dicts()
    out = [line("Helps most", rows[0])]
    if len(rows) > 1:
        out.append(line("Helps least", rows[-1]))
    helps = sum(r["ci_low"] > 0 for r in rows)
    hurts = sum(r["ci_high"] < 0 for r in rows)
    out.append(
        f"Of {len(rows)} sources, {helps} clearly help, {hurts} clearly hurt and "
        f"{len(rows) - helps - hurts} are unclear (estimator `{est}`)"
    )
    return out


def _estimator_table(by_src: pl.DataFrame) -> Table:
    cols = ["source"] + [c for c in by_src.columns if c.startswith("mean_")]
    return Table(cols, [list(r) for r in by_src.select(cols).iter_rows()])


def _example_table(df: pl.DataFrame, est: str, texts: dict[str, str]) -> Table:
    head = ["id", "source", f"value_{est}", "n_steps", "text"]
    rows = [
        [r["id"], r["source"], r[f"value_{est}"], r["n_steps"], _snippet(texts.get(r["id"]))]
        for r in df.iter_rows(named=True)
    ]
    return Table(head, rows)


def _model_line(run_dir: Path, a: dict[str, Any]) -> str:
    """Which model (checkpoint or fresh preset, with its shape) and which tokenizer the run used."""
    shape = ""
    try:
        cfg = json.loads((RunDir(run_dir).final_model / "config.json").read_text())
        shape = f" ({cfg['n_layer']} layers x {cfg['n_embd']}, vocab {cfg['vocab_size']})"
    except (OSError, KeyError, ValueError):
        pass
    if a.get("model"):
        model = f"model: warm start from checkpoint `{a['model']}`{shape}"
    else:
        model = f"model: fresh `{a['preset']}` preset{shape}"
    if a.get("tokenizer"):
        tok = f"`{a['tokenizer']}`"
    elif a.get("model") and (Path(a["model"]) / "tokenizer.json").exists():
        tok = f"`{a['model']}` (the checkpoint's own)"
    else:
        tok = f"byte-level BPE trained on the corpus (vocab size {a.get('vocab_size')})"
    return f"{model}; tokenizer: {tok}"


def _summary(run_dir: Path, ledger: pl.DataFrame, by_ex: pl.DataFrame) -> list[str]:
    lines = []
    try:
        rec = RunDir(run_dir).read_run_json()
        a = rec["args"]
        lines.append(f"corpus `{a['corpus']}`, target `{a['target']}`")
        lines.append(_model_line(run_dir, a))
        lines.append(
            f"seq_len {a['seq_len']}, "
            f"batch {a['batch_size']}, target batch {a['target_batch_size']}, epochs {a['epochs']}, "
            f"warm start {a['warm_start_steps']} steps, lr {a['lr']}, seed {a['seed']}"
        )
    except (OSError, KeyError, ValueError):
        pass
    line = momentum_line(run_dir)
    if line:
        lines.append(line)
    lines.append(
        f"{by_ex.height} examples scored over {ledger['step'].n_unique()} steps "
        f"(steps {ledger['step'].min()}–{ledger['step'].max()})"
    )
    ex_path = RunDir(run_dir).examples
    if ex_path.exists():
        ex = pl.read_parquet(ex_path)
        if "truncated" in ex.columns:
            lines.append(
                f"{int(ex['truncated'].sum())} of {ex.height} examples truncated to the context length"
            )
    return lines


def momentum_line(run_dir: Path) -> str | None:
    """What the `_prop` columns hold, and which steps' windows the end of the run cut short."""
    try:
        rec = RunDir(run_dir).read_run_json()
        k = int(rec["args"].get("momentum_window") or 0)
    except (OSError, KeyError, ValueError, TypeError):
        return None
    if k <= 0:
        return None
    line = (
        f"momentum-propagated values (`value_<est>_prop`): own value + carry-over through Adam's "
        f"first moment over the {k} steps after each draw"
    )
    flushed = (rec.get("momentum") or {}).get("flushed_at_end") or []
    if flushed:
        first, last = flushed[0], flushed[-1]
        line += (
            f"; the last {len(flushed)} scored steps ({first['step']}–{last['step']}) were "
            f"flushed at the end of the run with {first['steps_covered']}–"
            f"{last['steps_covered']} later steps instead of {k}"
        )
    return line


def unfinished_note(run_dir: Path, n_scored: int) -> str | None:
    """A loud one-line warning when the run has no completion marker, else None."""
    import sys

    if RunDir(run_dir).is_complete():
        return None
    ex_path = RunDir(run_dir).examples
    total = pl.read_parquet(ex_path).height if ex_path.exists() else None
    of = f" of {total}" if total is not None else ""
    note = (
        f"UNFINISHED RUN: {n_scored}{of} examples scored so far and the run has no "
        f"{COMPLETE_MARKER} marker, so every number here is partial; rerun the same "
        "`adamshap score` command to finish it, then `adamshap report` again"
    )
    print(f"warning: {note}", file=sys.stderr)
    return note


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write `report.md` and a self-contained `report.html` for a run; return both paths.

    A run without its completion marker gets a loud UNFINISHED warning (stderr and the report).
    """
    run = RunDir(run_dir)
    run_dir = run.path
    if not run.values_by_source.exists() or not run.values_by_example.exists():
        aggregate_run(run_dir)
    by_src = pl.read_parquet(run.values_by_source)
    by_ex = pl.read_parquet(run.values_by_example)
    ledger = read_ledger(run_dir)
    est = _primary_estimator(by_src.columns)
    plots = _plots(by_src, by_ex, ledger, est)
    ranked = by_ex.sort([f"value_{est}", "id"], descending=[True, False])
    top, bottom = ranked.head(N_TOP), ranked.tail(N_TOP).reverse()
    texts = _texts(run_dir, top["id"].to_list() + bottom["id"].to_list())
    warn = unfinished_note(run_dir, by_ex.height)
    ci = source_bootstrap(by_ex, f"value_{est}")
    note = (
        f"Values are Adam-aware In-Run Data Shapley values summed over the run (positive = the example "
        f"lowered the target loss). Plots and rankings use `{est}`. `share` is the signed share of the "
        "summed value (shares add to 1); `mean` is the mean value per example."
    )
    figures = [
        Section(title, figure=Figure(title, plots[key], f"{PLOT_DIR}/{key}.png"))
        for key, title in PLOT_TITLES.items()
    ]
    page = Page(
        title="Data value report",
        answer=_answer(ci, est),
        alerts=[warn] if warn else [],
        note=note,
        details=_summary(run_dir, ledger, by_ex),
        sections=[
            Section(
                f"Per-source mean with {LEVEL:.0%} bootstrap CI over examples ({est})",
                table=_ci_table(ci),
            ),
            *figures,
            Section(f"Per source ({est})", table=_source_table(by_src, est)),
            Section("Mean value per example, every estimator", table=_estimator_table(by_src)),
            Section(f"Top {N_TOP} examples", table=_example_table(top, est, texts)),
            Section(f"Bottom {N_TOP} examples", table=_example_table(bottom, est, texts)),
        ],
    )
    return write_page(run_dir, REPORT_STEM, page)
