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
    replay,
    selfcipher,
)

__all__ = ["ATTACKS", "Attack", "AttackPrompt", "Question", "Target", "get_attack", "list_attacks", "register"]


def get_attack(name: str, cfg_dict: dict[str, Any] | StepConfig | None = None, seed: int = 0, **kwargs: Any) -> Attack:
    """Build a registered attack. ``kwargs`` go to the constructor (e.g. ``scorer=`` for PAIR).

    ``release:<set>`` builds the ``replay`` attack with ``set=<set>`` merged
    into its config (pass ``source_dir=``). Unknown names and unknown config
    keys raise :class:`ConfigError` listing the valid ones.
    """
    label = name
    if name.startswith(replay.PREFIX):
        rset = name[len(replay.PREFIX):]
        if rset not in replay.SETS:
            raise ConfigError(f"unknown attack {name!r}; valid release attacks: {list(replay.RELEASE_ATTACKS)}")
        if isinstance(cfg_dict, StepConfig):
            if getattr(cfg_dict, "set", rset) != rset:
                raise ConfigError(f"attack {name}: config has set={getattr(cfg_dict, 'set')!r}, name says {rset!r}")
        else:
            cfg_dict = dict(cfg_dict or {})
            if cfg_dict.get("set", rset) != rset:
                raise ConfigError(f"attack {name}: config has set={cfg_dict['set']!r}, name says {rset!r}")
            cfg_dict["set"] = rset
        name = replay.Replay.name
    if name not in ATTACKS:
        raise ConfigError(
            f"unknown attack {name!r}; valid attacks: {sorted(ATTACKS)} (and {list(replay.RELEASE_ATTACKS)})"
        )
    cls = ATTACKS[name]
    cfg = cfg_dict if isinstance(cfg_dict, StepConfig) else cls.Config.from_dict(cfg_dict, where=f"attack {label}")
    return cls(cfg, seed=seed, **kwargs)


def list_attacks() -> list[dict[str, str]]:
    """``[{name, box, doc}]`` sorted by name; ``doc`` is the first line of the class docstring."""
    out = []
    for name in sorted(ATTACKS):
        cls = ATTACKS[name]
        doc = (cls.__doc__ or "").strip().splitlines()
        out.append({"name": name, "box": cls.box, "doc": doc[0] if doc else ""})
    return out
