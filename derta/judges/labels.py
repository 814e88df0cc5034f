"""Hand labels of real model outputs (``../shared/judge-dev``), stored as pointers.

A label never copies a response: it points at one entry of one release file
and pins it by hash, so the label file holds no harmful text and goes stale
loudly if the file changes.

Label record (JSON lines, ``derta/judges/dev_labels.jsonl``)::

    {"file": "labelled/pair/PAIR_result_llama-3-8B-vanilla.json",  # path under the dev folder
     "index": 7,            # 0-based position of the entry in the file (JSON list or JSON lines)
     "sha256": "...",       # of the entry's response text: the "response" field, or the whole string entry
     "label": "unsafe",     # Appendix C verdict: "unsafe" | "safe"
     "reason": "...",       # one line, Appendix C clause; describes, never quotes harmful text
     "split": "tune"}       # "tune" (rules may be developed on it) | "holdout" (never looked at while tuning)

The sample is drawn by :func:`draw_sample` (seeded, per file), so which
entries were labelled is not a choice made after reading them.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from derta.errors import DataError

LABELS_PATH = Path(__file__).with_name("dev_labels.jsonl")
VERDICTS = ("safe", "unsafe")
SPLITS = ("tune", "holdout")


def entry_text(entry: Any) -> str:
    """The text a label's sha256 pins: the ``response`` field, or the whole string entry."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("response"), str):
        return entry["response"]
    raise ValueError(f"entry is neither a string nor an object with a string 'response': {type(entry).__name__}")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_entries(path: str | Path) -> list[Any]:
    """Every entry of a dev file, in order: a JSON list or JSON lines (the reader ``derta judge`` uses)."""
    from derta.io import json_records, read_utf8

    return [value for _, value in json_records(read_utf8(path), str(path))]


def has_response(entry: Any) -> bool:
    """PAIR summaries without a jailbreak ("No jailbreaks achieved.") carry no response to label."""
    return not (isinstance(entry, str) and "Example Jailbreak RESPONSE:" not in entry and "FINAL SUMMARY" in entry)


def draw_sample(dev_dir: str | Path, per_labelled: int = 10, per_unlabelled: int = 6, seed: int = 0) -> list[dict[str, Any]]:
    """Seeded sample of entries to label: ``per_*`` responses from every file; every third one is ``holdout``."""
    dev_dir = Path(dev_dir)
    out: list[dict[str, Any]] = []
    for part, k in (("labelled", per_labelled), ("unlabelled", per_unlabelled)):
        for path in sorted((dev_dir / part).glob("*/*")):
            entries = read_entries(path)
            idx = [i for i, e in enumerate(entries) if has_response(e)]
            rel = path.relative_to(dev_dir).as_posix()
            rng = random.Random(f"{seed}:{rel}")
            for i in sorted(rng.sample(idx, min(k, len(idx)))):
                out.append({"file": rel, "index": i, "sha256": sha256_text(entry_text(entries[i]))})
    for j, rec in enumerate(out):
        rec["split"] = "holdout" if j % 3 == 2 else "tune"
    return out


def load_labels(path: str | Path = LABELS_PATH, dev_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Read and check the label file; with ``dev_dir``, every pointer's sha256 is verified against the file."""
    path = Path(path)
    labels: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    cache: dict[str, list[Any]] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DataError(str(path), lineno, "json", err.msg) from None
        missing = {"file", "index", "sha256", "label", "reason", "split"} - set(rec)
        if missing:
            raise DataError(str(path), lineno, "required_field", f"missing {sorted(missing)}")
        if rec["label"] not in VERDICTS or rec["split"] not in SPLITS:
            raise DataError(str(path), lineno, "enum", f"label must be one of {VERDICTS}, split one of {SPLITS}")
        key = (rec["file"], rec["index"])
        if key in seen:
            raise DataError(str(path), lineno, "unique", f"{key} is labelled twice")
        seen.add(key)
        if dev_dir is not None:
            if rec["file"] not in cache:
                cache[rec["file"]] = read_entries(Path(dev_dir) / rec["file"])
            entries = cache[rec["file"]]
            if not 0 <= rec["index"] < len(entries) or sha256_text(entry_text(entries[rec["index"]])) != rec["sha256"]:
                raise DataError(str(path), lineno, "sha256", f"{rec['file']}[{rec['index']}] does not match its pinned sha256")
        labels.append(rec)
    return labels
