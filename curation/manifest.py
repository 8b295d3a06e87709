"""Data manifests: which sources and files make a corpus, their licences and checksums, the target.

A manifest is YAML read with `yaml.safe_load`. Every path in it is relative to the manifest's
folder and must stay inside it (no absolute paths, no `..` out of it); symlinks inside the folder
are followed. Nothing from a manifest is ever executed: `build` is a command shown to the user.

```yaml
name: demo
sources:
  - name: pydocs
    files: [generated/demo_corpus.jsonl]   # rows are matched on their `source` field
    licence: PSF
    sha256: null                           # or a hex digest, or {file: digest}
    build: adamshap corpus build demo --out {file}
    fields: {text: body}                   # optional FieldMap overrides (text_field: too)
target:
  holdout: {sources: [pydocs], fraction: 0.1, seed: 0}   # or n: 30; or  file: target.jsonl
run: {preset: tiny, seq_len: 128}
```
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from curation.corpus import FieldMap, corpus_sha256, read_corpus, write_corpus
from curation.errors import AdamshapError, ManifestError

_FIELD_KEYS = {f.name for f in fields(FieldMap)}
TOP_KEYS = ("name", "description", "sources", "target", "run")
SOURCE_KEYS = (
    "name",
    "files",
    "file",
    "licence",
    "license",
    "sha256",
    "fields",
    "text_field",
    "build",
)
TARGET_KEYS = ("file", "sha256", "fields", "text_field", "holdout")
HOLDOUT_KEYS = ("sources", "fraction", "n", "seed")
# run settings read by the manifest itself; the rest are fields of the stages' argument models
DATA_RUN_KEYS = ("fields", "on_bad_rows", "max_docs_per_source", "keep")
STAGE_SECTIONS = ("score", "prune", "verify")
# chosen by the flow, never by a manifest
FLOW_OWNED = ("corpus", "target", "out", "scores", "curated", "full", "progress")


def check_keys(d: dict[str, Any], allowed: Any, where: str) -> None:
    """ManifestError naming the first unknown key of `d` and the nearest allowed one."""
    import difflib

    allowed = sorted(set(allowed))
    for key in d:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise ManifestError(
                f"{where}: unknown key '{key}' ({hint}valid keys: {', '.join(allowed)})"
            )


def stage_models() -> dict[str, type]:
    """The argument dataclasses of the stages a manifest's `run:` settings feed (as the CLI)."""
    from curation.prune import PruneArgs
    from curation.scoring_run import ScoreArgs
    from curation.verify import VerifyArgs

    return {"score": ScoreArgs, "prune": PruneArgs, "verify": VerifyArgs}


def _check_type(value: Any, default: Any, key: str) -> None:
    """ManifestError when `value` is not of the type of the setting's default (ints for floats ok)."""
    if value is None or default is None or isinstance(default, (tuple, list, dict)):
        return
    want: tuple[type, ...]
    if isinstance(default, bool):
        want, name = (bool,), "true or false"
    elif isinstance(default, int):
        want, name = (int,), "an integer"
    elif isinstance(default, float):
        want, name = (int, float), "a number"
    elif isinstance(default, str):
        want, name = (str,), "a string"
    else:
        return
    if not isinstance(value, want) or (isinstance(value, bool) and bool not in want):
        raise ManifestError(f"{key}: expected {name}, got {value!r}")


def check_run_settings(run: dict[str, Any]) -> None:
    """Refuse `run:` keys that no stage takes (with the nearest valid one) and bad values, up front.

    The same models as the command line: ScoreArgs, PruneArgs and VerifyArgs fields, plus the
    data settings and the per-stage sections `score:`, `prune:`, `verify:`. A numeric setting is
    checked by its rule (curation/settings.py RULES), the error naming its `run.<field>` (or
    `run.<stage>.<field>`) key; then each stage's model checks the rest, as on the command line.
    """
    from curation.settings import validate_keep

    models = stage_models()
    names = {n: {f.name for f in fields(c)} - set(FLOW_OWNED) for n, c in models.items()}
    check_keys(run, set().union(*names.values(), DATA_RUN_KEYS, STAGE_SECTIONS), "run")
    for sec in STAGE_SECTIONS:
        sub = run.get(sec)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise ManifestError(f"run.{sec}: expected a mapping of {sec} settings")
        check_keys(sub, names[sec], f"run.{sec}")
    if "keep" in run:
        try:
            validate_keep(run["keep"])
        except AdamshapError as exc:
            raise ManifestError(f"run.keep: {exc}") from None
    for sec, cls in models.items():
        _check_values(sec, cls, run)
        values = {k: v for k, v in run.items() if k in names[sec]}
        values.update({k: v for k, v in (run.get(sec) or {}).items() if k in names[sec]})
        _check_model(cls, values)


