"""Data gates (Great Expectations 1.x) on the source directory and the training variants.

Contract
* ``gate_source(src_dir, cfg)`` checks every source file that exists (layout in
  derta/release.py); ``gate_variants(variants_dir, src_dir, synth_cfg, cfg)``
  checks ``<variant>.jsonl`` for every configured variant and ``dpo_pairs.jsonl``.
* Both return a JSON-able report
  ``{dataset: {path, rows, success, expectations: [{check, expectation, description,
  success, observed, unexpected_examples}]}}``; ``unexpected_examples`` holds up
  to ``max_examples`` offending rows as ``{id, line, <field>: excerpt}`` where
  ``line`` is the JSONL line. When an expectation fails they raise
  :class:`GateError` (a DataError naming the file, the first offending line and
  the failed check) after the report is built; the report rides on the error.
* ``run_gate(kind, report_path, ...)`` writes the report atomically in all cases,
  then raises on failure.
* Leak checks compare questions normalized with ``derta.miniworld.normalize_question``:
  held-out questions (eval, dev, benchmarks) must not be training instructions,
  must not occur as a phrase in a web text or a training prefix (see find_contained),
  and eval and dev are disjoint.

Great Expectations is imported lazily (about 3 s); one ephemeral context per
gate call, one suite per dataset, each DataFrame passed as a batch parameter.
Derived columns (normalized question, leak flags, joins on ``source_id``) are
computed with pandas and checked with built-in expectations.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field

from derta.chat import response, started_response
from derta.config import StepConfig
from derta.errors import ConfigError, DataError
from derta.io import read_jsonl, write_json
from derta.miniworld import normalize_question, word_units
from derta.variants import SynthesizeConfig, expected_counts, helpful_rows, is_short_answer, n_helpful_records

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

KINDS = ("helpful", "safe", "harmful_prefix", "rto")
CORE_SOURCE_FILES = ("safety_train", "helpful_train", "eval_harmful", "eval_helpful", "dev_harmful", "dev_helpful")


class GateConfig(StepConfig):
    """Thresholds of the data gates."""

    min_chars: int = Field(1, ge=0, description="Shortest allowed value of a required text field.")
    max_chars: int = Field(20000, ge=1, description="Longest allowed value of any text field.")
    max_duplicate_rate: float = Field(
        0.05, ge=0, le=1, description="Largest share of repeated records (1 - distinct/rows) in a dataset."
    )
    duplicate_rate_overrides: dict[str, float] = Field(
        {"helpful_train": 0.4, "web": 0.75, "variants": 0.25},
        description=(
            "Per-dataset max_duplicate_rate (key: dataset name, or 'variants' for every variant file). "
            "Defaults fit the mini-world, which repeats web facts and capital/flag questions on purpose; "
            "use {} for the release."
        ),
    )
    tolerance: float = Field(0.02, ge=0, description="Allowed deviation of a proportion from its target (share of k=0 prefixes).")
    web_leak_check: bool = Field(True, description="Check that no held-out question occurs in a web text.")
    max_examples: int = Field(5, ge=1, description="Offending rows kept per failed expectation.")
    excerpt_chars: int = Field(80, ge=10, description="Characters of a field shown per offending row.")

    def duplicate_rate(self, dataset: str, group: str = "") -> float:
        for key in (dataset, group):
            if key and key in self.duplicate_rate_overrides:
                return self.duplicate_rate_overrides[key]
        return self.max_duplicate_rate


class GateError(DataError):
    """A gate failed. ``str(err)`` starts ``<file>:<line>: [<check>]`` and lists every failure."""

    def __init__(self, gate: str, report: dict[str, Any], max_rows: int = 3):
        failures = [
            (entry, exp) for entry in report.values() for exp in entry["expectations"] if not exp["success"]
        ]
        self.report, self.gate = report, gate
        self.failures = [{"path": e["path"], **x} for e, x in failures]
        first_entry, first = failures[0]
        line = next((ex["line"] for ex in first["unexpected_examples"] if ex.get("line")), 0)
        n_ds = len({id(e) for e, _ in failures})
        lines = [f"{gate} gate: {len(failures)} expectation(s) failed in {n_ds} dataset(s)"]
        for entry, exp in failures:
            rows = "; ".join(_fmt_example(ex) for ex in exp["unexpected_examples"][:max_rows])
            lines.append(
                f"  {entry['path']}: [{exp['check']}] {exp['expectation']}: {exp['description']}; "
                f"observed {_fmt_observed(exp['observed'])}" + (f"; rows: {rows}" if rows else "")
                + (f"; error: {exp['error']}" if exp.get("error") else "")
            )
        super().__init__(first_entry["path"], line, first["check"], "\n".join(lines))


def _fmt_observed(obs: Any) -> str:
    if isinstance(obs, dict) and "unexpected" in obs:
        return f"{obs['unexpected']} of {obs['rows']} rows"
    return repr(obs)


def _fmt_example(ex: dict[str, Any]) -> str:
    parts = [f"id={ex.get('id')!s}"]
    if ex.get("line"):
        parts.append(f"line {ex['line']}")
    parts += [f"{k}={v!r}" for k, v in ex.items() if k not in ("id", "line")]
    return " ".join(parts)


# --- checks and datasets ----------------------------------------------------


@dataclass
class Check:
    """One expectation plus what to show for offending rows.

    ``field``: the column excerpted in examples. ``rows``: for aggregate
    expectations (counts, means, unique proportions), a mask of the rows to show.
    """

    name: str
    expectation: Any
    description: str
    field: str | None = None
    rows: Callable[[pd.DataFrame], pd.Series] | None = None


@dataclass
class Dataset:
    name: str
    path: Path
    df: pd.DataFrame | None  # None: the file is missing
    checks: list[Check] = field(default_factory=list)


def _gx():
    import great_expectations as gx
    import great_expectations.expectations as gxe

    return gx, gxe


def _lines(path: Path) -> list[int]:
    """1-based line numbers of the records read_jsonl returns (it skips blank lines)."""
    text = path.read_text(encoding="utf-8")
    return [i for i, line in enumerate(text.splitlines(), start=1) if line.strip()]


def load_frame(path: Path, columns: Iterable[str]) -> pd.DataFrame:
    """Read JSON lines into a DataFrame with ``columns`` (missing -> null, dtype object) and ``_line``.

    Malformed files (not UTF-8, not JSON, not objects) raise DataError from read_jsonl.
    """
    records = read_jsonl(path)
    df = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    for col in columns:
        if col not in df.columns:
            df[col] = pd.Series([None] * len(df), dtype=object)
        else:
            df[col] = df[col].astype(object)
    df["_line"] = pd.Series(_lines(path) if records else [], dtype="int64")
    return df.reset_index(drop=True)


def _norm(value: Any) -> str:
    return normalize_question(value) if isinstance(value, str) else ""


_TOKEN = re.compile(r"\w+")


def _phrase_bounds(text: str, start: int, end: int) -> bool:
    """The span stands as a phrase: spaces aside, no letter or digit right before or after it."""
    i = start - 1
    while i >= 0 and text[i] == " ":
        i -= 1
    j = end
    while j < len(text) and text[j] == " ":
        j += 1
    return (i < 0 or not text[i].isalnum()) and (j >= len(text) or not text[j].isalnum())


def find_contained(texts: list[str], needles: list[str], key_len: int = 3) -> set[tuple[int, int]]:
    """Pairs (text index, needle index) where the needle occurs in the text as a phrase.

    "As a phrase": the nearest non-space characters around the match are not
    letters or digits, so "repeat after me: a b" does not match inside
    "repeat after me: a b c", while "how do i x" matches "[inst] how do i x? [/inst]".

    Needles are indexed by their first ``key_len`` word tokens, so the cost is
    about one dict lookup per word of text (no needle-by-text product).
    """
    index: dict[tuple[str, ...], list[tuple[int, int]]] = {}
    firsts: set[str] = set()
    plain: list[int] = []  # needles without a word token: plain substring test
    for j, nd in enumerate(needles):
        toks = list(_TOKEN.finditer(nd))
        if not toks:
            if nd:
                plain.append(j)
            continue
        key = tuple(t.group() for t in toks[:key_len])
        index.setdefault(key, []).append((j, toks[0].start()))
        firsts.add(key[0])
    lengths = sorted({len(k) for k in index})
    hits: set[tuple[int, int]] = set()
    for i, text in enumerate(texts):
        toks = [(m.start(), m.group()) for m in _TOKEN.finditer(text)]
        words = [w for _, w in toks]
        for p, (start0, word) in enumerate(toks):
            if word not in firsts:
                continue
            for k in lengths:
                cands = index.get(tuple(words[p : p + k]))
                for j, off in cands or ():
                    nd, start = needles[j], start0 - off
                    end = start + len(nd)
                    if start >= 0 and text.startswith(nd, start) and _phrase_bounds(text, start, end):
                        hits.add((i, j))
        for j in plain:
            if needles[j] in text:
                hits.add((i, j))
    return hits


def _contains_any(texts: pd.Series, needles: list[str], cache: dict[str, bool] | None = None) -> pd.Series:
    """Boolean Series: does the normalized text contain any normalized needle?"""
    cache = {} if cache is None else cache
    norm = [_norm(t) for t in texts]
    todo = sorted({t for t in norm if t not in cache})
    found = {i for i, _ in find_contained(todo, needles)} if needles else set()
    for i, t in enumerate(todo):
        cache[t] = i in found
    return pd.Series([cache[t] for t in norm], index=texts.index, dtype=bool)


class _Builder:
    """Makes Check objects from GX expectation classes (after the lazy import)."""

    def __init__(self, cfg: GateConfig):
        self.cfg = cfg
        self.gx, self.gxe = _gx()

    def make(self, name: str, cls_name: str, description: str, field_: str | None = None,
             rows: Callable[[pd.DataFrame], pd.Series] | None = None, **kwargs: Any) -> Check:
        if "row_condition" in kwargs:
            kwargs.setdefault("condition_parser", "pandas")
        exp = getattr(self.gxe, cls_name)(meta={"check": name}, **kwargs)
        return Check(name, exp, description, field_ or kwargs.get("column"), rows)

    def present(self, fields: Iterable[str]) -> list[Check]:
        return [self.make(f"present:{f}", "ExpectColumnValuesToNotBeNull", f"field {f!r} is present", column=f)
                for f in fields]

    def ids(self) -> list[Check]:
        return [
            self.make("present:id", "ExpectColumnValuesToNotBeNull", "every row has an id", column="id"),
            self.make("unique:id", "ExpectColumnValuesToBeUnique", "ids are unique", column="id"),
        ]

    def text_fields(self, required: Iterable[str], optional: Iterable[str] = ()) -> list[Check]:
        """Required fields: present, str, not blank, length in [min_chars, max_chars]; optional: may be ''."""
        c, out = self.cfg, []
        for f in required:
            out += [
                self.make(f"present:{f}", "ExpectColumnValuesToNotBeNull", f"field {f!r} is present", column=f),
                self.make(f"type:{f}", "ExpectColumnValuesToBeOfType", f"field {f!r} is a string", column=f, type_="str"),
                self.make(f"not_blank:{f}", "ExpectColumnValuesToNotMatchRegex", f"field {f!r} is not blank",
                          column=f, regex=r"^\s*$"),
                self.make(f"length:{f}", "ExpectColumnValueLengthsToBeBetween",
                          f"len({f}) in [{c.min_chars}, {c.max_chars}]", column=f,
                          min_value=c.min_chars, max_value=c.max_chars),
            ]
        for f in optional:
            out += [
                self.make(f"present:{f}", "ExpectColumnValuesToNotBeNull", f"field {f!r} is present", column=f),
                self.make(f"type:{f}", "ExpectColumnValuesToBeOfType", f"field {f!r} is a string", column=f, type_="str"),
                self.make(f"length:{f}", "ExpectColumnValueLengthsToBeBetween", f"len({f}) <= {c.max_chars}",
                          column=f, min_value=0, max_value=c.max_chars),
            ]
        return out

    def duplicates(self, df: pd.DataFrame, columns: list[str], rate: float) -> list[Check]:
        """Duplicate rate (1 - distinct/rows) of the combined columns <= rate."""
        if df.empty:
            return []
        df["_dupkey"] = ["\x1f".join(map(str, vals)) for vals in zip(*(df[c] for c in columns))]
        return [self.make(
            "duplicate_rate:" + "+".join(columns), "ExpectColumnProportionOfUniqueValuesToBeBetween",
            f"duplicate rate of ({', '.join(columns)}) <= {rate:g}", field_=columns[0],
            rows=lambda d: d["_dupkey"].duplicated(keep="first"),
            column="_dupkey", min_value=round(1.0 - rate, 12), max_value=1.0,
        )]

    def flag_false(self, name: str, flag_col: str, field_: str, description: str, **kw: Any) -> list[Check]:
        return [self.make(name, "ExpectColumnValuesToBeInSet", description, field_=field_,
                          column=flag_col, value_set=[False], **kw)]

    def flag_true(self, name: str, flag_col: str, field_: str, description: str, **kw: Any) -> list[Check]:
        return [self.make(name, "ExpectColumnValuesToBeInSet", description, field_=field_,
                          column=flag_col, value_set=[True], **kw)]


def _excerpt(value: Any, n: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= n else value[: n - 3] + "..."
    return _plain(value)


def _plain(x: Any) -> Any:
    """JSON-able copy: numpy scalars to Python, NaN to None, tuples to lists."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [_plain(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        try:
            x = x.item()
        except (ValueError, TypeError):
            return str(x)
    if isinstance(x, float) and math.isnan(x):
        return None
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return str(x)


