"""JSON-lines I/O shared by every stage.

Contract: stages exchange JSON lines keyed by a stable ``id`` (CONVENTIONS 8).
Reading is strict (UTF-8, one JSON object per line, schema checked) and every
failure is a :class:`DataError` naming file, line and rule. Writing is atomic:
a temporary file in the same directory is renamed over the target only once
everything is written, so a killed stage never leaves a partial output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from derta.errors import DataError

# A record field longer than this is rejected (bad-input rule "max_length").
MAX_FIELD_CHARS = 1_000_000


def read_jsonl(
    path: str | Path,
    required: Mapping[str, type | tuple[type, ...]] | None = None,
    *,
    non_empty: Iterable[str] = (),
    unique_key: str | None = None,
    max_chars: int = MAX_FIELD_CHARS,
) -> list[dict[str, Any]]:
    """Read ``path`` as JSON lines and check each record.

    ``required`` maps field -> accepted type(s); ``non_empty`` lists string
    fields that must not be blank; ``unique_key`` must not repeat. Blank lines
    are skipped. Raises :class:`DataError` on the first violation.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(str(path), 0, "file_exists", "no such file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(str(path), line, "utf8", f"invalid UTF-8 byte at offset {err.start}") from None
    records: list[dict[str, Any]] = []
    seen: set[Any] = set()
    non_empty = tuple(non_empty)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(str(path), lineno, "json", err.msg) from None
        if not isinstance(rec, dict):
            raise DataError(str(path), lineno, "object", f"expected a JSON object, got {type(rec).__name__}")
        check_record(rec, str(path), lineno, required or {}, non_empty, max_chars)
        if unique_key is not None:
            key = rec.get(unique_key)
            if key in seen:
                raise DataError(str(path), lineno, "unique_id", f"duplicate {unique_key} {key!r}")
            seen.add(key)
        records.append(rec)
    return records


def check_record(
    rec: Mapping[str, Any],
    path: str,
    lineno: int,
    required: Mapping[str, type | tuple[type, ...]],
    non_empty: Iterable[str] = (),
    max_chars: int = MAX_FIELD_CHARS,
) -> None:
    """Check one record against the schema; raise :class:`DataError` on failure."""
    for field, typ in required.items():
        if field not in rec:
            raise DataError(path, lineno, "required_field", f"missing field {field!r}")
        value = rec[field]
        if isinstance(value, bool) and typ is not bool and bool not in (typ if isinstance(typ, tuple) else (typ,)):
            raise DataError(path, lineno, "type", f"field {field!r} must be {_tname(typ)}, got bool")
        if not isinstance(value, typ):
            raise DataError(path, lineno, "type", f"field {field!r} must be {_tname(typ)}, got {type(value).__name__}")
    for field in non_empty:
        value = rec.get(field)
        if isinstance(value, str) and not value.strip():
            raise DataError(path, lineno, "non_empty", f"field {field!r} is empty")
    for field, value in rec.items():
        if isinstance(value, str) and len(value) > max_chars:
            raise DataError(path, lineno, "max_length", f"field {field!r} has {len(value)} chars > {max_chars}")


def _tname(typ: type | tuple[type, ...]) -> str:
    if isinstance(typ, tuple):
        return " or ".join(t.__name__ for t in typ)
    return typ.__name__


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` on success.

    Works for files and directories. On any exception the temporary is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Atomically write records as JSON lines (sorted keys, UTF-8). Returns the count."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    return n


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write one JSON document (indented, sorted keys)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stable_id(*parts: str, n: int = 12) -> str:
    """A short content hash used as a record id (stable across runs)."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:n]


def json_array_items(text: str, where: str) -> list[tuple[int, Any]]:
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


def json_records(text: str, where: str) -> list[tuple[int, Any]]:
    """(1-based line, value) of every item of a whole-file JSON array or of JSON lines (blank lines skipped)."""
    if text.lstrip().startswith("["):
        return json_array_items(text, where)
    out = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            out.append((lineno, json.loads(raw)))
        except json.JSONDecodeError as err:
            raise DataError(where, lineno, "json", err.msg) from None
    return out


def read_utf8(path: str | Path) -> str:
    """A file's text; a missing file or invalid UTF-8 is a :class:`DataError` naming the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), 0, "file_exists", "no such file")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(str(path), raw[: err.start].count(b"\n") + 1, "utf8", f"invalid UTF-8 at byte {err.start}") from None