def _check_values(stage: str, cls: type, run: dict[str, Any]) -> None:
    """ManifestError naming the `run.<field>` key of the first of `stage`'s values that is bad.

    Numeric settings by their rule (the one the CLI's types and the stage model apply), the
    others by the type of their default.
    """
    from curation.settings import RULES

    rules = RULES[stage]
    for f in fields(cls):
        if f.name in FLOW_OWNED:
            continue
        for where, d in (("run", run), (f"run.{stage}", run.get(stage) or {})):
            if f.name not in d:
                continue
            if f.name not in rules:
                _check_type(d[f.name], f.default, f"{where}.{f.name}")
            elif problem := rules[f.name].problem(d[f.name]):
                # a run-wide key feeds every stage with the field; say whose rule it broke
                whose = f" ({stage})" if where == "run" and _rules_differ(f.name) else ""
                raise ManifestError(f"{where}.{f.name}{whose}: {problem}")


def _rules_differ(name: str) -> bool:
    """Whether the stages that have a setting `name` take different values for it."""
    from curation.settings import RULES

    return len({str(r[name]) for r in RULES.values() if name in r}) > 1


def _check_model(cls: type, values: dict[str, Any]) -> None:
    """ManifestError (`run: ...`) when the stage model refuses `values` (choices, combinations)."""
    required = {
        f.name: "-" for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    }
    try:
        cls(**required, **values).validate()
    except ManifestError:
        raise
    except Exception as exc:  # UsageError from validate, TypeError from a value of a wrong type
        msg = (
            str(exc) if isinstance(exc, AdamshapError) else f"a setting has the wrong type ({exc})"
        )
        raise ManifestError(f"run: {msg}") from None


@dataclass
class SourceSpec:
    """One named source: its files (resolved paths), licence and optional checksums."""

    name: str
    files: list[Path]
    licence: str
    sha256: dict[Path, str] = field(default_factory=dict)
    fields: FieldMap = field(default_factory=FieldMap)
    build: str | None = None

    def build_command(self, file: Path) -> str | None:
        """The command that creates `file`, or None when the manifest gives none."""
        return self.build.replace("{file}", str(file)) if self.build else None


@dataclass
class HoldoutSpec:
    """Held-out slice of named sources used as the target set."""

    sources: list[str]
    fraction: float | None = None
    n: int | None = None
    seed: int = 0


@dataclass
class TargetSpec:
    """The target set: a file, or a held-out slice of sources."""

    file: Path | None = None
    sha256: str | None = None
    holdout: HoldoutSpec | None = None
    fields: FieldMap = field(default_factory=FieldMap)


@dataclass
class Manifest:
    """A parsed, path-checked data manifest."""

    name: str
    path: Path
    sources: list[SourceSpec]
    target: TargetSpec
    run: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def root(self) -> Path:
        """The folder every manifest path is relative to."""
        return self.path.parent

    def files(self) -> list[Path]:
        """Every distinct corpus file of the manifest, in order of first mention."""
        out: list[Path] = []
        for s in self.sources:
            out.extend(f for f in s.files if f not in out)
        if self.target.file is not None and self.target.file not in out:
            out.append(self.target.file)
        return out

    def missing_files(self) -> list[tuple[Path, str | None]]:
        """(file, build command or None) for every file that does not exist yet."""
        out: list[tuple[Path, str | None]] = []
        for s in self.sources:
            for f in s.files:
                if not f.exists() and all(f != m for m, _ in out):
                    out.append((f, s.build_command(f)))
        t = self.target.file
        if t is not None and not t.exists() and all(t != m for m, _ in out):
            out.append((t, None))
        return out