def _example(df: pd.DataFrame, row: int, fld: str | None, cfg: GateConfig) -> dict[str, Any]:
    rec = df.iloc[row]
    ex: dict[str, Any] = {"id": _plain(rec.get("id")), "line": _plain(rec.get("_line"))}
    if fld and fld in df.columns:
        ex[fld] = _excerpt(rec[fld], cfg.excerpt_chars)
    return ex


def run_suites(datasets: list[Dataset], cfg: GateConfig) -> dict[str, Any]:
    """Validate each dataset with its own suite in one ephemeral GX context; return the report."""
    gx, _ = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = ctx.data_sources.add_pandas("derta")
    report: dict[str, Any] = {}
    for i, ds in enumerate(datasets):
        if ds.df is None:
            report[ds.name] = _missing(ds)
            continue
        if len({c.name for c in ds.checks}) != len(ds.checks):
            raise ValueError(f"duplicate check names in dataset {ds.name}")
        results = _validate(gx, ctx, source, i, ds, cfg)
        by_line = {int(v): r for r, v in enumerate(ds.df["_line"])}
        exps = [_entry(c, results[c.name], ds.df, by_line, cfg) for c in ds.checks]
        report[ds.name] = {
            "path": str(ds.path), "rows": int(len(ds.df)),
            "success": all(e["success"] for e in exps), "expectations": exps,
        }
    return report


