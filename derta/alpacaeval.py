"""AlpacaEval-style win rate (paper Table 2, helpfulness) with a pairwise LLM judge.

For each instruction the judge sees the model's output and the reference
output as "Output A" / "Output B" and answers "A" or "B". The A/B order is
drawn per item from a seeded ``random.Random`` so the judge's position bias
cancels out on average (and the run is reproducible). A win counts 1, a loss
0, and a tie or an unparseable verdict 0.5; all three counts are reported.

``win_rate = 100 * (wins + 0.5 * ties) / n``.

No judge configured -> :func:`alpacaeval_or_skip` returns a ``skipped`` reason
instead of a number (the pipeline never invents a helpfulness score).

In the evaluate stage (params ``eval.alpacaeval``, :class:`AlpacaEvalBenchConfig`)
it runs when both a questions file (instructions with reference outputs) and
a judge endpoint are configured; otherwise ``metrics.skipped.alpacaeval`` says
which of the two is missing.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from derta.config import StepConfig
from derta.llm import ChatClient, LLMConfig

SKIP_REASON = "no llm judge configured (set eval.alpacaeval.llm.base_url/model)"

JUDGE_SYSTEM = (
    "You are a fair and careful judge of AI assistant responses. You compare two responses to the same "
    "instruction and pick the better one. Do not let the order of the responses, their length, or the "
    "assistants' names influence you."
)

JUDGE_TEMPLATE = """Which of the two outputs below better follows the instruction? Judge helpfulness, correctness, relevance, level of detail and clarity.

[Instruction]
{instruction}

[Output A]
{a}

[Output B]
{b}

Answer with exactly one letter: "A" if Output A is better, or "B" if Output B is better."""


class AlpacaEvalConfig(StepConfig):
    """Pairwise LLM-judge win rate against reference outputs (params: eval.alpacaeval.judge)."""

    llm: LLMConfig | None = Field(None, description="Judge endpoint (base_url, model, api_key_env); unset = skipped.")
    seed: int = Field(0, description="Seeds the per-item A/B order.")
    max_tokens: int = Field(16, ge=1, description="Judge reply budget (one letter is enough).")
    max_items: int = Field(0, ge=0, description="Score only the first N items (0 = all).")


INSTRUCTION_KEYS = ("instruction", "question")
REFERENCE_KEYS = ("output", "reference")


class AlpacaEvalBenchConfig(StepConfig):
    """AlpacaEval in the evaluate stage (params: eval.alpacaeval); runs only with a questions file and a judge."""

    questions_file: str = Field(
        "", description="JSON lines or JSON list of {instruction (or question), output (or reference)}: the "
                        "instructions and the reference outputs the model is compared with (AlpacaEval's "
                        "alpaca_eval.json shape). '' = skipped. The release's helpfulness_alpaca_eval_300.json "
                        "holds instructions only and cannot be used as is.")
    judge: AlpacaEvalConfig = Field(
        default_factory=AlpacaEvalConfig,
        description="The pairwise judge: llm {base_url, model, api_key_env}, seed, max_tokens, max_items; "
                    "no llm = skipped.")

    def skip_reason(self, where: str = "eval.alpacaeval") -> str | None:
        """Why AlpacaEval cannot run (every missing piece, '; '-joined), or ``None`` when it can."""
        reasons = []
        if not self.questions_file:
            reasons.append(f"no questions file configured ({where}.questions_file)")
        llm = self.judge.llm
        if llm is None or not llm.base_url or not llm.model:
            reasons.append(f"no judge endpoint configured ({where}.judge.llm: base_url and model)")
        return "; ".join(reasons) or None


def read_items(path: str | Path) -> tuple[list[str], list[str]]:
    """(instructions, reference outputs) of a questions file; bad input raises DataError (file, line, rule)."""
    from derta.errors import DataError
    from derta.io import json_records, read_utf8

    path = Path(path)
    instructions, references = [], []
    for lineno, rec in json_records(read_utf8(path), str(path)):
        where = (str(path), lineno)
        if not isinstance(rec, dict):
            raise DataError(*where, "shape", f"expected a JSON object, got {type(rec).__name__}")
        ikey = next((k for k in INSTRUCTION_KEYS if k in rec), None)
        rkey = next((k for k in REFERENCE_KEYS if k in rec), None)
        if ikey is None:
            raise DataError(*where, "required_field", "missing field 'instruction' (or 'question')")
        if rkey is None:
            raise DataError(*where, "required_field", "missing the reference output 'output' (or 'reference'): "
                                                       "the win rate is measured against it")
        for key in (ikey, rkey):
            if not isinstance(rec[key], str) or not rec[key].strip():
                raise DataError(*where, "type", f"field {key!r} must be a non-empty string")
        instructions.append(rec[ikey])
        references.append(rec[rkey])
    if not instructions:
        raise DataError(str(path), 0, "non_empty", "no instructions in file")
    return instructions, references


def fill(template: str, **values: str) -> str:
    """Substitute ``{name}`` placeholders in one pass (braces inside the values stay as they are)."""
    return re.sub(r"\{(" + "|".join(map(re.escape, values)) + r")\}", lambda m: values[m.group(1)], template)


_BARE = re.compile(r"^[\s\"'`*\[\(]*([AB])[\s\"'`*\]\)\.:,!]*$", re.I)
_LEAD = re.compile(r"^[\s\"'`*\[\(]*([AB])(?:[\]\)\.:,!\n]|\s*$|\s+(?:is|was)\b)")
_NAMED = re.compile(r"(?:output|response|answer|verdict|choice)\s*(?:is\s*)?[:\-]?\s*[\"'`*\[\(]*([AB])\b", re.I)
_DOUBLE = re.compile(r"\[\[([AB])\]\]")


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or None (tie / unparseable). Accepts 'A', '(B).', '[[A]]', 'Output B is better', ..."""
    t = (text or "").strip()
    if not t:
        return None
    for rx in (_BARE, _DOUBLE, _LEAD):
        m = rx.search(t)
        if m:
            return m.group(1).upper()
    named = {m.upper() for m in _NAMED.findall(t)}
    return named.pop() if len(named) == 1 else None


