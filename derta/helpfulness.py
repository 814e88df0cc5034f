"""Helpfulness scoring: exact match (mini-world), GSM8K final number, MMLU letter.

AlpacaEval needs an LLM judge (win rate against reference outputs); it is
scored by ``derta judge``-style endpoints and is skipped when none is set.
"""

from __future__ import annotations

import re

_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def gsm8k_answer(text: str) -> str | None:
    """The number after '####', else the last number in the text."""
    tail = text.split("####")[-1] if "####" in text else text
    nums = _NUM.findall(tail)
    return nums[-1].replace(",", "").rstrip(".") if nums else None


def mmlu_answer(text: str) -> str | None:
    m = re.search(r"\b([ABCD])\b", text.strip())
    return m.group(1) if m else None


def score_helpful(kind: str, response: str, answer: str) -> bool:
    if kind == "gsm8k":
        got, want = gsm8k_answer(response), gsm8k_answer(answer)
        return got is not None and want is not None and float(got) == float(want)
    if kind == "mmlu":
        return mmlu_answer(response) == mmlu_answer(answer)
    # Mini-world: the whole answer, exactly (whitespace-trimmed).
    return response.strip() == answer.strip()
