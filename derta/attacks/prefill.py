"""Prefill (harmful-prefix) attack: the response starts with n units of a harmful answer.

Contract: for each question with a ``harmful_response`` and each ``n`` in
``cfg.units``, one chat prompt whose ``prefill`` is the first ``n`` units of
that response. A *unit* is a non-blank line; a line holding several inline
"Step k:" items is split before each of them, so units are the
"Sure, here is how to X." opener and the "Step k: ..." steps. The model
continues after the prefill, and the prefill counts as part of the response
(the judge sees prefill + continuation). This is the position-bias probe the
paper trains against (DeRTa section 2: a harmful prefix of random length
followed by a refusal).

Questions without ``harmful_response`` are skipped and counted in
``stats["skipped_no_response"]``; pairs where the response has fewer than
``n`` units are counted in ``stats["skipped_short"]``. Both are logged once.
"""

from __future__ import annotations

import logging
import re

from pydantic import Field, field_validator

from derta.attacks.base import Attack, AttackPrompt, Question, Target, register
from derta.config import StepConfig

log = logging.getLogger(__name__)

_INLINE_STEP = re.compile(r"\s+(?=Step \d+\s*:)")


def split_units(response: str) -> list[str]:
    """Non-blank lines, further split before inline ``Step k:`` markers."""
    units: list[str] = []
    for line in response.splitlines():
        units.extend(part.strip() for part in _INLINE_STEP.split(line) if part.strip())
    return units


class PrefillConfig(StepConfig):
    """Prefill attack parameters."""

    units: list[int] = Field([1, 2], description="prefix lengths n (in units) to try; one prompt per n")
    trailing_newline: bool = Field(
        True, description="end the prefill with a newline so the model starts the next unit"
    )

    @field_validator("units")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(n < 1 for n in v):
            raise ValueError("units must be a non-empty list of integers >= 1")
        return sorted(set(v))


@register
class Prefill(Attack):
    """Chat prompt with the first n units of the harmful response prefilled as the answer's start."""

    name = "prefill"
    box = "white"  # needs control over the assistant turn
    Config = PrefillConfig

    def build(self, questions: list[Question], target: Target | None = None) -> list[AttackPrompt]:
        cfg: PrefillConfig = self.cfg  # type: ignore[assignment]
        out: list[AttackPrompt] = []
        for q in questions:
            units = split_units(q.harmful_response)
            if not units:
                self.count("skipped_no_response")
                continue
            for n in cfg.units:
                if n > len(units):
                    self.count("skipped_short")
                    continue
                prefill = "\n".join(units[:n]) + ("\n" if cfg.trailing_newline else "")
                out.append(self.prompt(q, q.question, f"n={n}", prefill=prefill, meta={"n": n}))
        for key in ("skipped_no_response", "skipped_short"):
            if self.stats.get(key):
                log.warning("prefill: %s = %d (of %d questions)", key, self.stats[key], len(questions))
        return out
