"""The report pages (score, prune by row, prune by source, verify): one renderer, answer first,
one Markdown-table writer, a cluster map that separates clusters, and every image loading in a
real browser (headless Chromium; in CI a missing Chromium fails the test, it does not skip)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curation.render import Figure, Page, Section, Table, md_table, render_html, render_markdown
from tests.data_guard import guard_active

SOURCES = ("good", "middling", "harmful")
MEANS = {"good": 0.02, "middling": 0.001, "harmful": -0.015}  # per-example value per step
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome")
IMG_CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter((i) => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0);
  document.body.setAttribute("data-img-check", imgs.length + ":" + ok.length);
});
</script>"""


# ----------------------------------------------------------------------------- pages


def _score_run(run: Path, complete: bool = True) -> Path:
    """A scoring-run folder with a synthetic ledger: 3 sources of known mean value."""
    from curation.aggregate import aggregate_run
    from curation.ledger import LedgerWriter

    rng = np.random.default_rng(0)
    w = LedgerWriter(run, ("adam2", "sgd"))
    ids = [f"{s}-{i}" for s in SOURCES for i in range(8)]
    for step in range(1, 7):
        batch = rng.choice(len(ids), 12, replace=False)
        src = [ids[b].split("-")[0] for b in batch]
        v = np.array([MEANS[s] for s in src]) + rng.normal(0, 0.002, len(batch))
        w.add_step(
            step,
            0,
            [ids[b] for b in batch],
            src,
            1e-3,
            np.ones(len(batch)),
            {"adam2": v, "sgd": v / 2},
        )
    w.flush()
    if complete:
        (run / ".complete").write_text("{}\n")
    aggregate_run(run)
    return run


def _prune_inputs(n_per: int = 20, k: int = 3) -> tuple[pl.DataFrame, object, np.ndarray, dict]:
    from curation.prune import _summary
    from curation.selection import select

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(k, 16)) * 3
    emb = np.concatenate([c + rng.normal(size=(n_per, 16)) for c in centres])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), n_per)
    n = len(emb)
    df = pl.DataFrame(
        {
            "id": [f"d{i}" for i in range(n)],
            "source": [SOURCES[i % 3] for i in range(n)],
            "text": [f"document number {i} | with a pipe" for i in range(n)],
        }
    )
    is_target = np.zeros(n, bool)
    is_target[:4] = True
    values = rng.normal(size=n)
    values[is_target] = np.nan
    res = select(df["id"].to_list(), values, labels, emb, 0.5, dedup_eps=0.0, is_target=is_target)
    summary = _summary(res, df, k)
    summary.update(scores="runs/x", target="t.jsonl", estimator="adam2")
    return df, res, emb, summary


def _prune_page(out: Path) -> Path:
    from curation.prune_report import write_prune_report

    df, res, emb, summary = _prune_inputs()
    write_prune_report(out, df, res, emb, summary)
    return out


def _source_page(out: Path) -> Path:
    from curation.source_prune import prune_by_source, write_source_report

    rng = np.random.default_rng(1)
    src = [s for s in SOURCES for _ in range(10)]
    df = pl.DataFrame({"id": [str(i) for i in range(30)], "source": src})
    values = np.array([MEANS[s] for s in src]) + rng.normal(0, 0.002, 30)
    kept, _, table = prune_by_source(df, values, np.zeros(30, bool), keep=0.7)
    summary = {"estimator": "adam2", "keep": 0.7, "n_kept": int(kept.sum()), "n_docs": 30}
    write_source_report(out, table, summary)
    return out


def _verify_results() -> tuple[dict, dict]:
    arm = lambda m, d: {  # noqa: E731
        "target_loss_mean": m,
        "target_loss_std": 0.01,
        "perplexity_mean": float(np.exp(m)),
        "perplexity_std": 0.5,
        "paired_diff_mean": d,
        "paired_diff_std": 0.002,
        "curve_steps": [0, 5, 10],
        "curve_mean": [6.0, m + 0.5, m],
        "curve_std": [0.0, 0.05, 0.01],
    }
    results = {"curated": arm(4.1, 0.0), "random": arm(4.3, 0.2), "full": arm(4.2, 0.1)}
    meta = {
        "unigram_target_ce": 5.0,
        "untrained_ce": 6.9,
        "steps": 10,
        "batch_size": 8,
        "preset": "tiny",
        "seeds": 2,
        "n_curated": 20,
        "n_full": 40,
        "n_target": 8,
        "n_target_removed": 0,
    }
    return results, meta


def _verify_page(out: Path) -> Path:
    from curation.render import write_page
    from curation.run_dir import CURVE_FILE
    from curation.verify import plot_curves, verify_page

    results, meta = _verify_results()
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(results, out / CURVE_FILE, "target loss")
    write_page(out, "verify", verify_page(results, meta, (out / CURVE_FILE).read_bytes()))
    return out


