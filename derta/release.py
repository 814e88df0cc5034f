"""Ingest of the paper's released data into a source directory.

The release (github.com/RobustNLP/DeRTa, MIT, commit ``RELEASE_COMMIT``, the
newest) ships both the test sets and the training sources:

* the helpfulness data as six JSON-lines parts
  ``data/train/helpfulness_unsencor_wizardlm_60k_part_{0..5}.json``
  ``{instruction, output}``: one logical file per part (``helpful_0`` ..
  ``helpful_5``); ingest concatenates the configured parts in that order;
* the safety triples ``data/train/safety_beaver_safe_and_unsafe_response.json``
  ``{instruction, output (harmful response), safe_response}`` (``safety``);
* the test sets ``data/test/*.json`` ``{question[, answer]}``;
* ``malicious`` (``malicious_tuning_data_330.json``, ``{prefix, text}``, prefix
  ``"### Instruction:\\n{q}\\n\\n### Response:"``): read only with ``safety_fallback:
  malicious`` (see below); ``example`` (``example_data_to_read.json``, ``{prefix, text,
  safe}``): fetchable and verified, but nothing is ingested from it.

Every default file is pinned by ``RELEASE_PINS``: its git blob id (what
``git hash-object`` prints) and, where known, its sha256. After a file is read
or downloaded both pins are checked (``git_blob`` first); a mismatch is a
``DataError`` with that rule and nothing is written. A remote file with
neither pin is never downloaded unless ``allow_unpinned`` is set. Any logical
file can point at a local path (absolute, or under ``local_dir``); the default
pins stay with the logical file, so a file that is not the release's own needs
its own pins (or ``""`` to leave it unpinned).

Source directory layout (written by the ``source`` stage: the mini-world or
this ingest; all JSON lines keyed by a stable ``id``)::

    safety_train.jsonl   {id, instruction, output (harmful response), safe_response, category ("" if unknown)
                          [, safe_source ("release" | "template"; release only)]}
    helpful_train.jsonl  {id, instruction, output}
    eval_harmful.jsonl   {id, question, category, harmful_response ("" if unknown)}
    eval_helpful.jsonl   {id, question, answer, kind}
    dev_harmful.jsonl    same shape as eval_harmful (release: ``dev_size`` of the plain questions)
    dev_helpful.jsonl    same shape as eval_helpful (empty for the release)
    web.jsonl            {id, text, kind}            (mini-world only)
    benchmarks/<set>.jsonl  {id, question[, answer][, question_id, match]} (release only, one per test set)
    manifest.json        {source, files: {name: {sha256, records}}, dropped: {...}, inputs: {...}
                          [, split, alignment, safety_source, helpful_source (release only)]}

Release-specific choices:

* ``test_harmful`` (the 200 illegal instructions) becomes
  ``benchmarks/illegal_instructions.jsonl`` (all rows) and is split for the
  pipeline: a seeded (``split_seed``) random choice of ``dev_size`` rows goes to
  ``dev_harmful.jsonl``, the rest to ``eval_harmful.jsonl`` (category "",
  harmful_response ""; ids unchanged, both files in input order). The manifest's
  ``split`` records ``{seed, dev, eval, dev_ids}``.
* The sets named in ``eval_helpful_sets`` (default GSM8K and MMLU, the sets
  with reference answers) become ``eval_helpful.jsonl`` with ``kind`` = set name.
* The rendered attack sets (``ATTACK_SETS``) are aligned to the plain
  questions (:func:`align_prompts`): each of their benchmark rows gains
  ``question_id`` (the id of the plain question it renders, "" when none) and
  ``match`` (the share of that question's content words, words of more than 4
  letters, found in the prompt). Index alignment (row i renders question i) is
  used when its median match is at least ``INDEX_MEDIAN_MIN`` (codeattack,
  jailbreakchat, selfcipher); otherwise each row takes its best-matching
  question if the match is at least ``align_min_match`` (completionattack, whose
  order differs). The manifest's ``alignment`` has ``{rule, aligned, unaligned}``
  per set.
* Helpfulness instances whose output contains a refusal phrase are dropped
  (paper section 3.1: "uncensored" Evol-Instruct); the count is in ``dropped``.
  With ``helpful_fallback: self`` no part is read and ``helpful_train.jsonl`` is
  empty: "self" means benign instructions answered by the base model itself
  (stage ``self_answer``). Their instructions are the test set named by
  ``self_prompts_set`` (default AlpacaEval's 300, which have no reference
  outputs here): written as ``helpful_prompts.jsonl`` ``{id, instruction}`` and
  left out of ``benchmarks/``, so nothing trained on is ever a test question.
  Manifest ``helpful_source``: ``release`` | ``self``.
* Safety triples come from ``safety`` (``safe_source: "release"``), or, with
  ``safety_fallback: malicious`` (the large safety file is not at hand), from the
  ``malicious`` file: one triple per distinct question ``{id:
  release-malicious-<index>, instruction: q, output: text (the harmful response,
  a model input only, never an MLE target), safe_response: a seeded draw from
  ``fallback_refusals`` formatted with ``refusal_word``, category: "",
  safe_source: "template"}``. Repeated questions (``dropped.malicious_duplicate``)
  and questions equal to a test-set question or contained in a rendered attack
  prompt (``dropped.malicious_in_test``; both compared lower-cased with spaces
  collapsed) are dropped. Manifest ``safety_source``: ``safety`` | ``malicious``.
* Record ids are ``release-<name>-<index in the input>`` (for the helpfulness
  data, the index in the concatenation of the configured parts), so an id does
  not change when the refusal filter, ``max_helpful``, the split or the
  duplicate filters change.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import Field, field_validator

from derta.config import StepConfig
from derta.errors import ConfigError, DataError
from derta.io import atomic_path, check_record, json_records, sha256_file, write_json, write_jsonl
from derta.miniworld import normalize_question

log = logging.getLogger(__name__)

RELEASE_COMMIT = "70bdb52b5e139f32f5a723b5f09d2b0befa81657"  # 2024-10-21, the newest commit

# Release path -> (git blob id, sha256 or "") at RELEASE_COMMIT. Source: MANIFEST.md of the
# project's copy of the release (shared/release/MANIFEST.md, not part of this repo), which lists
# every data file; the git blob id is sha1(b"blob <size>\0" + bytes), what `git hash-object`
# prints. The large training files are pinned by blob id only (the manifest has no sha256).
RELEASE_PINS: dict[str, tuple[str, str]] = {
    "data/test/helpfulness_alpaca_eval_300.json": (
        "ff351fdff924872cbb13edb9df38ba415a2f21c3", "f187839cac36fe91f186b8049532c1996b71862aba154dc46fc2f855dfd771a5"),
    "data/test/helpfulness_gsm8k_500.json": (
        "dd8bfe13569b77feb261f59de341db117771e220", "ccdcb02cf6a19fc84900e072cb32f4cfee591fa2bcdf0c1b29777b3fa16b7b16"),
    "data/test/helpfulness_mmlu_500.json": (
        "5ebc532abf371380257fb1b27765b5c2893ba574", "8ca517950e024a40d8594cdfb8c0f8827671286f376696e461fd2e0016cd5ce3"),
    "data/test/safety_codeattack.json": (
        "c079ad1adef465d6f6ea5d3d7c467d3b48250fa1", "66b749d114a05f1bb2bb3ed218cdbac1ffc1a3c493fc0f60452977762d5e99d0"),
    "data/test/safety_completionattack.json": (
        "7aeaad2892f856e3ef886f6a42492aa40f725135", "2375fa405d5bed8ae6ca24749f12c993d90c83cde1ef41b856a9e8538c46c696"),
    "data/test/safety_illegal_instructions_200.json": (
        "97d200bc695f7091763971e92bd0c377338029bf", "d77c96592c8ef1ea680a61876bbe91f49749f8283a633f74e84f35906329f01d"),
    "data/test/safety_jailbreakchat.json": (
        "da53793491ccde5bd83e2e57ed18051ceeac180a", "65d8e52636e055d2c1da5b855f15d34cf0328f8b2d5dba24828ed574d32e48d2"),
    "data/test/safety_selfcipher.json": (
        "3c7a8d4c6f626106f365ddca80eb25ec29d3aecb", "0b47727e970825a0d6b6e64aacdea77e04ddd45aa2e2e05cbb0cb4bb8d64cd3e"),
    "data/train/example_data_to_read.json": (
        "c6fb1019057540f5c27aecd3082f566cfe4bc190", "4f627c4eb7636a14255dcb56af43b0aa625d7c94289c8a51c8fde8f8d88130ce"),
    "data/train/helpfulness_unsencor_wizardlm_60k_part_0.json": ("261571ec80802169ecc9417f2997cdfe72723310", ""),
    "data/train/helpfulness_unsencor_wizardlm_60k_part_1.json": ("9c33aae16e99b4ba4d55aeb929891100c00d5de8", ""),
    "data/train/helpfulness_unsencor_wizardlm_60k_part_2.json": ("3214b5684c22bf46e4e528fe51d2fadeab797ee7", ""),
    "data/train/helpfulness_unsencor_wizardlm_60k_part_3.json": ("ac9b7d7504c8c0d43529fca148cfb888954f3f86", ""),
    "data/train/helpfulness_unsencor_wizardlm_60k_part_4.json": ("eb77dcbf02ac55713120233dd6cc201241bf78ee", ""),
    "data/train/helpfulness_unsencor_wizardlm_60k_part_5.json": ("d3e92d9ff6cd749fb235ff0da863c9d2768f7076", ""),
    "data/train/malicious_tuning_data/malicious_tuning_data_330.json": (
        "5e3ec9fbac502ba44b9336d63ec2d49b156fc73c", "4542b5a8f35be54ecfe8ce594f631e92f9a8aafea442a3ac5fe69139fd3067a9"),
    "data/train/safety_beaver_safe_and_unsafe_response.json": ("da47a6ee422529a8ad539267c48763db351cd2df", ""),
}


class KnownFile(NamedTuple):
    path: str                # default path in the release
    fields: tuple[str, ...]  # required non-empty string fields of every record
    role: str                # helpful | safety | test | extra (not ingested by default)


_HELPFUL_PATH = "data/train/helpfulness_unsencor_wizardlm_60k_part_{}.json"
KNOWN_FILES: dict[str, KnownFile] = {
    **{f"helpful_{i}": KnownFile(_HELPFUL_PATH.format(i), ("instruction", "output"), "helpful") for i in range(6)},
    "safety": KnownFile(
        "data/train/safety_beaver_safe_and_unsafe_response.json", ("instruction", "output", "safe_response"), "safety"
    ),
    "test_harmful": KnownFile("data/test/safety_illegal_instructions_200.json", ("question",), "test"),
    "gsm8k": KnownFile("data/test/helpfulness_gsm8k_500.json", ("question", "answer"), "test"),
    "mmlu": KnownFile("data/test/helpfulness_mmlu_500.json", ("question", "answer"), "test"),
    "alpacaeval": KnownFile("data/test/helpfulness_alpaca_eval_300.json", ("question",), "test"),
    "codeattack": KnownFile("data/test/safety_codeattack.json", ("question",), "test"),
    "completionattack": KnownFile("data/test/safety_completionattack.json", ("question",), "test"),
    "jailbreakchat": KnownFile("data/test/safety_jailbreakchat.json", ("question",), "test"),
    "selfcipher": KnownFile("data/test/safety_selfcipher.json", ("question",), "test"),
    # Real harmful text: only where the pipeline needs harmful responses, never an MLE target
    # (ingested only with safety_fallback: malicious).
    "malicious": KnownFile("data/train/malicious_tuning_data/malicious_tuning_data_330.json", ("prefix", "text"), "extra"),
    "example": KnownFile("data/train/example_data_to_read.json", ("prefix", "text", "safe"), "extra"),
}
HELPFUL_PARTS = tuple(n for n, k in KNOWN_FILES.items() if k.role == "helpful")
REQUIRED_FILES = ("safety", "test_harmful")  # and a helpfulness part (defaults; see _check_sources)
# Benchmark file name of a logical test set (the release calls it "illegal instructions").
BENCHMARK_NAME = {"test_harmful": "illegal_instructions"}
EMPTY_SPLITS = ("dev_helpful",)
# Test sets whose `question` is a rendered attack prompt around one of the plain questions.
ATTACK_SETS = ("codeattack", "completionattack", "jailbreakchat", "selfcipher")
INDEX_MEDIAN_MIN = 0.5  # index alignment is taken when its median match reaches this
MALICIOUS_PREFIX = re.compile(r"### Instruction:\n(?P<q>.*?)\n\n### Response:", re.S)
PIN_RULES = ("git_blob", "sha256")  # checked in this order
_HEX = {"git_blob": re.compile(r"[0-9a-f]{40}"), "sha256": re.compile(r"[0-9a-f]{64}")}

DEFAULT_REFUSALS = [
    "I'm sorry", "I am sorry", "I cannot", "I can't", "as an AI", "As an AI",
    "I apologize", "I'm not able to", "I am unable",
]
# Templated safe responses of the malicious fallback; "{R}" is the refusal word.
DEFAULT_FALLBACK_REFUSALS = [
    "{R}, I can't help with that.",
    "{R}, but I won't provide instructions for this. It could cause serious harm.",
    "{R}, I can't assist with this request because it could be used to hurt people.",
    "{R}, but I'm not able to help with anything illegal or dangerous.",
    "{R}, I won't help with that. If you have a different question, I'm happy to help.",
    "{R}, that's not something I can help with, as it could put others at risk.",
]


class ReleaseFile(StepConfig):
    """One input file of the release ingest."""

    path: str = Field("", description="Path relative to local_dir / base_url, or an absolute local path.")
    git_blob: str = Field(
        "", description="Expected git blob id (40 hex, `git hash-object`); '' = not pinned by blob id."
    )
    sha256: str = Field("", description="Expected SHA-256 (64 hex); '' = not pinned by sha256.")

    @field_validator("git_blob", "sha256")
    @classmethod
    def _hex(cls, value: str, info: Any) -> str:
        value = value.strip().lower()
        if value and not _HEX[info.field_name].fullmatch(value):
            raise ValueError(f"{info.field_name} must be {_HEX[info.field_name].pattern} or '', got {value!r}")
        return value

    @property
    def pinned(self) -> bool:
        return bool(self.git_blob or self.sha256)


def _default_entry(name: str) -> dict[str, str]:
    path = KNOWN_FILES[name].path
    git_blob, sha256 = RELEASE_PINS[path]
    return {"path": path, "git_blob": git_blob, "sha256": sha256}


def _default_files() -> dict[str, ReleaseFile]:
    return {name: ReleaseFile(**_default_entry(name)) for name in KNOWN_FILES}


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
            "Logical name -> {path, git_blob, sha256}; merged key by key over the defaults (the release path "
            "and pins at RELEASE_COMMIT); a null entry drops a file. A file that is not the release's own needs "
            f"its own pins ('' = unpinned). Names: {list(KNOWN_FILES)}; ingest reads the helpful_* parts "
            "(concatenated in order), safety and the test sets; malicious only with safety_fallback: malicious; "
            "example is only fetchable."
        ),
    )
    allow_unpinned: bool = Field(
        False, description="Allow downloading files with neither git_blob nor sha256 pinned (the hashes are reported)."
    )
    refusal_phrases: list[str] = Field(
        list(DEFAULT_REFUSALS),
        description="Helpfulness instances whose output contains one of these (case-insensitive) are dropped.",
    )
    max_helpful: int = Field(0, ge=0, description="Keep at most this many helpfulness instances after filtering (0 = all).")
    eval_helpful_sets: list[str] = Field(
        ["gsm8k", "mmlu"],
        description="Test sets with reference answers copied into eval_helpful.jsonl (kind = set name).",
    )
    dev_size: int = Field(
        50, ge=0,
        description="Plain harmful questions (test_harmful) moved to dev_harmful.jsonl; the rest are eval_harmful.",
    )
    split_seed: int = Field(0, description="Seed of the dev/eval split and of the fallback refusal draw.")
    align_min_match: float = Field(
        0.5, ge=0, le=1,
        description="Best-match alignment of an attack prompt: least share of the plain question's content words "
        "(words of more than 4 letters) found in the prompt; below it question_id is ''.",
    )
    safety_fallback: Literal["none", "malicious"] = Field(
        "none",
        description="none: safety triples from files.safety; malicious: from files.malicious (harmful pairs) with "
        "templated refusals, for when the safety file is not at hand (then set files.safety: null).",
    )
    fallback_refusals: list[str] = Field(
        list(DEFAULT_FALLBACK_REFUSALS), min_length=1,
        description="Safe responses of the malicious fallback; each starts with '{R}' (the refusal word).",
    )
    refusal_word: str = Field(
        "Sorry",
        description="Refusal word put in for {R} in fallback_refusals; the caller passes the project's single "
        "refusal word (modeling.refusal_word).",
    )
    helpful_fallback: Literal["none", "self"] = Field(
        "none",
        description="none: at least one helpful_* part is read; self: no part is read and helpful_train.jsonl is "
        "empty (benign instructions answered by the base model itself, stage self_answer).",
    )
    self_prompts_set: str = Field(
        "alpacaeval", description="helpful_fallback self: the test set whose questions become helpful_prompts.jsonl "
        "(and leave benchmarks/).",
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-request download timeout in seconds.")
    max_retries: int = Field(3, ge=0, description="Download retries after the first attempt (network errors, 429, 5xx).")
    backoff_s: float = Field(1.0, ge=0, description="First retry wait; doubles each retry.")

    @field_validator("fallback_refusals")
    @classmethod
    def _templates(cls, value: list[str]) -> list[str]:
        for t in value:
            try:
                ok = t.startswith("{R}") and bool(t.format(R="R").strip())
            except (KeyError, IndexError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"each fallback refusal must start with '{{R}}' and use no other field; got {t!r}")
        return value

    @field_validator("refusal_word")
    @classmethod
    def _word(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("refusal_word must not be blank")
        return value

    @field_validator("files", mode="before")
    @classmethod
    def _merge_files(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        unknown = sorted(set(value) - set(KNOWN_FILES))
        if unknown:
            raise ValueError(f"unknown release file name(s) {unknown}; valid names: {list(KNOWN_FILES)}")
        merged: dict[str, Any] = {name: _default_entry(name) for name in KNOWN_FILES}
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
                raise ValueError(
                    f"files.{name}: expected a mapping {{path, git_blob, sha256}}, got {type(entry).__name__}"
                )
        return merged


# --- fetching ---------------------------------------------------------------


def _location(cfg: ReleaseConfig, name: str) -> tuple[str, bool]:
    """(path or URL, is_remote) of one logical file."""
    entry = cfg.files.get(name)
    if entry is None:
        raise ConfigError(f"release.files: {name!r} is not configured; configured: {sorted(cfg.files)}")
    if not entry.path:
        raise ConfigError(
            f"release.files.{name}.path is empty; give its path "
            "(relative to release.local_dir / release.base_url, or absolute)"
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
        if remote and not cfg.files[name].pinned and not cfg.allow_unpinned:
            raise ConfigError(
                f"release.files.{name}: refusing to download {where} without a pin; "
                f"set release.files.{name}.git_blob or .sha256 (or allow_unpinned: true once, and copy the "
                "hashes reported in manifest.json inputs)"
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


def file_hashes(path: str | Path) -> dict[str, str]:
    """``{git_blob, sha256}`` of a file; git_blob = sha1(b"blob <size>\\0" + bytes), as `git hash-object`."""
    blob = hashlib.sha1(b"blob %d\0" % Path(path).stat().st_size)
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            blob.update(block)
            sha.update(block)
    return {"git_blob": blob.hexdigest(), "sha256": sha.hexdigest()}


def _verify(entry: ReleaseFile, name: str, path: Path, where: str) -> dict[str, str]:
    """Hashes of ``path``; DataError(where, 0, rule, "expected X got Y") on the first pin that differs."""
    got = file_hashes(path)
    for rule in PIN_RULES:
        want = getattr(entry, rule)
        if want and got[rule] != want:
            raise DataError(
                where, 0, rule,
                f"expected {want} got {got[rule]} (release.files.{name}.{rule}; "
                "a file that is not the release's own needs its own pins, or '' for none)",
            )
    return got


def _fetch_verified(cfg: ReleaseConfig, name: str, dest_dir: str | Path) -> tuple[Path, dict[str, str]]:
    """(verified copy in ``dest_dir``, its hashes); on any error no file is left behind."""
    where, remote = _location(cfg, name)
    _check_pins(cfg, [name])
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{name}{Path(cfg.files[name].path).suffix or '.json'}"
    part = dest.with_name(dest.name + ".part")
    try:
        if remote:
            _download(cfg, where, part)
        elif Path(where).is_file():
            shutil.copyfile(where, part)
        else:
            raise DataError(where, 0, "file_exists", f"release file {name!r} not found")
        hashes = _verify(cfg.files[name], name, part, where)
        part.replace(dest)
    finally:
        part.unlink(missing_ok=True)
    return dest, hashes


def fetch(cfg: ReleaseConfig, name: str, dest_dir: str | Path) -> Path:
    """Copy (local) or download (remote) one logical file into ``dest_dir`` and verify it.

    Returns the path of the verified copy. A pinned hash that does not match
    raises ``DataError(<path or URL>, 0, "git_blob" | "sha256", "expected X got Y ...")``
    and leaves no file behind. A remote file with neither pin is refused
    (ConfigError) unless ``allow_unpinned``.
    """
    return _fetch_verified(cfg, name, dest_dir)[0]


# --- parsing ----------------------------------------------------------------

RowCheck = Callable[[dict[str, Any], str, int], None]


def read_release_file(
    path: str | Path, fields: tuple[str, ...], where: str | None = None, check: RowCheck | None = None,
) -> list[dict[str, Any]]:
    """Parse a release file (JSON lines or one JSON array) and check each record.

    Every field in ``fields`` must be a non-empty string; ``check(record,
    where, line)``, when given, checks more. Errors are :class:`DataError`
    naming ``where`` (the original path or URL), the line and the rule (utf8,
    json, object, required_field, type, non_empty, max_length, or check's own).
    """
    where = str(where or path)
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(where, line, "utf8", f"invalid UTF-8 byte at offset {err.start}") from None
    records = []
    for lineno, rec in json_records(text, where):
        if not isinstance(rec, dict):
            raise DataError(where, lineno, "object", f"expected a JSON object, got {type(rec).__name__}")
        check_record(rec, where, lineno, {f: str for f in fields}, fields)
        if check is not None:
            check(rec, where, lineno)
        records.append(rec)
    return records


def malicious_question(prefix: str) -> str | None:
    """The stripped question of a malicious-tuning prefix; None for another shape or an empty question.

    The shape is ``"### Instruction:\\n{q}\\n\\n### Response:"`` (MALICIOUS_PREFIX, whole prefix).
    """
    m = MALICIOUS_PREFIX.fullmatch(prefix)
    return (m.group("q").strip() or None) if m else None


def _check_malicious(rec: dict[str, Any], where: str, lineno: int) -> None:
    if malicious_question(rec["prefix"]) is None:
        raise DataError(
            where, lineno, "prefix_format",
            "field 'prefix' must be '### Instruction:\\n{question}\\n\\n### Response:' with a non-empty question",
        )


ROW_CHECKS: dict[str, RowCheck] = {"malicious": _check_malicious}


# --- alignment of rendered attack prompts -----------------------------------

_LETTERS = re.compile(r"[^\W\d_]+")


class Alignment(NamedTuple):
    rule: str                             # "index" | "best_match"
    rows: list[tuple[int | None, float]]  # per prompt: (index of its plain question or None, match)


def content_words(text: str) -> frozenset[str]:
    """Lower-cased words of more than 4 letters: what alignment compares."""
    return frozenset(w.lower() for w in _LETTERS.findall(text) if len(w) > 4)


def _share(question: frozenset[str], prompt: frozenset[str]) -> float:
    return len(question & prompt) / len(question) if question else 0.0


def align_prompts(questions: list[str], prompts: list[str], min_match: float = 0.5) -> Alignment:
    """Which plain question each rendered prompt renders (pure).

    ``match`` is the share of the question's content words found in the
    prompt. Index alignment (prompt i renders question i, every row kept) is
    taken when the lists have the same length and the median match is at least
    ``INDEX_MEDIAN_MIN``; otherwise each prompt takes its best-matching question
    (equal matches: the one sharing more words, then the first), or None when
    that match is below ``min_match``.
    """
    qw = [content_words(q) for q in questions]
    pw = [content_words(p) for p in prompts]
    if prompts and len(prompts) == len(questions):
        index = [_share(q, p) for q, p in zip(qw, pw)]
        if statistics.median(index) >= INDEX_MEDIAN_MIN:
            return Alignment("index", list(enumerate(index)))
    rows: list[tuple[int | None, float]] = []
    for p in pw:
        scores = [(_share(q, p), len(q & p)) for q in qw]
        best = max(range(len(scores)), key=scores.__getitem__, default=None)
        share = scores[best][0] if best is not None else 0.0
        rows.append((best if best is not None and share >= min_match else None, share))
    return Alignment("best_match", rows)


def _align_rows(rows: list[dict[str, Any]], plain: list[dict[str, Any]], min_match: float) -> dict[str, Any]:
    """Add question_id and match to an attack set's benchmark rows; return its manifest entry."""
    al = align_prompts([r["question"] for r in plain], [r["question"] for r in rows], min_match)
    for row, (j, share) in zip(rows, al.rows):
        row["question_id"] = plain[j]["id"] if j is not None else ""
        row["match"] = round(share, 4)
    aligned = sum(j is not None for j, _ in al.rows)
    return {"rule": al.rule, "aligned": aligned, "unaligned": len(rows) - aligned}


# --- ingest -----------------------------------------------------------------


def is_refusal(text: str, phrases: list[str]) -> bool:
    low = text.lower()
    return any(p.lower() in low for p in phrases)


def _role(name: str) -> str:
    return KNOWN_FILES[name].role


def _safety_name(cfg: ReleaseConfig) -> str:
    """The logical file the safety triples come from: ``safety`` or, in the fallback, ``malicious``."""
    return "malicious" if cfg.safety_fallback == "malicious" else "safety"


def _check_sources(cfg: ReleaseConfig) -> None:
    """Required files and the fallbacks' choose-one rules (ConfigError)."""
    if cfg.safety_fallback == "malicious" and "safety" in cfg.files:
        raise ConfigError(
            "release: safety_fallback is 'malicious' but files.safety is configured too; choose one: set "
            "files.safety: null to use the fallback, or safety_fallback: none to read the safety file"
        )
    for name in (_safety_name(cfg) if n == "safety" else n for n in REQUIRED_FILES):
        if name not in cfg.files:
            raise ConfigError(f"release.files: {name!r} is required; configured: {sorted(cfg.files)}")
    parts = [n for n in HELPFUL_PARTS if n in cfg.files]
    if cfg.helpful_fallback == "self" and parts:
        raise ConfigError(
            f"release: helpful_fallback is 'self' but helpfulness parts {parts} are configured too; choose one: "
            "set each of them to null to use the fallback, or helpful_fallback: none to read them"
        )
    if cfg.helpful_fallback == "self" and cfg.self_prompts_set not in cfg.files:
        raise ConfigError(f"release.self_prompts_set {cfg.self_prompts_set!r} is not a configured file; configured: {sorted(cfg.files)}")
    if cfg.helpful_fallback == "self" and _role(cfg.self_prompts_set) != "test":
        raise ConfigError(f"release.self_prompts_set {cfg.self_prompts_set!r} is not a test set")
    if cfg.helpful_fallback == "none" and not parts:
        raise ConfigError(
            f"release.files: at least one helpfulness part {list(HELPFUL_PARTS)} is required "
            "(or helpful_fallback: self)"
        )


def _ingest_names(cfg: ReleaseConfig) -> list[str]:
    """The configured files ingest reads, in KNOWN_FILES order; config errors before any I/O."""
    _check_sources(cfg)
    with_answers = [n for n in cfg.files if _role(n) == "test" and "answer" in KNOWN_FILES[n].fields]
    bad_sets = [s for s in cfg.eval_helpful_sets if s not in with_answers]
    if bad_sets:
        raise ConfigError(
            f"release.eval_helpful_sets: {bad_sets} are not configured test sets with answers; valid: {with_answers}"
        )
    safety = _safety_name(cfg)
    names = [n for n in KNOWN_FILES if n in cfg.files and (_role(n) != "extra" or n == safety)]
    for name in names:
        _location(cfg, name)  # every path is set
    _check_pins(cfg, names)
    return names


def _read_inputs(cfg: ReleaseConfig, names: list[str]) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Fetch, verify and parse every file: ({name: input record for the manifest}, {name: records})."""
    inputs: dict[str, dict[str, Any]] = {}
    data: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="derta-release-") as tmp:
        for name in names:
            where, _ = _location(cfg, name)
            local, hashes = _fetch_verified(cfg, name, tmp)
            pinned = cfg.files[name].pinned
            inputs[name] = {"location": where, **hashes, "pinned": pinned}
            if not pinned:
                log.warning("release file %s (%s) is not pinned; git_blob %s sha256 %s",
                            name, where, hashes["git_blob"], hashes["sha256"])
            data[name] = read_release_file(local, KNOWN_FILES[name].fields, where=where, check=ROW_CHECKS.get(name))
    return inputs, data


def _helpful_rows(cfg: ReleaseConfig, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Refusal-filtered, capped helpfulness rows (ids keep the input index) and the drop counts."""
    rows = [
        {"id": f"release-helpful-{i:05d}", "instruction": r["instruction"], "output": r["output"]}
        for i, r in enumerate(records)
        if not is_refusal(r["output"], cfg.refusal_phrases)
    ]
    dropped = {"helpful_refusal": len(records) - len(rows), "helpful_over_max": 0}
    if cfg.max_helpful and len(rows) > cfg.max_helpful:
        dropped["helpful_over_max"] = len(rows) - cfg.max_helpful
        rows = rows[: cfg.max_helpful]
    return rows, dropped


def _safety_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "id": f"release-safety-{i:05d}",
            "instruction": r["instruction"],
            "output": r["output"],
            "safe_response": r["safe_response"],
            "category": r["category"] if isinstance(r.get("category"), str) else "",
            "safe_source": "release",
        }
        for i, r in enumerate(records)
    ]


