"""Typed configs: one pydantic model per step (CONVENTIONS 4).

Every field has a default and a help string (``Field(description=...)``).
Unknown keys are errors that list the valid ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from derta.errors import ConfigError

T = TypeVar("T", bound="StepConfig")


class StepConfig(BaseModel):
    """Base of every step config: strict keys, immutable after load."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
        data = dict(data or {})
        valid = sorted(cls.model_fields)
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ConfigError(
                f"{where or cls.__name__}: unknown config key(s) {unknown}; valid keys: {valid}"
            )
        try:
            return cls(**data)
        except ValidationError as err:
            raise ConfigError(f"{where or cls.__name__}: {err}") from None

    @classmethod
    def help(cls) -> str:
        lines = [cls.__doc__.strip().splitlines()[0] if cls.__doc__ else cls.__name__]
        for name, f in cls.model_fields.items():
            lines.append(f"  {name} (default {f.default!r}): {f.description or ''}")
        return "\n".join(lines)


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def section(params: dict[str, Any], dotted: str) -> dict[str, Any]:
    """Return ``params[a][b]...`` for ``dotted='a.b'``; missing sections are empty."""
    node: Any = params
    for key in dotted.split("."):
        if not isinstance(node, dict):
            raise ConfigError(f"params section {dotted!r}: {key!r} is not a mapping")
        node = node.get(key, {})
    return dict(node or {})


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in (over or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve(params: dict[str, Any], dotted: str, profile: str | None = None) -> dict[str, Any]:
    """Section ``dotted`` of params with the active profile's overrides merged in.

    Profiles (``params["profiles"][name]``) mirror the top-level layout, so a
    profile overrides only the keys it names. An unknown profile is an error
    listing the valid ones.
    """
    profile = profile if profile is not None else params.get("profile", "")
    base = section(params, dotted)
    if not profile:
        return base
    profiles = params.get("profiles") or {}
    if profile not in profiles:
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {sorted(profiles)}")
    return deep_merge(base, section(profiles[profile] or {}, dotted))


def step_config(cls: type[T], params: dict[str, Any], dotted: str, profile: str | None = None) -> T:
    return cls.from_dict(resolve(params, dotted, profile), where=f"params.yaml:{dotted}")