# stem, builder, images on the page
PAGES = {
    "score": ("report", lambda d: _score_run(d), 4),
    "prune": ("prune_report", _prune_page, 1),
    "prune-by-source": ("prune_report", _source_page, 0),
    "verify": ("verify", _verify_page, 1),
}


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Every page written once: name -> (markdown path, html path)."""
    from curation.report import write_report

    out = {}
    for name, (stem, build, _) in PAGES.items():
        folder = build(tmp_path_factory.mktemp(name))
        if name == "score":
            write_report(folder)
        out[name] = (folder / f"{stem}.md", folder / f"{stem}.html")
    return out


# ----------------------------------------------------------------------------- renderer


def test_md_table_is_the_one_writer_and_escapes_pipes():
    text = md_table(["a", "b"], [[1.234567, "x|y"], [None, 2]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1.235 | x\\|y |", "|  | 2 |"]
    assert md_table(["v"], [[0.5]], fmt=lambda x: f"{x:.1f}") == "| v |\n|---|\n| 0.5 |"
    # no module of the package writes a Markdown table row separator by hand any more
    repo = Path(__file__).resolve().parents[2]
    for folder in ("curation", "flows"):
        for path in (repo / folder).rglob("*.py"):
            if path.name != "render.py":
                assert '"---|"' not in path.read_text(), path
    assert not hasattr(__import__("curation.prune_report").prune_report, "md_to_html")


def test_page_renders_answer_first_in_both_formats_and_escapes_html():
    png = b"\x89PNG fake"
    page = Page(
        title="T",
        answer=["kept **3** of `5`"],
        note="a <note>",
        details=["detail"],
        sections=[
            Section("S", table=Table(["x"], [["<b>&"], [2.0]])),
            Section("F", figure=Figure("fig", png, "f.png")),
        ],
    )
    html = render_html(page)
    assert html.index("kept <b>3</b> of <code>5</code>") < html.index("a &lt;note&gt;")
    assert "&lt;b&gt;&amp;" in html and '<td class="num">2</td>' in html
    assert 'src="data:image/png;base64,' in html and "<style>" in html
    md = render_markdown(page)
    assert md.startswith("# T\n\n- kept **3** of `5`\n")
    assert md.index("kept **3**") < md.index("a <note>") < md.index("- detail")
    assert "| x |\n|---|\n| <b>& |\n| 2 |" in md and "![fig](f.png)" in md


@pytest.mark.parametrize("name", list(PAGES))
def test_pages_share_one_look_and_are_self_contained(pages, name):
    md_path, html_path = pages[name]
    html = html_path.read_text()
    css = (Path(__file__).resolve().parents[2] / "curation/templates/report.css").read_text()
    assert css.strip() in html  # the shared stylesheet, inline
    assert re.search(
        r"<h1>[^<]+</h1>\s*(<p class=\"alert\">.*</p>\s*)*<section class=\"answer\">", html
    )
    srcs = re.findall(r'<img[^>]* src="([^"]*)"', html)
    assert len(srcs) == PAGES[name][2] and all(s.startswith("data:image/png;base64,") for s in srcs)
    md = md_path.read_text()
    assert md.count("\n|---") == html.count("<table>")  # the same tables in both
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):  # Markdown images link real files
        assert (md_path.parent / link).read_bytes().startswith(b"\x89PNG"), link


def test_score_page_opens_with_the_sources_that_help_most_and_least(pages):
    md_path, html_path = pages["score"]
    by_ex = pl.read_parquet(md_path.parent / "values_by_example.parquet")
    means = by_ex.group_by("source").agg(pl.col("value_adam2").mean()).sort("value_adam2")
    best, worst = means["source"][-1], means["source"][0]
    md = md_path.read_text()
    head = md[: md.index("\n## ")]
    assert f"Helps most: **{best}**" in head and f"Helps least: **{worst}**" in head
    assert f"Of {means.height} sources, 2 clearly help, 1 clearly hurt" in head
    assert head.index("Helps most") < head.index("Values are Adam-aware")
    assert md.index("## Details") < md.index("examples scored over 6 steps")
    assert "verdict" in md and "report_plots/" in md and "UNFINISHED" not in md


def test_unfinished_score_run_is_an_alert_above_the_answer(tmp_path):
    from curation.report import write_report

    md, html = write_report(_score_run(tmp_path / "run", complete=False))
    text = md.read_text()
    assert text.index("**UNFINISHED RUN") < text.index("Helps most")
    assert '<p class="alert">UNFINISHED RUN' in html.read_text()


def test_prune_pages_open_with_what_was_kept(pages):
    md = pages["prune"][0].read_text()
    head = md[: md.index("\n## ")]
    counts = re.search(r"- kept \*\*(\d+)\*\* of (\d+) documents", head)
    assert counts and int(counts[2]) == 60 and int(counts[1]) == 30
    assert "- estimator" not in head and md.index("## Details") < md.index("- estimator")
    assert "x\\|" not in md and "with a pipe" in md  # cells with | stay one cell
    src = pages["prune-by-source"][0].read_text()
    assert re.search(r"^- kept 2 of 3 sources: `good`, `middling`$", src, re.M)
    assert "- dropped: `harmful`" in src and "harmful" in pages["prune-by-source"][1].read_text()


def test_verify_page_opens_with_the_best_arm(pages):
    md, html = (p.read_text() for p in pages["verify"])
    assert md.index("Lowest evaluation loss: **curated**") < md.index("| arm |")
    assert "| random | 4.3000 ± 0.0100 | 0.70 | +0.2000 ± 0.0020 | 73.70 ± 0.50 |" in md
    assert "<b>curated</b>" in html


# ----------------------------------------------------------------------------- cluster map


def _separation(xy: np.ndarray, labels: np.ndarray) -> float:
    """Between-cluster over within-cluster spread of 2-D points (higher: clusters stand apart)."""
    cs = np.unique(labels)
    centres = np.stack([xy[labels == c].mean(axis=0) for c in cs])
    within = np.mean(
        [((xy[labels == c] - centres[i]) ** 2).sum(1).mean() for i, c in enumerate(cs)]
    )
    return float(((centres - xy.mean(axis=0)) ** 2).sum(1).mean() / within)


def test_cluster_map_projection_separates_clusters_better_than_plain_pca():
    from sklearn.decomposition import PCA

    from curation.prune_report import map_projection

    rng = np.random.default_rng(0)
    k, n_per, dim = 5, 60, 32
    centres = np.zeros((k, dim))
    centres[:, :4] = rng.normal(size=(k, 4)) * 1.5  # clusters differ in 4 directions...
    noise = rng.normal(size=(k * n_per, dim))
    noise[:, 4:8] *= 4.0  # ...while the documents spread most in 4 others
    emb = np.repeat(centres, n_per, axis=0) + noise
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), n_per)
    ours = _separation(map_projection(emb, labels), labels)
    plain = _separation(PCA(n_components=2, random_state=0).fit_transform(emb), labels)
    assert ours > 3 * plain, (ours, plain)
    assert map_projection(emb[:1], labels[:1]).shape == (1, 2)
    assert map_projection(emb[:40], np.repeat([0, 1], 20)).shape == (40, 2)  # < 3 clusters


def test_cluster_map_colours_sources_and_hollows_excluded(monkeypatch):
    import matplotlib.axes

    from curation import prune_report

    calls = []
    real = matplotlib.axes.Axes.scatter

    def spy(self, x, y, **kw):
        calls.append((len(x), kw))
        return real(self, x, y, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", spy)
    df, res, emb, _ = _prune_inputs()
    png = prune_report.cluster_map_png(emb, res, df["source"].to_list())
    assert png.startswith(b"\x89PNG")
    hollow = [n for n, kw in calls if kw.get("facecolors") == "none"]
    filled = [n for n, kw in calls if kw.get("marker") != "+" and "facecolors" not in kw]
    target = [n for n, kw in calls if kw.get("marker") == "+"]
    assert sum(hollow) == int((~res.kept).sum()) and sum(target) == 4
    assert sum(filled) == int(res.kept.sum()) - 4
    colours = {str(kw.get("c") or kw.get("edgecolors")) for _, kw in calls}
    assert len(colours) == len(SOURCES)  # one colour per source


# ----------------------------------------------------------------------------- browser


def require_browser() -> str:
    """Path of a headless-capable Chromium; skip without one (fail instead under the CI guard)."""
    found = os.environ.get("ADAMSHAP_CHROMIUM") or next(
        (p for p in map(shutil.which, BROWSER_NAMES) if p), None
    )
    if found and Path(found).exists():
        return found
    message = "chromium not installed: `make setup` installs the Debian package (apt-get install chromium)"
    if guard_active():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def images_loaded(browser: str, page: Path, work: Path) -> tuple[int, int]:
    """(images on the page, images that loaded) as seen by headless Chromium."""
    probe = work / page.name
    probe.write_text(page.read_text().replace("</body>", IMG_CHECK + "</body>"))
    cmd = [
        browser,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        f"--user-data-dir={work / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe.as_uri(),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    found = re.search(r'data-img-check="(\d+):(\d+)"', res.stdout)
    assert found, f"no image check in the DOM (rc {res.returncode}): {res.stderr[-2000:]}"
    return int(found[1]), int(found[2])


def test_browser_guard_fails_in_ci_and_skips_locally(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("ADAMSHAP_CHROMIUM", raising=False)
    monkeypatch.delenv("ADAMSHAP_DATA_GUARD", raising=False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_browser()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not installed"):
        require_browser()


@pytest.mark.browser
@pytest.mark.integration
def test_every_image_loads_in_a_real_browser(pages, tmp_path):
    browser = require_browser()
    # the check itself can fail: a page with a broken image is caught
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><body><img src="absent.png"></body></html>')
    assert images_loaded(browser, broken, tmp_path) == (1, 0)
    for name, (_, html) in pages.items():
        want = PAGES[name][2]
        assert images_loaded(browser, html, tmp_path) == (want, want), name
