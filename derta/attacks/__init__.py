"""Attack registry: name -> class, one file per attack (CONVENTIONS 7).

    attack = get_attack("codeattack", {"n_steps": 5}, seed=0)
    prompts = attack.build(questions, target)

Paper attacks (DeRTa section 4, "Evaluation"): codeattack, pair,
jailbreakchat, selfcipher (black box); completingattack, autodan (white
box). Baselines: direct (the question as is) and prefill (harmful-prefix
continuation from the mini world's ground truth).
"""

from __future__ import annotations

from typing import Any

from derta.attacks.base import ATTACKS, Attack, AttackPrompt, Question, Target, register
from derta.config import StepConfig
from derta.errors import ConfigError

# Imported for their @register side effect.
from derta.attacks import (  # noqa: E402,F401  isort: skip
    autodan,
    codeattack,
    completingattack,
    direct,
    jailbreakchat,
    pair,
    prefill,
    selfcipher,
)

__all__ = ["ATTACKS", "Attack", "AttackPrompt", "Question", "Target", "get_attack", "list_attacks", "register"]


def get_attack(name: str, cfg_dict: dict[str, Any] | StepConfig | None = None, seed: int = 0, **kwargs: Any) -> Attack:
    """Build a registered attack. ``kwargs`` go to the constructor (e.g. ``scorer=`` for PAIR).

    Unknown names and unknown config keys raise :class:`ConfigError` listing the valid ones.
    """
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; valid attacks: {sorted(ATTACKS)}")
    cls = ATTACKS[name]
    cfg = cfg_dict if isinstance(cfg_dict, StepConfig) else cls.Config.from_dict(cfg_dict, where=f"attack {name}")
    return cls(cfg, seed=seed, **kwargs)


def list_attacks() -> list[dict[str, str]]:
    """``[{name, box, doc}]`` sorted by name; ``doc`` is the first line of the class docstring."""
    out = []
    for name in sorted(ATTACKS):
        cls = ATTACKS[name]
        doc = (cls.__doc__ or "").strip().splitlines()
        out.append({"name": name, "box": cls.box, "doc": doc[0] if doc else ""})
    return out
