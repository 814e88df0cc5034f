"""Ingest of the paper's released data into a source directory.

The release (github.com/RobustNLP/DeRTa, pinned by ``base_url``) ships the test
sets; the training sources are files the user provides (the WizardLM
Evol-Instruct helpfulness data and the safety triples are not in the release).
Every input is hashed; a pinned ``sha256`` that does not match is an error,
and an unpinned file is never downloaded unless ``allow_unpinned`` is set.

Source directory layout (written by the ``source`` stage: the mini-world or
this ingest; all JSON lines keyed by a stable ``id``)::

    safety_train.jsonl   {id, instruction, output (harmful response), safe_response, category ("" if unknown)}
    helpful_train.jsonl  {id, instruction, output}
    eval_harmful.jsonl   {id, question, category, harmful_response ("" if unknown)}
    eval_helpful.jsonl   {id, question, answer, kind}
    dev_harmful.jsonl    same shape as eval_harmful (empty for the release)
    dev_helpful.jsonl    same shape as eval_helpful (empty for the release)
    web.jsonl            {id, text, kind}            (mini-world only)
    benchmarks/<set>.jsonl  {id, question[, answer]} (release only, one per test set)
    manifest.json        {source, files: {name: {sha256, records}}, dropped: {...}, inputs: {...}}

Release-specific choices:

* ``test_harmful`` (the 200 illegal instructions) becomes ``eval_harmful.jsonl``
  (category "", harmful_response "") and ``benchmarks/illegal_instructions.jsonl``.
* The sets named in ``eval_helpful_sets`` (default GSM8K and MMLU, the sets
  with reference answers) become ``eval_helpful.jsonl`` with ``kind`` = set name.
* Helpfulness instances whose output contains a refusal phrase are dropped
  (paper section 3.1: "uncensored" Evol-Instruct); the count is in ``dropped``.
* Record ids are ``release-<name>-<index in the input file>``, so an id does
  not change when the refusal filter or ``max_helpful`` changes.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from derta.config import StepConfig
from derta.errors import ConfigError, DataError
from derta.io import atomic_path, check_record, sha256_file, write_json, write_jsonl

log = logging.getLogger(__name__)

RELEASE_COMMIT = "c12e97aeecc7ac6a73af30c6303007e0d6e3d993"

# Logical name -> (default path in the release, required string fields).
# "" = not in the release: the user gives a path (absolute, or under local_dir).
KNOWN_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "helpful": ("", ("instruction", "output")),
    "safety": ("", ("instruction", "output", "safe_response")),
    "test_harmful": ("data/test/safety_illegal_instructions_200.json", ("question",)),
    "gsm8k": ("data/test/helpfulness_gsm8k_500.json", ("question", "answer")),
    "mmlu": ("data/test/helpfulness_mmlu_500.json", ("question", "answer")),
    "alpacaeval": ("data/test/helpfulness_alpaca_eval_300.json", ("question",)),
    "codeattack": ("data/test/safety_codeattack.json", ("question",)),
    "completionattack": ("data/test/safety_completionattack.json", ("question",)),
    "jailbreakchat": ("data/test/safety_jailbreakchat.json", ("question",)),
    "selfcipher": ("data/test/safety_selfcipher.json", ("question",)),
}
REQUIRED_FILES = ("helpful", "safety", "test_harmful")
# Benchmark file name of a logical test set (the release calls it "illegal instructions").
BENCHMARK_NAME = {"test_harmful": "illegal_instructions"}
EMPTY_SPLITS = ("dev_harmful", "dev_helpful")

DEFAULT_REFUSALS = [
    "I'm sorry", "I am sorry", "I cannot", "I can't", "as an AI", "As an AI",
    "I apologize", "I'm not able to", "I am unable",
]


class ReleaseFile(StepConfig):
    """One input file of the release ingest."""

    path: str = Field("", description="Path relative to local_dir / base_url, or an absolute local path.")
    sha256: str = Field("", description="Expected SHA-256 (hex); '' = not pinned (then downloads need allow_unpinned).")


def _default_files() -> dict[str, ReleaseFile]:
    return {name: ReleaseFile(path=path) for name, (path, _) in KNOWN_FILES.items()}


class ReleaseConfig(StepConfig):
    """Where the paper's data comes from and how it is filtered."""

    local_dir: str = Field("", description="Folder holding the release files ('' = download from base_url).")
    base_url: str = Field(
        f"https://raw.githubusercontent.com/RobustNLP/DeRTa/{RELEASE_COMMIT}/",
        description="Release root URL (pinned commit); file paths are appended.",
    )
    files: dict[str, ReleaseFile] = Field(
        _default_files(),
        description=(
            f"Logical name -> {{path, sha256}}; merged over the defaults (a null entry drops a test set). "
            f"Names: {list(KNOWN_FILES)}; helpful and safety have no default path."
        ),
    )
    allow_unpinned: bool = Field(False, description="Allow downloading files without a pinned sha256 (the hash is reported).")
    refusal_phrases: list[str] = Field(
        list(DEFAULT_REFUSALS),
        description="Helpfulness instances whose output contains one of these (case-insensitive) are dropped.",
    )
    max_helpful: int = Field(0, ge=0, description="Keep at most this many helpfulness instances after filtering (0 = all).")
    eval_helpful_sets: list[str] = Field(
        ["gsm8k", "mmlu"],
        description="Test sets with reference answers copied into eval_helpful.jsonl (kind = set name).",
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-request download timeout in seconds.")
    max_retries: int = Field(3, ge=0, description="Download retries after the first attempt (network errors, 429, 5xx).")
    backoff_s: float = Field(1.0, ge=0, description="First retry wait; doubles each retry.")

    @field_validator("files", mode="before")
    @classmethod
    def _merge_files(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        unknown = sorted(set(value) - set(KNOWN_FILES))
        if unknown:
            raise ValueError(f"unknown release file name(s) {unknown}; valid names: {list(KNOWN_FILES)}")
        merged: dict[str, Any] = {name: {"path": path} for name, (path, _) in KNOWN_FILES.items()}
        for name, entry in value.items():
            if entry is None:
                merged.pop(name, None)
            elif isinstance(entry, ReleaseFile):
                merged[name] = entry
            elif isinstance(entry, dict):
                bad = sorted(set(entry) - set(ReleaseFile.model_fields))
                if bad:
                    raise ValueError(
                        f"files.{name}: unknown key(s) {bad}; valid keys: {sorted(ReleaseFile.model_fields)}"
                    )
                merged[name] = {**merged.get(name, {}), **entry}
            else:
                raise ValueError(f"files.{name}: expected a mapping {{path, sha256}}, got {type(entry).__name__}")
        return merged


# --- fetching ---------------------------------------------------------------


def _location(cfg: ReleaseConfig, name: str) -> tuple[str, bool]:
    """(path or URL, is_remote) of one logical file."""
    entry = cfg.files.get(name)
    if entry is None:
        raise ConfigError(f"release.files: {name!r} is not configured; configured: {sorted(cfg.files)}")
    if not entry.path:
        raise ConfigError(
            f"release.files.{name}.path is empty: the release does not ship this file; "
            "give its path (absolute, or relative to release.local_dir)"
        )
    if Path(entry.path).is_absolute():
        return entry.path, False
    if cfg.local_dir:
        return str(Path(cfg.local_dir) / entry.path), False
    return cfg.base_url.rstrip("/") + "/" + entry.path.lstrip("/"), True


def _check_pins(cfg: ReleaseConfig, names: list[str]) -> None:
    """Refuse, before any network use, to download a file that is not pinned."""
    for name in names:
        where, remote = _location(cfg, name)
        if remote and not cfg.files[name].sha256 and not cfg.allow_unpinned:
            raise ConfigError(
                f"release.files.{name}: refusing to download {where} without a pinned sha256; "
                f"set release.files.{name}.sha256 (or allow_unpinned: true once, and copy the hash "
                "reported in manifest.json inputs)"
            )


def _retryable(status: int) -> bool:
    return status == 429 or 500 <= status < 600


def _download(cfg: ReleaseConfig, url: str, dest: Path) -> None:
    import httpx

    last = ""
    with httpx.Client(timeout=cfg.timeout_s, follow_redirects=True) as client:
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
            try:
                with client.stream("GET", url) as resp:
                    if resp.status_code != 200:
                        last = f"HTTP {resp.status_code}"
                        if _retryable(resp.status_code):
                            log.warning("download %s: %s (attempt %d)", url, last, attempt + 1)
                            continue
                        raise DataError(url, 0, "download", last)
                    with open(dest, "wb") as fh:
                        for block in resp.iter_bytes():
                            fh.write(block)
                    return
            except httpx.TransportError as err:
                last = f"{type(err).__name__}: {err}"
                log.warning("download %s: %s (attempt %d)", url, last, attempt + 1)
    dest.unlink(missing_ok=True)
    raise DataError(url, 0, "download", f"gave up after {cfg.max_retries + 1} attempts; last error: {last}")


def fetch(cfg: ReleaseConfig, name: str, dest_dir: str | Path) -> Path:
    """Copy (local) or download (remote) one logical file into ``dest_dir`` and verify it.

    Returns the path of the verified copy. A pinned hash that does not match
    raises ``DataError(<path or URL>, 0, "sha256", "expected X got Y")`` and
    leaves no file behind. An unpinned remote file is refused (ConfigError)
    unless ``allow_unpinned``.
    """
    where, remote = _location(cfg, name)
    _check_pins(cfg, [name])
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{name}{Path(cfg.files[name].path).suffix or '.json'}"
    part = dest.with_name(dest.name + ".part")
    try:
        if remote:
            _download(cfg, where, part)
        else:
            if not Path(where).is_file():
                raise DataError(where, 0, "file_exists", f"release file {name!r} not found")
            shutil.copyfile(where, part)
        got = sha256_file(part)
        want = cfg.files[name].sha256.lower()
        if want and got != want:
            raise DataError(where, 0, "sha256", f"expected {want} got {got}")
        part.replace(dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


# --- parsing ----------------------------------------------------------------


def _json_array_items(text: str, where: str) -> list[tuple[int, Any]]:
    """Elements of a whole-file JSON array with the 1-based line each starts on."""
    dec = json.JSONDecoder()
    items: list[tuple[int, Any]] = []
    pos = text.index("[") + 1
    n = len(text)

    def skip(p: int) -> int:
        while p < n and text[p] in " \t\r\n":
            p += 1
        return p

    pos = skip(pos)
    if pos < n and text[pos] == "]":
        pos += 1
    else:
        while True:
            line = text.count("\n", 0, pos) + 1
            try:
                obj, pos = dec.raw_decode(text, pos)
            except json.JSONDecodeError as err:
                raise DataError(where, err.lineno, "json", err.msg) from None
            items.append((line, obj))
            pos = skip(pos)
            if pos < n and text[pos] == ",":
                pos = skip(pos + 1)
                continue
            if pos < n and text[pos] == "]":
                pos += 1
                break
            line = text.count("\n", 0, pos) + 1
            raise DataError(where, line, "json", "expected ',' or ']' in the JSON array")
    if text[skip(pos):].strip():
        raise DataError(where, text.count("\n", 0, skip(pos)) + 1, "json", "extra data after the JSON array")
    return items


def read_release_file(path: str | Path, fields: tuple[str, ...], where: str | None = None) -> list[dict[str, Any]]:
    """Parse a release file (JSON lines or one JSON array) and check each record.

    Every field in ``fields`` must be a non-empty string. Errors are
    :class:`DataError` naming ``where`` (the original path or URL), the line
    and the rule (utf8, json, object, required_field, type, non_empty, max_length).
    """
    where = str(where or path)
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(where, line, "utf8", f"invalid UTF-8 byte at offset {err.start}") from None
    if text.lstrip().startswith("["):
        items = _json_array_items(text, where)
    else:
        items = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append((lineno, json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataError(where, lineno, "json", err.msg) from None
    records = []
    for lineno, rec in items:
        if not isinstance(rec, dict):
            raise DataError(where, lineno, "object", f"expected a JSON object, got {type(rec).__name__}")
        check_record(rec, where, lineno, {f: str for f in fields}, fields)
        records.append(rec)
    return records


# --- ingest -----------------------------------------------------------------


def is_refusal(text: str, phrases: list[str]) -> bool:
    low = text.lower()
    return any(p.lower() in low for p in phrases)


def ingest(cfg: ReleaseConfig, out_dir: str | Path) -> dict[str, Any]:
    """Fetch, verify, parse and filter the release; write the source layout atomically.

    Returns the manifest (also written as ``manifest.json``). Nothing is
    written under ``out_dir`` unless every input is valid.
    """
    for name in REQUIRED_FILES:
        if name not in cfg.files:
            raise ConfigError(f"release.files: {name!r} is required; configured: {sorted(cfg.files)}")
    with_answers = [n for n in cfg.files if "answer" in KNOWN_FILES[n][1]]
    bad_sets = [s for s in cfg.eval_helpful_sets if s not in with_answers]
    if bad_sets:
        raise ConfigError(
            f"release.eval_helpful_sets: {bad_sets} are not configured test sets with answers; valid: {with_answers}"
        )
    names = list(cfg.files)
    for name in names:
        _location(cfg, name)  # every path is set
    _check_pins(cfg, names)

    inputs: dict[str, dict[str, Any]] = {}
    data: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="derta-release-") as tmp:
        for name in names:
            where, remote = _location(cfg, name)
            local = fetch(cfg, name, tmp)
            digest = sha256_file(local)
            inputs[name] = {"location": where, "sha256": digest, "pinned": bool(cfg.files[name].sha256)}
            if not cfg.files[name].sha256:
                log.warning("release file %s (%s) is not pinned; sha256 %s", name, where, digest)
            data[name] = read_release_file(local, KNOWN_FILES[name][1], where=where)

    dropped: dict[str, int] = {}
    helpful = []
    for i, rec in enumerate(data["helpful"]):
        if is_refusal(rec["output"], cfg.refusal_phrases):
            continue
        helpful.append({"id": f"release-helpful-{i:05d}", "instruction": rec["instruction"], "output": rec["output"]})
    dropped["helpful_refusal"] = len(data["helpful"]) - len(helpful)
    if cfg.max_helpful and len(helpful) > cfg.max_helpful:
        dropped["helpful_over_max"] = len(helpful) - cfg.max_helpful
        helpful = helpful[: cfg.max_helpful]
    else:
        dropped["helpful_over_max"] = 0

    safety = [
        {
            "id": f"release-safety-{i:05d}",
            "instruction": r["instruction"],
            "output": r["output"],
            "safe_response": r["safe_response"],
            "category": r["category"] if isinstance(r.get("category"), str) else "",
        }
        for i, r in enumerate(data["safety"])
    ]

    benchmarks: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        if name in ("helpful", "safety"):
            continue
        bench = BENCHMARK_NAME.get(name, name)
        rows = []
        for i, r in enumerate(data[name]):
            row = {"id": f"release-{bench}-{i:05d}", "question": r["question"]}
            if isinstance(r.get("answer"), str):
                row["answer"] = r["answer"]
            rows.append(row)
        benchmarks[bench] = rows

    harmful_set = BENCHMARK_NAME["test_harmful"]
    outputs: dict[str, list[dict[str, Any]]] = {
        "safety_train": safety,
        "helpful_train": helpful,
        "eval_harmful": [
            {"id": r["id"], "question": r["question"], "category": "", "harmful_response": ""}
            for r in benchmarks[harmful_set]
        ],
        "eval_helpful": [
            {"id": r["id"], "question": r["question"], "answer": r["answer"], "kind": s}
            for s in cfg.eval_helpful_sets
            for r in benchmarks[BENCHMARK_NAME.get(s, s)]
        ],
        **{name: [] for name in EMPTY_SPLITS},
        **{f"benchmarks/{b}": rows for b, rows in benchmarks.items()},
    }

    manifest: dict[str, Any] = {
        "source": "release",
        "config": cfg.model_dump(),
        "inputs": inputs,
        "files": {},
        "dropped": dropped,
    }
    with atomic_path(out_dir) as tmp_out:
        (tmp_out / "benchmarks").mkdir(parents=True)
        for name, rows in outputs.items():
            path = tmp_out / f"{name}.jsonl"
            n = write_jsonl(path, rows)
            manifest["files"][name] = {"records": n, "sha256": sha256_file(path)}
        write_json(tmp_out / "manifest.json", manifest)
    log.info("release ingest: %s; dropped %s", {k: v["records"] for k, v in manifest["files"].items()}, dropped)
    return manifest