# ---------------------------------------------------------------------------------- parsing


def _need(d: dict[str, Any], key: str, where: str, typ: type | tuple[type, ...]) -> Any:
    if key not in d:
        raise ManifestError(f"{where}: missing key '{key}'")
    v = d[key]
    if not isinstance(v, typ) or isinstance(v, bool) and typ is not bool:
        raise ManifestError(f"{where}.{key}: expected {_tname(typ)}, got {type(v).__name__}")
    return v


def _tname(typ: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))


def confined_path(root: Path, value: Any, key: str) -> Path:
    """Resolve a manifest path against `root`; refuse absolute paths and ones escaping `root`."""
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{key}: expected a relative path string, got {value!r}")
    if os.path.isabs(value) or value.startswith("~"):
        raise ManifestError(
            f"{key}: absolute path {value!r} is not allowed; paths are relative to the "
            f"manifest's folder {root}"
        )
    norm = os.path.normpath(value)
    if norm == ".." or norm.startswith(".." + os.sep):
        raise ManifestError(
            f"{key}: path {value!r} escapes the manifest's folder {root}; "
            "move the data under that folder (a symlink inside it is fine)"
        )
    return root / norm


def _fieldmap(d: dict[str, Any], where: str) -> FieldMap:
    raw = d.get("fields") or {}
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}.fields: expected a mapping")
    bad = set(raw) - _FIELD_KEYS
    if bad:
        raise ManifestError(
            f"{where}.fields: unknown keys {sorted(bad)}; use {sorted(_FIELD_KEYS)}"
        )
    if d.get("text_field") is not None:
        raw = {**raw, "text": d["text_field"]}
    for k, v in raw.items():
        if not (isinstance(v, str) or (k == "source" and v is None)):
            raise ManifestError(f"{where}.fields.{k}: expected a field name string")
    return replace(FieldMap(), **raw)