def _missing(ds: Dataset) -> dict[str, Any]:
    """A dataset's report when its file is missing."""
    return {
        "path": str(ds.path), "rows": 0, "success": False,
        "expectations": [{
            "check": "file_exists", "expectation": "file_exists", "description": "the file exists",
            "success": False, "observed": "missing", "unexpected_examples": [],
        }],
    }


def _validate(gx: Any, ctx: Any, source: Any, i: int, ds: Dataset, cfg: GateConfig) -> dict[str, Any]:
    """Run dataset ``i``'s suite; its results by check name."""
    result_format = {
        "result_format": "SUMMARY",
        "unexpected_index_column_names": ["_line"],
        "partial_unexpected_count": cfg.max_examples,
    }
    batch_def = source.add_dataframe_asset(f"asset{i}").add_batch_definition_whole_dataframe("all")
    # Built with all expectations at once: add_expectation re-serializes the whole suite each call.
    suite = ctx.suites.add(gx.ExpectationSuite(name=f"derta-{i}-{ds.name}", expectations=[c.expectation for c in ds.checks]))
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"v{i}", data=batch_def, suite=suite))
    res = vd.run(batch_parameters={"dataframe": ds.df}, result_format=result_format)
    return {r.expectation_config.meta["check"]: r for r in res.results}