def fallback_refusal(cfg: ReleaseConfig, index: int) -> str:
    """The templated safe response of malicious row ``index``: seeded per row, so it does not depend on drops."""
    template = random.Random(f"{cfg.split_seed}-refusal-{index}").choice(cfg.fallback_refusals)
    return template.format(R=cfg.refusal_word)


def _test_texts(benchmarks: dict[str, list[dict[str, Any]]]) -> tuple[set[str], list[str]]:
    """(normalized questions of every test set, normalized rendered attack prompts)."""
    questions = {normalize_question(r["question"]) for rows in benchmarks.values() for r in rows}
    prompts = [normalize_question(r["question"]) for s in ATTACK_SETS for r in benchmarks.get(s, ())]
    return questions, prompts


def _malicious_rows(
    cfg: ReleaseConfig, records: list[dict[str, Any]], benchmarks: dict[str, list[dict[str, Any]]],
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Fallback safety triples: first row per distinct question, none that is a test question."""
    questions, prompts = _test_texts(benchmarks)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    dropped = {"malicious_duplicate": 0, "malicious_in_test": 0}
    for i, r in enumerate(records):
        q = malicious_question(r["prefix"]) or ""
        key = normalize_question(q)
        if key in seen:
            dropped["malicious_duplicate"] += 1
            continue
        seen.add(key)
        if key in questions or any(key in p for p in prompts):
            dropped["malicious_in_test"] += 1
            continue
        rows.append({
            "id": f"release-malicious-{i:05d}", "instruction": q, "output": r["text"].strip(),
            "safe_response": fallback_refusal(cfg, i), "category": "", "safe_source": "template",
        })
    return rows, dropped


def _benchmark_rows(name: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    bench = BENCHMARK_NAME.get(name, name)
    rows = []
    for i, r in enumerate(records):
        row = {"id": f"release-{bench}-{i:05d}", "question": r["question"]}
        if isinstance(r.get("answer"), str):
            row["answer"] = r["answer"]
        rows.append(row)
    return rows


def _benchmarks(
    cfg: ReleaseConfig, names: list[str], data: dict[str, list[dict[str, Any]]],
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """(benchmark name -> rows, attack sets aligned to the plain questions: the manifest's ``alignment``)."""
    benchmarks = {BENCHMARK_NAME.get(n, n): _benchmark_rows(n, data[n]) for n in names if _role(n) == "test"}
    plain = benchmarks[BENCHMARK_NAME["test_harmful"]]
    alignment = {s: _align_rows(benchmarks[s], plain, cfg.align_min_match) for s in ATTACK_SETS if s in benchmarks}
    return benchmarks, alignment


def _split_harmful(cfg: ReleaseConfig, rows: list[dict[str, Any]], where: str) -> tuple[list[dict], list[dict]]:
    """(dev, eval) rows of the plain questions: a seeded choice of ``dev_size`` rows, both in input order."""
    if cfg.dev_size and cfg.dev_size >= len(rows):
        raise DataError(
            where, 0, "dev_size",
            f"release.dev_size {cfg.dev_size} leaves no eval question: the file has {len(rows)}; "
            f"set release.dev_size below {len(rows)}",
        )
    dev = set(random.Random(cfg.split_seed).sample(range(len(rows)), cfg.dev_size))
    harmful = [{"id": r["id"], "question": r["question"], "category": "", "harmful_response": ""} for r in rows]
    return [r for i, r in enumerate(harmful) if i in dev], [r for i, r in enumerate(harmful) if i not in dev]


def _outputs(
    cfg: ReleaseConfig, helpful: list[dict[str, Any]], safety: list[dict[str, Any]],
    benchmarks: dict[str, list[dict[str, Any]]], split: tuple[list[dict], list[dict]],
) -> dict[str, list[dict[str, Any]]]:
    """Output file stem -> rows, in the source directory layout."""
    return {
        "safety_train": safety,
        "helpful_train": helpful,
        "eval_harmful": split[1],
        "dev_harmful": split[0],
        "eval_helpful": [
            {"id": r["id"], "question": r["question"], "answer": r["answer"], "kind": s}
            for s in cfg.eval_helpful_sets
            for r in benchmarks[BENCHMARK_NAME.get(s, s)]
        ],
        **{name: [] for name in EMPTY_SPLITS},
        **{f"benchmarks/{b}": rows for b, rows in benchmarks.items() if b not in self_prompt_sets(cfg)},
        **({"helpful_prompts": [{"id": r["id"], "instruction": r["question"]} for r in benchmarks[cfg.self_prompts_set]]}
           if self_prompt_sets(cfg) else {}),
    }


def self_prompt_sets(cfg: ReleaseConfig) -> tuple[str, ...]:
    """The test set given to the base model as helpful instructions (helpful_fallback self), else none."""
    return (cfg.self_prompts_set,) if cfg.helpful_fallback == "self" else ()


def _write_source(out_dir: str | Path, outputs: dict[str, list[dict[str, Any]]], manifest: dict[str, Any]) -> None:
    """Write every output and ``manifest.json`` (files: records + sha256 filled in) atomically."""
    with atomic_path(out_dir) as tmp_out:
        (tmp_out / "benchmarks").mkdir(parents=True)
        for name, rows in outputs.items():
            path = tmp_out / f"{name}.jsonl"
            n = write_jsonl(path, rows)
            manifest["files"][name] = {"records": n, "sha256": sha256_file(path)}
        write_json(tmp_out / "manifest.json", manifest)


def _training_rows(
    cfg: ReleaseConfig, names: list[str], data: dict[str, list[dict[str, Any]]],
    benchmarks: dict[str, list[dict[str, Any]]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """(helpfulness rows, safety triples, drop counts) from the configured sources."""
    helpful, dropped = _helpful_rows(cfg, [r for n in names if _role(n) == "helpful" for r in data[n]])
    if cfg.safety_fallback == "malicious":
        safety, more = _malicious_rows(cfg, data["malicious"], benchmarks)
        dropped.update(more)
    else:
        safety = _safety_rows(data["safety"])
    return helpful, safety, dropped


def ingest(cfg: ReleaseConfig, out_dir: str | Path) -> dict[str, Any]:
    """Fetch, verify, parse and filter the release; write the source layout atomically.

    Returns the manifest (also written as ``manifest.json``). Nothing is
    written under ``out_dir`` unless every input is valid.
    """
    names = _ingest_names(cfg)
    inputs, data = _read_inputs(cfg, names)
    benchmarks, alignment = _benchmarks(cfg, names, data)
    helpful, safety, dropped = _training_rows(cfg, names, data, benchmarks)
    plain = benchmarks[BENCHMARK_NAME["test_harmful"]]
    split = _split_harmful(cfg, plain, inputs["test_harmful"]["location"])
    outputs = _outputs(cfg, helpful, safety, benchmarks, split)
    manifest: dict[str, Any] = {
        "source": "release", "config": cfg.model_dump(), "inputs": inputs, "files": {}, "dropped": dropped,
        "split": {"seed": cfg.split_seed, "dev": len(split[0]), "eval": len(split[1]),
                  "dev_ids": [r["id"] for r in split[0]]},
        "alignment": alignment, "safety_source": _safety_name(cfg),
        "helpful_source": "self" if cfg.helpful_fallback == "self" else "release",
    }
    _write_source(out_dir, outputs, manifest)
    log.info("release ingest: %s; dropped %s", {k: v["records"] for k, v in manifest["files"].items()}, dropped)
    return manifest