def _sha_map(value: Any, files: list[Path], raw_files: list[str], where: str) -> dict[Path, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        if len(files) != 1:
            raise ManifestError(
                f"{where}.sha256: give a mapping {{file: digest}} for several files"
            )
        return {files[0]: value.lower()}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k not in raw_files:
                raise ManifestError(f"{where}.sha256: {k!r} is not one of this source's files")
            out[files[raw_files.index(k)]] = str(v).lower()
        return out
    raise ManifestError(f"{where}.sha256: expected a hex digest or a mapping")


def _source(root: Path, d: Any, i: int) -> SourceSpec:
    where = f"sources[{i}]"
    if not isinstance(d, dict):
        raise ManifestError(f"{where}: expected a mapping")
    name = _need(d, "name", where, str)
    where = f"sources[{i}] ({name})"
    check_keys(d, SOURCE_KEYS, where)
    raw_files = d.get("files", d.get("file"))
    if isinstance(raw_files, str):
        raw_files = [raw_files]
    if not isinstance(raw_files, list) or not raw_files:
        raise ManifestError(f"{where}: 'files' must be a non-empty list of paths")
    files = [confined_path(root, f, f"{where}.files[{j}]") for j, f in enumerate(raw_files)]
    licence = d.get("licence", d.get("license"))
    if not isinstance(licence, str) or not licence.strip():
        raise ManifestError(
            f"{where}: missing key 'licence' (say under which terms the data is used)"
        )
    build = d.get("build")
    if build is not None and not isinstance(build, str):
        raise ManifestError(f"{where}.build: expected a command string")
    return SourceSpec(
        name=name,
        files=files,
        licence=licence,
        sha256=_sha_map(d.get("sha256"), files, raw_files, where),
        fields=_fieldmap(d, where),
        build=build,
    )


def _target(root: Path, d: Any, source_names: list[str]) -> TargetSpec:
    if isinstance(d, dict):
        check_keys(d, TARGET_KEYS, "target")
    if not isinstance(d, dict) or ("file" in d) == ("holdout" in d):
        raise ManifestError("target: give exactly one of 'file' or 'holdout'")
    if "file" in d:
        sha = d.get("sha256")
        return TargetSpec(
            file=confined_path(root, d["file"], "target.file"),
            sha256=sha.lower() if isinstance(sha, str) else None,
            fields=_fieldmap(d, "target"),
        )
    h = d["holdout"]
    if not isinstance(h, dict):
        raise ManifestError("target.holdout: expected a mapping")
    check_keys(h, HOLDOUT_KEYS, "target.holdout")
    srcs = _need(h, "sources", "target.holdout", list)
    unknown = [s for s in srcs if s not in source_names]
    if not srcs or unknown:
        raise ManifestError(
            f"target.holdout.sources: {unknown or srcs} must name sources of this manifest "
            f"({source_names})"
        )
    if ("fraction" in h) == ("n" in h):
        raise ManifestError("target.holdout: give exactly one of 'fraction' or 'n'")
    frac, n = h.get("fraction"), h.get("n")
    if frac is not None and (
        not isinstance(frac, (int, float)) or isinstance(frac, bool) or not 0 < frac < 1
    ):
        raise ManifestError(f"target.holdout.fraction: expected a number in (0, 1), got {frac!r}")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ManifestError(f"target.holdout.n: expected a positive integer, got {n!r}")
    seed = h.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ManifestError(f"target.holdout.seed: expected an integer, got {seed!r}")
    return TargetSpec(holdout=HoldoutSpec(sources=list(srcs), fraction=frac, n=n, seed=seed))


def load_manifest(path: str | Path, check_files: bool = True) -> Manifest:
    """Parse a manifest safely; with `check_files`, require its files and verify sha256 digests."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"manifest {path} not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        detail = " ".join(str(exc).split())  # one line: YAML errors span several
        raise ManifestError(
            f"{path}: not valid YAML ({detail}); fix the file (plain YAML only: tags such as "
            "!!python/object are refused)"
        ) from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{path}: a manifest must be a YAML mapping")
    root = path.parent.absolute()
    try:
        check_keys(doc, TOP_KEYS, "manifest")
        raw_sources = _need(doc, "sources", "manifest", list)
        sources = [_source(root, s, i) for i, s in enumerate(raw_sources)]
        names = [s.name for s in sources]
        if not sources or len(set(names)) != len(names):
            raise ManifestError("sources: need at least one source, each name once")
        target = _target(root, doc.get("target"), names)
        run = doc.get("run") or {}
        if not isinstance(run, dict):
            raise ManifestError("run: expected a mapping of settings")
        check_run_settings(run)
        m = Manifest(
            name=str(doc.get("name") or path.stem),
            path=path.absolute(),
            sources=sources,
            target=target,
            run=dict(run),
            description=str(doc.get("description") or ""),
        )
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    if check_files:
        check_manifest_files(m)
    return m


def check_manifest_files(m: Manifest) -> None:
    """Raise ManifestError for a missing file (with its build command) or a checksum mismatch."""
    missing = m.missing_files()
    if missing:
        lines = []
        for f, cmd in missing:
            how = (
                f"create it with: {cmd}" if cmd else "the manifest says nothing on how to build it"
            )
            lines.append(f"{f} does not exist; {how}")
        raise ManifestError(f"{m.path}: " + "; ".join(lines))
    checks = [(f, d, f"source {s.name!r}") for s in m.sources for f, d in s.sha256.items()]
    if m.target.file is not None and m.target.sha256:
        checks.append((m.target.file, m.target.sha256, "target"))
    done: set[Path] = set()
    for f, digest, who in checks:
        if f in done:
            continue
        actual = corpus_sha256(f)
        if actual != digest:
            raise ManifestError(
                f"{m.path}: sha256 mismatch for {f} ({who}): manifest says {digest}, file has "
                f"{actual}. The file changed since the manifest was written: restore the "
                "original file, or if the change is intended, put the new digest in the manifest"
            )
        done.add(f)


# ---------------------------------------------------------------------------------- materialise


def _read_sources(m: Manifest, on_bad_rows: str, rejects_dir: Path) -> pl.DataFrame:
    cache: dict[tuple[Path, FieldMap, str | None], pl.DataFrame] = {}
    parts: list[pl.DataFrame] = []
    claimed: dict[Path, set[str]] = {}
    for s in m.sources:
        frames = []
        for f in s.files:
            default = s.name if s.fields.source is None else None
            key = (f, s.fields, default)
            if key not in cache:
                rejects = rejects_dir / f"rejects-{len(cache):03d}-{f.name.split('.')[0]}.jsonl"
                cache[key] = read_corpus(
                    f,
                    fields=s.fields,
                    on_bad_rows=on_bad_rows,  # type: ignore[arg-type]
                    rejects_path=rejects if on_bad_rows == "skip" else None,
                    default_source=default,
                ).df
            df = cache[key]
            frames.append(df.filter(pl.col("source") == s.name))
            claimed.setdefault(f, set()).add(s.name)
        df = pl.concat(frames, how="diagonal_relaxed")
        if df.height == 0:
            raise ManifestError(
                f"{m.path}: source {s.name!r} has no rows in {[str(f) for f in s.files]} "
                "(rows are matched on their 'source' field)"
            )
        parts.append(df)
    for (f, _, _), df in cache.items():
        extra = sorted(set(df["source"].unique().to_list()) - claimed[f])
        if extra:
            raise ManifestError(
                f"{m.path}: {f} has rows of sources {extra} that no manifest source names; "
                "add them to 'sources' so no row is dropped unnoticed"
            )
    out = pl.concat(parts, how="diagonal_relaxed")
    dup = out.filter(pl.col("id").is_duplicated())["id"].unique().sort().to_list()
    if dup:
        raise ManifestError(f"{m.path}: ids occur in more than one file or source: {dup[:5]}")
    return out


def _cap_per_source(df: pl.DataFrame, cap: Any, seed: int) -> pl.DataFrame:
    if cap is None:
        return df
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        raise ManifestError(f"run.max_docs_per_source: expected a positive integer, got {cap!r}")
    rng = np.random.default_rng(seed)
    keep = np.zeros(df.height, dtype=bool)
    src = df["source"].to_numpy()
    for s in sorted(set(src.tolist())):
        rows = np.flatnonzero(src == s)
        keep[rows if len(rows) <= cap else rng.choice(rows, cap, replace=False)] = True
    return df.filter(pl.Series(keep))


def _holdout(df: pl.DataFrame, h: HoldoutSpec) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(h.seed)
    src = df["source"].to_numpy()
    held = np.zeros(df.height, dtype=bool)
    for s in h.sources:
        rows = np.flatnonzero(src == s)
        k = h.n if h.n is not None else int(round(len(rows) * float(h.fraction or 0)))
        k = max(1, k)
        if k >= len(rows):
            raise ManifestError(
                f"target.holdout: source {s!r} has {len(rows)} rows; holding out {k} "
                "would leave none to train on"
            )
        held[rng.choice(rows, k, replace=False)] = True
    mask = pl.Series(held)
    return df.filter(~mask), df.filter(mask)


def materialise_manifest(
    manifest: Manifest, out_dir: str | Path, on_bad_rows: str = "error"
) -> tuple[Path, Path]:
    """Write the training corpus and the target set as JSONL into `out_dir`; return both paths.

    A held-out target is drawn with its seed from the named sources and removed from the corpus.
    `run.max_docs_per_source`, when set, caps each source (seeded by `run.seed`, default 0).
    """
    check_manifest_files(manifest)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = _read_sources(manifest, on_bad_rows, out_dir)
    df = _cap_per_source(df, manifest.run.get("max_docs_per_source"), manifest.run.get("seed", 0))
    t = manifest.target
    if t.holdout is not None:
        df, target = _holdout(df, t.holdout)
    else:
        assert t.file is not None
        target = read_corpus(t.file, fields=t.fields, default_source="target").df
    corpus_path = write_corpus(df, out_dir / "corpus.jsonl")
    target_path = write_corpus(target, out_dir / "target.jsonl")
    return corpus_path, target_path