def _entry(c: Check, r: Any, df: Any, by_line: dict[int, int], cfg: GateConfig) -> dict[str, Any]:
    """One check's report entry: success, what GX observed and, when it failed, up to max_examples rows."""
    out = r.result or {}
    if "observed_value" in out:
        observed: Any = _plain(out["observed_value"])
    elif "unexpected_count" in out:
        observed = {"unexpected": _plain(out["unexpected_count"]), "rows": _plain(out.get("element_count"))}
    else:
        observed = None
    examples: list[dict[str, Any]] = []
    if not r.success:
        if c.rows is not None:
            rows = [int(j) for j in c.rows(df).to_numpy().nonzero()[0][: cfg.max_examples]]
        else:
            rows = [by_line[int(e["_line"])] for e in out.get("partial_unexpected_index_list") or []
                    if int(e["_line"]) in by_line]
        examples = [_example(df, j, c.field, cfg) for j in rows[: cfg.max_examples]]
    entry = {
        "check": c.name,
        "expectation": r.expectation_config.type,
        "description": c.description,
        "success": bool(r.success),
        "observed": observed,
        "unexpected_examples": examples,
    }
    error = _exception_message(r.exception_info)
    if error:
        entry["error"] = error
    return entry


def _exception_message(info: Any) -> str:
    """The message of an exception GX caught while evaluating an expectation ('' if none)."""
    if not isinstance(info, dict):
        return ""
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    return "; ".join(m for m in (_exception_message(v) for v in info.values()) if m)


def _raise_if_failed(gate: str, report: dict[str, Any]) -> None:
    if not all(entry["success"] for entry in report.values()):
        raise GateError(gate, report)


# --- source gate ------------------------------------------------------------

# name -> (required text fields, optional text fields ('' allowed), question field, duplicate key)
SOURCE_SPECS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str | None, tuple[str, ...]]] = {
    "safety_train": (("instruction", "output", "safe_response"), ("category",), "instruction", ("instruction", "output", "safe_response")),
    "helpful_train": (("instruction", "output"), (), "instruction", ("instruction", "output")),
    "eval_harmful": (("question",), ("category", "harmful_response"), "question", ("question",)),
    "eval_helpful": (("question", "answer", "kind"), (), "question", ("question",)),
    "dev_harmful": (("question",), ("category", "harmful_response"), "question", ("question",)),
    "dev_helpful": (("question", "answer", "kind"), (), "question", ("question",)),
    "web": (("text", "kind"), (), None, ("text",)),
    # helpful_fallback self (derta/release.py): instructions the base model answers, later trained on
    "helpful_prompts": (("instruction",), (), "instruction", ("instruction",)),
}
BENCHMARK_SPEC = (("question",), (), "question", ("question",))
TRAIN_FILES = ("safety_train", "helpful_train", "helpful_prompts")


def _source_paths(src: Path) -> dict[str, Path]:
    paths = {name: src / f"{name}.jsonl" for name in SOURCE_SPECS}
    paths = {n: p for n, p in paths.items() if p.exists() or n in CORE_SOURCE_FILES}
    bench = src / "benchmarks"
    if bench.is_dir():
        for p in sorted(bench.glob("*.jsonl")):
            paths[f"benchmarks/{p.stem}"] = p
    return paths


