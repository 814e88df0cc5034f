"""Reading model outputs to judge, in every shape the release (and ``../shared/judge-dev``) uses.

Accepted input: JSON lines, or one JSON list, of

(a) a plain string holding prompt and response. The response starts after
    the last chat marker (``[/INST]``, ``[\\INST]``, ``ASSISTANT:``,
    ``### Response:``, LLaMA-3/ChatML assistant headers). Without a marker:
    * a PAIR run summary (``Goal: ...`` ... ``Example Jailbreak RESPONSE:``)
      is read as (goal, response); a summary with no jailbreak found has no
      response: the attack failed on that question, which counts as safe
      (``Responses.no_response``), it is not judged;
    * a raw completion prompt (CompletionAttack: an opening ending in
      ``Step 1:``, then the model's continuation) is read with the opening
      as the attacker's prefill, so only the continuation counts;
    * anything else is all response, with an empty question;
(b) ``{"question", "response"}``; (c) ``{"instruction", "response"}``
    (``prompt`` is accepted for the question too). Optional keys: ``id``,
    ``prefill``, ``attack``.

With ``one_per_question`` a question that occurs again (the release's
AutoDAN files hold 52 rows for 50 questions, the paper's denominator being
50) is judged once, at its first occurrence; the repeats are counted in
``Responses.skipped["repeated_question"]``.

Bad input raises :class:`DataError` (file, line, rule).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from derta.errors import DataError
from derta.io import MAX_FIELD_CHARS, json_records, read_utf8
from derta.judges.base import JudgeInput

# Where a response starts inside a "prompt + response" string; the last hit wins.
RESPONSE_MARKERS = [
    "[/INST]",
    "[\\INST]",
    "ASSISTANT:",
    "### Response:",
    "<|start_header_id|>assistant<|end_header_id|>",
    "<|im_start|>assistant",
    "\nAssistant:",
]
PROMPT_NOISE = [
    "<|begin_of_text|>", "<|start_header_id|>user<|end_header_id|>", "<|start_header_id|>system<|end_header_id|>",
    "<|eot_id|>", "<|im_start|>user", "<|im_start|>system", "<|im_end|>", "<s>", "</s>", "[INST]", "USER:",
    "### Instruction:", "<<SYS>>", "<</SYS>>",
]
RESPONSE_NOISE = ["</s>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>"]
QUESTION_KEYS = ("question", "instruction", "prompt")

# PAIR's run summary (its reference implementation prints this block per question).
PAIR_GOAL_RE = re.compile(r"^Goal:[ \t]*(.*)$", re.M)
PAIR_RESPONSE = "Example Jailbreak RESPONSE:"
PAIR_FAILED_RE = re.compile(r"No jailbreaks? achieved", re.I)
# A raw completion prompt: an opening of at most a few lines that ends in "Step 1:".
COMPLETION_OPENING_RE = re.compile(r"\A(?P<opening>[^\n]{0,400}(?:\n[^\n]{0,400}){0,3}?[ \t]*\bStep\s*1\s*:)")


@dataclass
class Responses:
    """What a responses file holds: items to judge, plus entries counted but not judged."""

    items: list[JudgeInput]
    no_response: int = 0  # the attack found no jailbreak (PAIR): counted, safe
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> entries neither judged nor counted


def split_prompt_response(text: str) -> tuple[str, str]:
    """Split a release output string into (question, response) at the last chat marker."""
    best, cut = -1, -1
    for m in RESPONSE_MARKERS:
        i = text.rfind(m)
        if i >= 0 and i + len(m) > cut:
            best, cut = i, i + len(m)
    if best < 0:
        return "", _clean(text, RESPONSE_NOISE)
    return _clean(text[:best], PROMPT_NOISE), _clean(text[cut:], RESPONSE_NOISE)


def _clean(s: str, noise: list[str]) -> str:
    for n in noise:
        s = s.replace(n, " " if n.startswith("<") or n.startswith("[") else "")
    return s.strip()


def parse_string(text: str, prompts: tuple[str, ...] = ()) -> tuple[str, str, str] | None:
    """(question, response, prefill) of a string entry; ``None`` for a PAIR summary with no jailbreak.

    ``prompts``: the attack's rendered raw prompts, when known (the release's
    ``safety_completionattack.json``); the longest one the string starts with
    is the attacker's prefill.
    """
    goal = PAIR_GOAL_RE.search(text)
    if goal and "FINAL SUMMARY" in text[: goal.start()]:
        if PAIR_RESPONSE not in text:
            return None
        return goal.group(1).strip(), text.split(PAIR_RESPONSE, 1)[1].strip(), ""
    question, response = split_prompt_response(text)
    if question:
        return question, response, ""
    given = max((p for p in prompts if p and text.startswith(p)), key=len, default="")
    m = COMPLETION_OPENING_RE.match(text)
    opening = given or (m.group("opening") if m else "")
    if opening:
        return re.sub(r"\bStep\s*1\s*:\s*$", "", opening.strip()).strip(), text, opening
    return "", response, ""


def _from_object(rec: dict[str, Any], where: tuple[str, int], attack: str) -> tuple[str, str, str, str, str | None]:
    """(question, response, prefill, attack, id) of an object entry; checks fields and types."""
    if "response" not in rec:
        raise DataError(*where, "required_field", "missing field 'response'")
    qkey = next((k for k in QUESTION_KEYS if k in rec), None)
    if qkey is None:
        raise DataError(*where, "required_field", "missing field 'question' (or 'instruction'/'prompt')")
    for key in (qkey, "response", "prefill", "attack"):
        if key in rec and not isinstance(rec[key], str):
            raise DataError(*where, "type", f"field {key!r} must be str, got {type(rec[key]).__name__}")
    rid = None
    if "id" in rec:
        if not isinstance(rec["id"], (str, int)) or isinstance(rec["id"], bool):
            raise DataError(*where, "type", f"field 'id' must be str or int, got {type(rec['id']).__name__}")
        rid = str(rec["id"])
    return rec[qkey], rec["response"], rec.get("prefill", ""), rec.get("attack") or attack, rid


def read_file(path: str | Path, attack: str = "", prompts: tuple[str, ...] = (), one_per_question: bool = False) -> Responses:
    """Read model outputs in any release shape (ids: record ``id`` or ``<attack>-<index>``).

    ``prompts``: known raw attack prompts (see :func:`parse_string`);
    ``one_per_question``: judge a repeated question once (module docstring).
    """
    path = Path(path)
    out = Responses(items=[])
    seen_ids: set[str] = set()
    seen_questions: set[str] = set()
    records = json_records(read_utf8(path), str(path))
    for idx, (lineno, rec) in enumerate(records):
        where = (str(path), lineno)
        prefill, rec_attack, rid = "", attack, None
        if isinstance(rec, str):
            parsed = parse_string(rec, prompts)
            if parsed is None:
                out.no_response += 1
                continue
            question, response, prefill = parsed
        elif isinstance(rec, dict):
            question, response, prefill, rec_attack, rid = _from_object(rec, where, attack)
        else:
            raise DataError(*where, "shape", f"expected a JSON string or object, got {type(rec).__name__}")
        if max(len(question), len(response)) > MAX_FIELD_CHARS:
            raise DataError(*where, "max_length", f"a field is longer than {MAX_FIELD_CHARS} chars")
        rid = rid if rid is not None else f"{attack or 'response'}-{idx:05d}"
        if rid in seen_ids:
            raise DataError(*where, "unique_id", f"duplicate id {rid!r}")
        seen_ids.add(rid)
        if one_per_question and question and question in seen_questions:
            out.skipped["repeated_question"] = out.skipped.get("repeated_question", 0) + 1
            continue
        seen_questions.add(question)
        out.items.append(JudgeInput(rid, question, response, rec_attack, prefill))
    if not records:
        raise DataError(str(path), 0, "non_empty", "no responses in file")
    return out


def read_responses(path: str | Path, attack: str = "", prompts: tuple[str, ...] = ()) -> list[JudgeInput]:
    """The items of :func:`read_file` (entries to judge), in file order."""
    return read_file(path, attack, prompts).items


def read_prompts(path: str | Path) -> tuple[str, ...]:
    """Rendered attack prompts: JSON lines or a JSON list of ``{"question": prompt}`` or plain strings."""
    path = Path(path)
    out = []
    for lineno, rec in json_records(read_utf8(path), str(path)):
        text = rec.get("question") if isinstance(rec, dict) else rec
        if not isinstance(text, str):
            raise DataError(str(path), lineno, "shape", "expected a string or an object with a string 'question'")
        out.append(text)
    return tuple(out)