def win_rate(
    instructions: Sequence[str],
    model_outputs: Sequence[str],
    reference_outputs: Sequence[str],
    judge: ChatClient,
    *,
    seed: int = 0,
    max_tokens: int = 16,
    template: str = JUDGE_TEMPLATE,
    system_prompt: str = JUDGE_SYSTEM,
) -> dict[str, Any]:
    """Win rate (percent) of ``model_outputs`` over ``reference_outputs``.

    Returns ``{"win_rate", "n", "wins", "losses", "ties", "model_first"}``;
    ``ties`` counts ties and unparseable verdicts (0.5 each), ``model_first``
    how many items showed the model's output as "A".
    """
    n = len(instructions)
    if not (len(model_outputs) == n == len(reference_outputs)):
        raise ValueError(
            f"length mismatch: {n} instructions, {len(model_outputs)} model outputs, {len(reference_outputs)} references")
    rng = random.Random(seed)
    model_is_a = [rng.random() < 0.5 for _ in range(n)]
    batch = []
    for inst, out, ref, first in zip(instructions, model_outputs, reference_outputs, model_is_a):
        a, b = (out, ref) if first else (ref, out)
        msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
        batch.append(msgs + [{"role": "user", "content": fill(template, instruction=inst, a=a, b=b)}])
    replies = judge.complete_many(batch, temperature=0.0, max_tokens=max_tokens) if batch else []
    wins = losses = ties = 0
    for reply, first in zip(replies, model_is_a):
        verdict = parse_verdict(reply)
        if verdict is None:
            ties += 1
        elif (verdict == "A") == first:
            wins += 1
        else:
            losses += 1
    rate = round(100.0 * (wins + 0.5 * ties) / n, 4) if n else None
    return {"win_rate": rate, "n": n, "wins": wins, "losses": losses, "ties": ties, "model_first": sum(model_is_a)}


def alpacaeval_or_skip(
    cfg_or_none: AlpacaEvalConfig | dict[str, Any] | None,
    instructions: Sequence[str],
    model_outputs: Sequence[str],
    reference_outputs: Sequence[str],
    *,
    transport: Any = None,
    skip_reason: str = SKIP_REASON,
) -> dict[str, Any]:
    """:func:`win_rate` with the configured judge, or ``{"skipped": skip_reason}`` when none is configured."""
    if cfg_or_none is None or isinstance(cfg_or_none, dict) and not cfg_or_none:
        return {"skipped": skip_reason}
    cfg = cfg_or_none if isinstance(cfg_or_none, AlpacaEvalConfig) else AlpacaEvalConfig.from_dict(
        cfg_or_none, where="eval.alpacaeval.judge")
    if cfg.llm is None or not cfg.llm.base_url or not cfg.llm.model:
        return {"skipped": skip_reason}
    k = cfg.max_items or len(instructions)
    with ChatClient(cfg.llm, transport=transport) as judge:
        res = win_rate(list(instructions)[:k], list(model_outputs)[:k], list(reference_outputs)[:k], judge,
                       seed=cfg.seed, max_tokens=cfg.max_tokens)
    res["judge"] = cfg.llm.model
    return res