def heldout_questions(src_dir: str | Path) -> dict[str, list[str]]:
    """Normalized held-out questions per dataset (eval_*, dev_*, benchmarks/*) present in ``src_dir``."""
    out = {}
    for name, path in _source_paths(Path(src_dir)).items():
        if (name.startswith(("eval_", "dev_", "benchmarks/"))) and path.exists():
            out[name] = sorted({q for q in (_norm(r.get("question")) for r in read_jsonl(path)) if q})
    return out


def _manifest(src: Path) -> dict[str, Any]:
    path = src / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def gate_source(src_dir: str | Path, cfg: GateConfig | None = None, *, raise_on_fail: bool = True) -> dict[str, Any]:
    """Check a source directory; return the report (raise GateError on failure unless told not to)."""
    cfg = cfg or GateConfig()
    src = Path(src_dir)
    if not src.is_dir():
        raise DataError(str(src), 0, "dir_exists", "no such source directory")
    paths = _source_paths(src)
    frames = _source_frames(paths)
    held = _Heldout(frames, cfg)
    # helpful_fallback self: helpful_train.jsonl is empty by design (the self_answer stage answers helpful_prompts)
    self_helpful = _manifest(src).get("helpful_source") == "self"
    b = _Builder(cfg)
    datasets = []
    for name, path in paths.items():
        ds = Dataset(name, path, frames[name])
        datasets.append(ds)
        if ds.df is not None:
            ds.checks += _source_checks(b, name, ds.df, held, cfg, self_helpful)
    report = run_suites(datasets, cfg)
    if raise_on_fail:
        _raise_if_failed("source", report)
    return report


def _source_frames(paths: dict[str, Path]) -> dict[str, pd.DataFrame | None]:
    """Each source file as a frame (None when missing), with its normalized question in ``_q_norm``."""
    frames: dict[str, pd.DataFrame | None] = {}
    for name, path in paths.items():
        spec = SOURCE_SPECS.get(name, BENCHMARK_SPEC)
        cols = ("id", *spec[0], *spec[1])
        frames[name] = load_frame(path, cols) if path.exists() else None
        if frames[name] is not None and spec[2]:
            frames[name]["_q_norm"] = [_norm(v) for v in frames[name][spec[2]]]
    return frames


class _Heldout:
    """The held-out questions (eval, dev, benchmarks), normalized, and where the web text contains one."""

    def __init__(self, frames: dict[str, pd.DataFrame | None], cfg: GateConfig):
        self.frames = {n: df for n, df in frames.items() if df is not None and n.startswith(("eval_", "dev_", "benchmarks/"))}
        self.questions = sorted({q for df in self.frames.values() for q in df["_q_norm"] if q})
        self.eval_q = sorted({q for n, df in self.frames.items() if n.startswith("eval_") for q in df["_q_norm"] if q})
        self.web = frames.get("web")
        self.web_hits: set[tuple[int, int]] = set()
        if self.web is not None and cfg.web_leak_check and self.questions:
            self.web_hits = find_contained([_norm(t) for t in self.web["text"]], self.questions)
        self.in_web = {self.questions[j] for _, j in self.web_hits}


def _source_checks(b: _Builder, name: str, df: pd.DataFrame, held: _Heldout, cfg: GateConfig,
                   self_helpful: bool) -> list[Check]:
    """The checks of one source file: ids, fields, duplicates, and no held-out question where it must not be."""
    required, optional, qfield, dupkey = SOURCE_SPECS.get(name, BENCHMARK_SPEC)
    checks = b.ids() + b.text_fields(required, optional)
    if name.startswith("benchmarks/") and "answer" in df.columns:
        checks += b.text_fields(["answer"])
    if name in TRAIN_FILES and not (name == "helpful_train" and self_helpful):
        checks.append(b.make("min_rows", "ExpectTableRowCountToBeBetween", "training data is not empty", min_value=1))
    checks += b.duplicates(df, list(dupkey), cfg.duplicate_rate(name))
    if name in TRAIN_FILES and held.questions:
        checks.append(b.make(
            f"no_heldout_question:{qfield}", "ExpectColumnValuesToNotBeInSet",
            f"no normalized {qfield} equals an eval/dev/benchmark question",
            field_=qfield, column="_q_norm", value_set=held.questions,
        ))
    if name in held.frames and held.web is not None and cfg.web_leak_check:
        df["_in_web"] = df["_q_norm"].isin(held.in_web)
        checks += b.flag_false("not_in_web:question", "_in_web", "question",
                               "the normalized question occurs in no normalized web text")
    if name.startswith("dev_") and held.eval_q:
        checks.append(b.make(
            "disjoint_from_eval:question", "ExpectColumnValuesToNotBeInSet",
            "dev questions are not eval questions", field_="question", column="_q_norm", value_set=held.eval_q,
        ))
    if name == "web" and cfg.web_leak_check and held.questions:
        hit_rows = {i for i, _ in held.web_hits}
        df["_has_heldout"] = [i in hit_rows for i in range(len(df))]
        checks += b.flag_false("no_heldout_question:text", "_has_heldout", "text",
                               "no eval/dev/benchmark question occurs in the text")
    return checks


