"""Direct request: the harmful question as the user turn, no attack.

The no-attack baseline every attack is compared with.
"""

from __future__ import annotations

from derta.attacks.base import Attack, AttackPrompt, NoParams, Question, Target, register


@register
class Direct(Attack):
    """The question as is, in the chat template (no-attack baseline)."""

    name = "direct"
    box = "black"
    Config = NoParams

    def build(self, questions: list[Question], target: Target | None = None) -> list[AttackPrompt]:
        return [self.prompt(q, q.question) for q in questions]
