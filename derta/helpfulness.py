"""Helpfulness scoring, one scorer per benchmark with reference answers.

Registry ``SCORERS``: benchmark name -> ``score(response, answer) -> bool``.
A held-out helpful row belongs to the benchmark :func:`benchmark_of` its
``kind`` names: the release writes the set name (``gsm8k``, ``mmlu``); the
mini-world writes its question type (``capital``, ``flag``, ...), all of
them benchmark ``miniworld``.

* ``miniworld``: the whole answer, exactly (whitespace-trimmed).
* ``gsm8k``: the final number. The reference is GSM8K's solution text ending
  in ``#### <number>``. From a response: the first number after the last
  ``####``, else the number after the last "answer is" / "Answer:", else the
  last number in the text. Compared as numbers (commas dropped, so "1,200",
  "1200" and "1200.0" are equal).
* ``mmlu``: the option letter A-D. The reference is the bare letter. From a
  response: the letter after "answer is" / "Answer:", else a leading letter
  ("B", "B.", "(B) ..."), else the first "(X)", else the first standalone
  capital A-D.

AlpacaEval has no reference answers to match: it is a win rate with an LLM
judge (derta/alpacaeval.py).

``derta score --bench NAME --responses FILE`` (:func:`score_file`) scores a
JSON-lines or JSON-list file of ``{question, response, answer}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

_NUM = r"-?\d[\d,]*(?:\.\d+)?"
_NUM_RE = re.compile(_NUM)
_AFTER_HASHES = re.compile(r"####\s*\$?\s*(" + _NUM + ")")
_ANSWER_IS_NUM = re.compile(r"(?i:answer)\s*(?:(?i:is)\s*:?|:|=)\s*\**\s*\$?\s*(" + _NUM + ")")

_ANSWER_IS_LETTER = re.compile(r"(?i:answer)\s*(?:(?i:is)\s*:?|:)\s*[\(\[\*\"'`]*\s*([ABCD])\b")
_LEAD_LETTER = re.compile(r"^[\s\(\[\*\"'`]*([ABCD])(?:[\)\]\.:,\n\*\"'`]|\s*$)")
_PAREN_LETTER = re.compile(r"\(([ABCD])\)")
_ANY_LETTER = re.compile(r"\b([ABCD])\b")


def _number(s: str) -> str:
    return s.replace(",", "").rstrip(".")


def gsm8k_answer(text: str) -> str | None:
    """The final number of a GSM8K solution or response (rules in the module docstring); ``None`` if none."""
    if "####" in text:
        m = _AFTER_HASHES.search(text[text.rindex("####"):])
        if m:
            return _number(m.group(1))
    said = _ANSWER_IS_NUM.findall(text)
    if said:
        return _number(said[-1])
    nums = _NUM_RE.findall(text)
    return _number(nums[-1]) if nums else None


def mmlu_answer(text: str) -> str | None:
    """The option letter of an MMLU response or reference (rules in the module docstring); ``None`` if none."""
    for rx in (_ANSWER_IS_LETTER, _LEAD_LETTER, _PAREN_LETTER, _ANY_LETTER):
        m = rx.search(text.strip())
        if m:
            return m.group(1)
    return None


def score_exact(response: str, answer: str) -> bool:
    return response.strip() == answer.strip()


def score_gsm8k(response: str, answer: str) -> bool:
    got, want = gsm8k_answer(response), gsm8k_answer(answer)
    return got is not None and want is not None and float(got) == float(want)


def score_mmlu(response: str, answer: str) -> bool:
    want = mmlu_answer(answer)
    return want is not None and mmlu_answer(response) == want


SCORERS: dict[str, Callable[[str, str], bool]] = {"miniworld": score_exact, "gsm8k": score_gsm8k, "mmlu": score_mmlu}


def get_scorer(bench: str) -> Callable[[str, str], bool]:
    if bench not in SCORERS:
        from derta.errors import ConfigError

        raise ConfigError(f"unknown helpfulness benchmark {bench!r}; valid: {sorted(SCORERS)}")
    return SCORERS[bench]


def score_helpful(bench: str, response: str, answer: str) -> bool:
    """Is ``response`` correct on benchmark ``bench``? An unknown one is a ConfigError listing the valid ones."""
    return get_scorer(bench)(response, answer)


def benchmark_of(kind: Any) -> str | None:
    """The benchmark of a helpful row with this ``kind``; ``None`` when no scorer fits it.

    ``gsm8k`` / ``mmlu`` (the release's set names) are their own benchmark;
    a mini-world question type (derta.miniworld.HELPFUL_KINDS) or no kind at
    all is ``miniworld``.
    """
    from derta.miniworld import HELPFUL_KINDS

    if kind is None or kind in HELPFUL_KINDS:
        return "miniworld"
    return kind if kind in SCORERS else None


def accuracy_detail(correct: Iterable[bool]) -> dict[str, Any]:
    """``{"accuracy": pct, "n": n, "correct": k, "ci95": [lo, hi]}`` (95% Wilson interval, derta/stats.py)."""
    from derta.stats import pct, wilson_pct

    flags = list(correct)
    k, n = sum(map(bool, flags)), len(flags)
    return {"accuracy": pct(k, n), "n": n, "correct": k, "ci95": wilson_pct(k, n)}


def accuracy_by_kind(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Accuracy (%) per question kind inside a benchmark, from scored helpful rows (``{"kind", "bench",
    "correct"}``): the mini-world's capital / flag / first / last. A row whose kind is its benchmark (the release's
    gsm8k, mmlu) or has none is left out: ``helpfulness`` holds it. Empty unless two kinds or more are found."""
    by: dict[str, list[bool]] = {}
    for r in rows:
        if r.get("kind") and r["kind"] != r["bench"]:
            by.setdefault(r["kind"], []).append(bool(r["correct"]))
    return {k: round(100 * sum(v) / len(v), 2) for k, v in sorted(by.items())} if len(by) > 1 else {}


def read_scored(path: str | Path) -> list[dict[str, str]]:
    """``{question, response, answer}`` records from JSON lines or one JSON list (``question`` optional).

    ``answer`` may be a JSON number (GSM8K answers written as numbers). Bad
    input raises :class:`derta.errors.DataError` (file, line, rule).
    """
    from derta.errors import DataError
    from derta.io import json_records, read_utf8

    path = Path(path)
    out = []
    for lineno, rec in json_records(read_utf8(path), str(path)):
        where = (str(path), lineno)
        if not isinstance(rec, dict):
            raise DataError(*where, "shape", f"expected a JSON object {{question, response, answer}}, got {type(rec).__name__}")
        for key in ("response", "answer"):
            if key not in rec:
                raise DataError(*where, "required_field", f"missing field {key!r}")
        for key in ("question", "response"):
            if key in rec and not isinstance(rec[key], str):
                raise DataError(*where, "type", f"field {key!r} must be str, got {type(rec[key]).__name__}")
        answer = rec["answer"]
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            raise DataError(*where, "type", f"field 'answer' must be str or a number, got {type(answer).__name__}")
        if not str(answer).strip():
            raise DataError(*where, "non_empty", "field 'answer' is empty")
        out.append({"question": rec.get("question", ""), "response": rec["response"], "answer": str(answer)})
    if not out:
        raise DataError(str(path), 0, "non_empty", "no records in file")
    return out


def score_file(bench: str, path: str | Path) -> dict[str, Any]:
    """Accuracy of a responses file on ``bench``: ``{"bench", "accuracy", "n", "correct", "ci95"}``."""
    score = get_scorer(bench)
    rows = read_scored(path)
    return {"bench": bench, **accuracy_detail(score(r["response"], r["answer"]) for r in rows)}