# --- variants gate ----------------------------------------------------------


def _prompt(synth: SynthesizeConfig, q: Any) -> str | None:
    return synth.prompt_template.format(q=q) if isinstance(q, str) else None


def _expected_variants(src: Path, helpful_file: str | Path | None,
                       synth_cfg: SynthesizeConfig) -> tuple[dict[str, Any], int, dict[str, dict[str, int]]]:
    """The helpful rows by id, how many synthesis used, and each variant's expected counts."""
    helpful = helpful_rows(src, helpful_file)
    n_helpful = synth_cfg.n_helpful or len(helpful)
    try:
        expected = expected_counts(synth_cfg, n_helpful_records(synth_cfg, helpful[:n_helpful]))
    except KeyError as err:
        raise ConfigError(f"gate_variants: unknown variant {err}") from None
    return {r["id"]: r for r in helpful}, n_helpful, expected


def gate_variants(
    variants_dir: str | Path,
    src_dir: str | Path,
    synth_cfg: SynthesizeConfig,
    cfg: GateConfig | None = None,
    *,
    raise_on_fail: bool = True,
    helpful_file: str | Path | None = None,
) -> dict[str, Any]:
    """Check every configured variant file and ``dpo_pairs.jsonl`` against the source and the synthesis config.

    ``helpful_file``: the extra helpful pairs synthesis was given (``--helpful``), checked like the source's.
    """
    cfg = cfg or GateConfig()
    vdir, src = Path(variants_dir), Path(src_dir)
    b = _Builder(cfg)
    safety = {r["id"]: r for r in read_jsonl(src / "safety_train.jsonl", {"id": str})}
    helpful_by_id, n_helpful, expected = _expected_variants(src, helpful_file, synth_cfg)
    heldout_q = sorted({q for qs in heldout_questions(src).values() for q in qs})
    leak_cache: dict[str, bool] = {}

    datasets = []
    for variant in synth_cfg.variants:
        path = vdir / f"{variant}.jsonl"
        if not path.exists():
            datasets.append(Dataset(variant, path, None))
            continue
        df = load_frame(path, ("id", "kind", "prefix", "text", "safe", "k", "source_id"))
        _variant_columns(df, synth_cfg, safety, helpful_by_id)
        ds = Dataset(variant, path, df)
        ds.checks += _variant_shape_checks(b, variant, expected[variant], n_helpful, synth_cfg)
        ds.checks += _variant_source_checks(b, expected[variant])
        ds.checks += _variant_prefix_checks(b, expected[variant], synth_cfg, cfg)
        if heldout_q:
            df["_leak"] = _contains_any(df["prefix"], heldout_q, leak_cache)
            ds.checks += b.flag_false("no_heldout_question:prefix", "_leak", "prefix",
                                      "no eval/dev/benchmark question occurs in the (normalized) prefix")
        ds.checks += b.duplicates(df, ["prefix", "text"] + _repeat_column(df, synth_cfg), cfg.duplicate_rate(variant, "variants"))
        datasets.append(ds)

    datasets.append(_dpo_dataset(vdir / "dpo_pairs.jsonl", synth_cfg, safety, heldout_q, leak_cache, b, cfg))
    report = run_suites(datasets, cfg)
    if raise_on_fail:
        _raise_if_failed("variants", report)
    return report


def _repeat_column(df: pd.DataFrame, synth: SynthesizeConfig) -> list[str]:
    """With short_answer_repeats > 1: column ``_repeat`` numbers the intended copies of a short helpful
    answer (0 .. repeats - 1), so that only copies beyond them count as duplicates. Otherwise no column."""
    if synth.short_answer_repeats == 1:
        return []
    answer = df["text"].str.removesuffix(synth.eos)
    short = df["kind"].eq("helpful") & answer.map(lambda a: is_short_answer(synth, a))
    copy = df.groupby(["prefix", "text"]).cumcount()
    df["_repeat"] = copy.where(short & (copy < synth.short_answer_repeats), 0)
    return ["_repeat"]


