"""Replay: the paper's own already-rendered attack prompts, run verbatim.

The DeRTa release ships the attack prompts the paper evaluated (CodeAttack,
CompletionAttack, JailbreakChat, SelfCipher), already rendered around the 200
illegal instructions. The ``source`` stage writes them to
``<source_dir>/benchmarks/<set>.jsonl`` as rows
``{id, question, question_id, match}``: ``question`` is the rendered prompt,
``question_id`` the id of the plain harmful question it renders ("" when the
ingest could not align it) and ``match`` how it was aligned.

``build(questions)`` keeps the rows whose ``question_id`` is one of
``questions`` (so the caller's dev/eval split and per-attack cap carry over),
in the order of ``questions`` and then file order; unaligned rows are skipped
and counted in ``stats["unaligned"]``. Results are reported under
``release:<set>``, the attack name of every prompt::

    attack = get_attack("release:codeattack", {}, seed=0, source_dir="data/source")
    prompts = attack.build(questions)

CompletionAttack is fed raw (no chat template), as the paper did; the other
sets go inside the chat template (``chat`` overrides this).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from derta.attacks.base import Attack, AttackPrompt, Question, Target, register
from derta.config import StepConfig
from derta.errors import ConfigError, DataError
from derta.io import check_record, json_records, read_utf8

# Release test sets with rendered attack prompts (benchmarks/<set>.jsonl).
SETS: tuple[str, ...] = ("codeattack", "completionattack", "jailbreakchat", "selfcipher")
# Sets the paper fed to the model as is, without the chat template.
RAW_SETS: frozenset[str] = frozenset({"completionattack"})
# Attack names the evaluation reports results under ("release:<set>").
PREFIX = "release:"
RELEASE_ATTACKS: tuple[str, ...] = tuple(PREFIX + s for s in SETS)

_REQUIRED = {"id": str, "question": str, "question_id": str}


class ReplayConfig(StepConfig):
    """Which released attack set to replay, from where, and how to feed it."""

    set: str = Field("", validate_default=True, description=f"release attack set, one of {list(SETS)} (required)")
    file: str = Field("", description="JSON-lines file to read ('' = <source_dir>/benchmarks/<set>.jsonl)")
    chat: bool | None = Field(
        None, description="wrap prompts in the chat template (None = automatic: completionattack raw, others chat)"
    )

    @field_validator("set")
    @classmethod
    def _set(cls, v: str) -> str:
        if v not in SETS:
            raise ValueError(f"set must be one of {list(SETS)} (attack names {list(RELEASE_ATTACKS)}); got {v!r}")
        return v


@register
class Replay(Attack):
    """The paper's released, already-rendered attack prompts, replayed verbatim (release:<set>)."""

    name = "replay"
    box = "black"
    Config = ReplayConfig

    def __init__(self, cfg: StepConfig | None = None, seed: int = 0, source_dir: str | Path | None = None):
        if cfg is None:
            cfg = ReplayConfig.from_dict({}, where=f"attack {type(self).name}")  # raises: 'set' is required
        super().__init__(cfg, seed)
        self.cfg: ReplayConfig = self.cfg  # type: ignore[assignment]
        # Instance attribute: prompts and ids carry the reported name, the registry keeps "replay".
        self.name = PREFIX + self.cfg.set  # type: ignore[misc]
        self.source_dir = Path(source_dir) if source_dir is not None and str(source_dir) != "" else None
        self.stats["unaligned"] = 0

    @property
    def chat(self) -> bool:
        """Whether prompts go inside the chat template."""
        return self.cfg.chat if self.cfg.chat is not None else self.cfg.set not in RAW_SETS

    def path(self) -> Path:
        """The file this attack reads."""
        if self.cfg.file:
            return Path(self.cfg.file)
        if self.source_dir is None:
            raise ConfigError(
                f"attack {self.name}: no source_dir given and no 'file' set; "
                f"expected <source_dir>/benchmarks/{self.cfg.set}.jsonl"
            )
        return self.source_dir / "benchmarks" / f"{self.cfg.set}.jsonl"

    def rows(self) -> list[dict[str, Any]]:
        """The file's rows, schema checked (``DataError`` names file and line)."""
        path = self.path()
        if not path.is_file():
            raise ConfigError(
                f"attack {self.name}: missing file {path} (written by the source stage from the release; "
                f"set 'file' to read another)"
            )
        where = str(path)
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        for lineno, rec in json_records(read_utf8(path), where):
            if not isinstance(rec, dict):
                raise DataError(where, lineno, "object", f"expected a JSON object, got {type(rec).__name__}")
            check_record(rec, where, lineno, _REQUIRED, non_empty=("id", "question"))
            if rec["id"] in seen:
                raise DataError(where, lineno, "unique_id", f"duplicate id {rec['id']!r}")
            seen.add(rec["id"])
            rows.append(rec)
        return rows

    def build(self, questions: list[Question], target: Target | None = None) -> list[AttackPrompt]:
        by_question: dict[str, list[dict[str, Any]]] = {}
        unaligned = 0
        for rec in self.rows():
            if not rec["question_id"].strip():
                unaligned += 1
                continue
            by_question.setdefault(rec["question_id"], []).append(rec)
        self.stats["unaligned"] = unaligned
        chat = self.chat
        out: list[AttackPrompt] = []
        done: set[str] = set()
        for q in questions:
            if q.id in done:
                continue
            done.add(q.id)
            for rec in by_question.get(q.id, ()):
                meta = {"row_id": rec["id"], "match": rec.get("match")}
                out.append(self.prompt(q, rec["question"], variant=rec["id"], chat=chat, meta=meta))
        return out