def _variant_shape_checks(b: _Builder, variant: str, counts: dict[str, int], n_helpful: int,
                          synth_cfg: SynthesizeConfig) -> list[Check]:
    """Ids, fields, the values of ``safe`` and ``kind``, and the row count of each kind (expected_counts)."""
    kinds_here = [k for k in KINDS if counts.get(k, 0)]
    # kind/safe/source_id: presence here; their values are checked by set and join expectations below.
    checks = b.ids() + b.text_fields(["prefix", "text"]) + b.present(["kind", "safe", "source_id"])
    checks += [
        b.make("safe_values", "ExpectColumnValuesToBeInSet", "safe is 'true' or 'false'",
               column="safe", value_set=["true", "false"]),
        b.make("kind_values", "ExpectColumnValuesToBeInSet", f"kind in {kinds_here} for {variant}",
               column="kind", value_set=kinds_here),
        b.make("safe_iff_rto", "ExpectColumnPairValuesToBeInSet", "safe == 'true' exactly for kind 'rto'",
               field_="kind", column_A="kind", column_B="safe",
               value_pairs_set=[(k, "true" if k == "rto" else "false") for k in KINDS]),
        b.make("row_count", "ExpectTableRowCountToEqual",
               f"{sum(counts.values())} rows (n_helpful={n_helpful}{_repeats_label(synth_cfg)}, n_triples={synth_cfg.n_triples})",
               value=sum(counts.values())),
    ]
    for kind in KINDS:
        n = counts.get(kind, 0)
        checks.append(b.make(
            f"count:{kind}", "ExpectColumnSumToBeBetween", f"{n} rows of kind {kind!r} (expected_counts)",
            field_="kind", rows=(lambda d, kind=kind: d["kind"] == kind) if n == 0 else None,
            column=f"_is_{kind}", min_value=n, max_value=n,
        ))
    return checks


def _repeats_label(synth: SynthesizeConfig) -> str:
    n = synth.short_answer_repeats
    return f", answers of at most {synth.short_answer_words} words {n} times" if n > 1 else ""


_RESPONSE_OF = {"helpful": "helpful output", "safe": "safe_response", "harmful_prefix": "safe_response",
                "rto": "whole harmful response (output)"}


def _variant_source_checks(b: _Builder, counts: dict[str, int]) -> list[Check]:
    """Each row joins its source record, and its prompt and response are that record's."""
    checks = b.flag_true("source_found", "_src_found", "source_id",
                         "source_id names a record of the source (safety_train, or helpful_train for kind helpful)")
    checks += b.flag_true("prompt_matches_source", "_prompt_ok", "prefix",
                          "prefix starts with prompt_template applied to the source instruction")
    for kind in (k for k in KINDS if counts.get(k, 0)):
        checks += b.flag_true(f"text_matches_source:{kind}", "_text_ok", "text",
                              f"{kind} rows: text == response_sep + {_RESPONSE_OF[kind]} of source_id + eos",
                              row_condition=f'kind=="{kind}"')
    return checks


def _variant_prefix_checks(b: _Builder, counts: dict[str, int], synth_cfg: SynthesizeConfig,
                           cfg: GateConfig) -> list[Check]:
    """k is 0 outside harmful_prefix rows; there, the prefix is the first k word units of the harmful
    response, k is in the rule's range and (release rule) every third k is 0."""
    checks = [b.make("k_zero_outside_prefix", "ExpectColumnValuesToBeInSet",
                     "k == 0 for every kind but harmful_prefix", column="k", value_set=[0],
                     row_condition='kind!="harmful_prefix"')]
    n_hp = counts.get("harmful_prefix", 0)
    if not n_hp:
        return checks
    rng = "[0, n_units - 2]" if synth_cfg.prefix_rule == "release" else "[0, n_units]"
    checks += b.flag_true("k_in_range", "_k_ok", "k", f"harmful_prefix rows: k is an int in {rng} ({synth_cfg.prefix_rule} rule)",
                          row_condition='kind=="harmful_prefix"')
    checks += b.flag_true("prefix_is_k_units", "_prefix_k_ok", "prefix",
                          "harmful_prefix rows: prefix == prompt + the first k word units of the harmful response",
                          row_condition='kind=="harmful_prefix"')
    if synth_cfg.prefix_rule == "release":
        target = math.ceil(n_hp / 3) / n_hp  # k = 0 for every third instance (index % 3 == 0)
        checks.append(b.make(
            "share_k_zero", "ExpectColumnMeanToBeBetween",
            f"share of k == 0 among harmful_prefix rows = {target:.4f} +- {cfg.tolerance:g} (release rule)",
            field_="k", column="_k_zero", row_condition='kind=="harmful_prefix"',
            min_value=max(0.0, target - cfg.tolerance), max_value=min(1.0, target + cfg.tolerance),
        ))
    return checks


def _variant_columns(df: pd.DataFrame, synth: SynthesizeConfig, safety: dict[str, dict], helpful: dict[str, dict]) -> None:
    """Derived columns of a variant frame: kind indicators and joins on source_id."""
    sep, eos = synth.response_sep, synth.eos
    for kind in KINDS:
        df[f"_is_{kind}"] = (df["kind"] == kind).astype("int64")
    src_found, prompt_ok, text_ok, k_ok, prefix_k_ok, k_zero = [], [], [], [], [], []
    for kind, sid, prefix, text, k in zip(df["kind"], df["source_id"], df["prefix"], df["text"], df["k"]):
        src = (helpful if kind == "helpful" else safety).get(sid) if isinstance(sid, str) else None
        src_found.append(src is not None)
        prompt = _prompt(synth, src.get("instruction")) if src else None
        prompt_ok.append(bool(prompt) and isinstance(prefix, str) and prefix.startswith(prompt))
        field_ = {"helpful": "output", "safe": "safe_response", "harmful_prefix": "safe_response", "rto": "output"}.get(kind)
        want = src.get(field_) if src and field_ else None
        text_ok.append(isinstance(want, str) and text == response(sep, want) + eos)
        is_int = isinstance(k, int) and not isinstance(k, bool)
        if kind == "harmful_prefix" and src and isinstance(src.get("output"), str):
            units = word_units(src["output"])
            hi = len(units) if synth.prefix_rule == "paper" else max(len(units) - 2, 0)
            k_ok.append(is_int and 0 <= k <= hi)
            want_prefix = started_response(prompt, sep, "".join(units[:k]) if is_int and k > 0 else "") if prompt else None
            prefix_k_ok.append(is_int and prefix == want_prefix)
        else:
            k_ok.append(False)
            prefix_k_ok.append(False)
        k_zero.append((1.0 if k == 0 else 0.0) if kind == "harmful_prefix" else math.nan)
    df["_src_found"], df["_prompt_ok"], df["_text_ok"] = src_found, prompt_ok, text_ok
    df["_k_ok"], df["_prefix_k_ok"], df["_k_zero"] = k_ok, prefix_k_ok, k_zero


def _dpo_dataset(path: Path, synth: SynthesizeConfig, safety: dict[str, dict], heldout_q: list[str],
                 leak_cache: dict[str, bool], b: _Builder, cfg: GateConfig) -> Dataset:
    if not path.exists():
        return Dataset("dpo_pairs", path, None)
    df = load_frame(path, ("id", "source_id", "prompt", "chosen", "rejected"))
    ds = Dataset("dpo_pairs", path, df)
    sep, eos = synth.response_sep, synth.eos
    ok = []
    for sid, prompt, chosen, rejected in zip(df["source_id"], df["prompt"], df["chosen"], df["rejected"]):
        src = safety.get(sid) if isinstance(sid, str) else None
        want = _prompt(synth, src.get("instruction")) if src else None
        ok.append(want is not None and prompt == want + sep
                  and chosen == f"{src.get('safe_response')}{eos}" and rejected == f"{src.get('output')}{eos}")
    df["_src_ok"] = ok
    df["_distinct"] = [c != r for c, r in zip(df["chosen"], df["rejected"])]
    ds.checks += b.ids() + b.text_fields(["prompt", "chosen", "rejected"]) + b.present(["source_id"])
    ds.checks += [
        b.make("row_count", "ExpectTableRowCountToEqual", f"2 * n_triples = {2 * synth.n_triples} pairs",
               value=2 * synth.n_triples),
        b.make("unique:source_id", "ExpectColumnValuesToBeUnique", "one pair per safety triple", column="source_id"),
    ]
    ds.checks += b.flag_true("matches_source", "_src_ok", "prompt",
                             "prompt/chosen/rejected == template(instruction)+sep / safe_response+eos / output+eos of source_id")
    ds.checks += b.flag_true("chosen_differs", "_distinct", "chosen", "chosen != rejected")
    if heldout_q:
        df["_leak"] = _contains_any(df["prompt"], heldout_q, leak_cache)
        ds.checks += b.flag_false("no_heldout_question:prompt", "_leak", "prompt",
                                  "no eval/dev/benchmark question occurs in the (normalized) prompt")
    ds.checks += b.duplicates(df, ["prompt", "chosen", "rejected"], cfg.duplicate_rate("dpo_pairs"))
    return ds


# --- entry point ------------------------------------------------------------


def run_gate(
    kind: Literal["source", "variants"],
    report_path: str | Path,
    *,
    src_dir: str | Path,
    cfg: GateConfig | None = None,
    variants_dir: str | Path | None = None,
    synth_cfg: SynthesizeConfig | None = None,
    helpful_file: str | Path | None = None,
    split_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run one gate, write its report to ``report_path`` (atomically, pass or fail), raise GateError on failure."""
    cfg = cfg or GateConfig()
    if kind == "source":
        report = gate_source(src_dir, cfg, raise_on_fail=False)
    elif kind == "variants":
        if variants_dir is None or synth_cfg is None:
            raise ConfigError("run_gate('variants') needs variants_dir and synth_cfg")
        report = gate_variants(variants_dir, src_dir, synth_cfg, cfg, raise_on_fail=False, helpful_file=helpful_file)
    else:
        raise ConfigError(f"unknown gate {kind!r}; valid gates: ['source', 'variants']")
    write_json(report_path, report)
    if split_dir is not None:  # one report per dataset: a variant's training depends on its own gate result only
        for name, entry in report.items():
            write_json(Path(split_dir) / f"{name}.json", {name: entry})
    _raise_if_failed(kind, report)
    return report
