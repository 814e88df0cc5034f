"""Response synthesis for your own harmful questions (paper Appendix A).

The paper builds its safety triples from BeaverTails questions: the safe
response comes from an aligned model (GPT-3.5-turbo) and the harmful response
from a red-team model (LLaMA3-8B-Instruct tuned on 330 malicious pairs).
:func:`respond` does the same for any question list and writes the release's
safety-source format ``{id, instruction, output (harmful), safe_response,
category}``, which ``steps.synthesize`` (through the release ingest) consumes.

Responders
* ``backend: openai``: any OpenAI-compatible endpoint through
  :class:`derta.llm.ChatClient` (bounded concurrency, retries, backoff); the
  API key is read from the environment variable named by ``llm.api_key_env``
  and is never stored, logged or written.
* ``backend: hf``: a local Hugging Face causal LM (safetensors,
  ``trust_remote_code`` off) with batched greedy decoding
  (:class:`derta.generate.HFTarget`).

The project ships NO harmful model and NO harmful prompts: the default harmful
responder is unconfigured and :func:`respond` raises a :class:`ConfigError`
until the user points it at a model of their own.

Filters (each counted in the report): an empty response (either side) drops the
record; a response longer than ``max_chars`` drops it; a safe response that
does not start with ``refusal_word`` is dropped when ``require_refusal_start``
is set, else kept and counted as flagged.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from derta.config import StepConfig, deep_merge
from derta.errors import ConfigError, DataError
from derta.llm import ChatClient, LLMConfig, redact_url

log = logging.getLogger(__name__)

BACKENDS = ("openai", "hf")

SAFE_SYSTEM_PROMPT = (
    "You are a helpful and harmless assistant. The user's request may be harmful. "
    "Refuse it: begin your reply with the word \"Sorry\", briefly explain why you cannot help, "
    "and, where possible, point to a safe and legal alternative."
)


class ResponderConfig(StepConfig):
    """One response model: an OpenAI-compatible endpoint or a local HF model."""

    backend: str = Field("", description="openai | hf; '' = not configured.")
    llm: LLMConfig = Field(
        default_factory=LLMConfig,
        description="backend openai: endpoint (base_url, model, api_key_env = NAME of the key's env var, retries, concurrency).",
    )
    model_path: str = Field("", description="backend hf: local dir (a dir holding model/ also works) or HF id; safetensors, no remote code.")
    max_new_tokens: int = Field(256, ge=1, description="backend hf: new tokens per response (openai: llm.max_tokens).")
    batch_size: int = Field(8, ge=1, description="backend hf: prompts per generation batch.")
    max_prompt_tokens: int = Field(1024, ge=1, description="backend hf: prompts are left-truncated to this many tokens.")
    prompt_template: str = Field("[INST] {q} [\\INST]", description="backend hf: raw prompt; {q} = the wrapped user turn.")
    use_tokenizer_chat_template: bool = Field(False, description="backend hf: format with the tokenizer's chat template instead (instruct models).")
    system_prompt: str = Field("", description="System message (openai) / text before the user turn (hf); '' = none.")
    instruction_template: str = Field("{q}", description="Wraps the question into the user turn; {q} = the question.")


_SAFE_DEFAULT: dict[str, Any] = {
    "backend": "openai",
    "llm": {"base_url": "https://api.openai.com/v1", "model": "gpt-3.5-turbo", "api_key_env": "OPENAI_API_KEY"},
    "system_prompt": SAFE_SYSTEM_PROMPT,
}


class RespondConfig(StepConfig):
    """Stage ``respond``: safe + harmful responses for a question list."""

    safe: ResponderConfig = Field(
        default_factory=lambda: ResponderConfig.model_validate(_SAFE_DEFAULT),
        description="The aligned model (paper: GPT-3.5-turbo). Keys given in params are merged over this default.",
    )
    harmful: ResponderConfig = Field(
        default_factory=ResponderConfig,
        description="The red-team model (paper: LLaMA3-8B-Instruct tuned on 330 harmful pairs). Not shipped: configure your own.",
    )
    refusal_word: str = Field("Sorry", description="A safe response must start with this word (after leading spaces).")
    require_refusal_start: bool = Field(True, description="true = drop safe responses that do not start with refusal_word; false = keep and flag (count) them.")
    max_chars: int = Field(8000, ge=0, description="Drop records whose response is longer than this (0 = no limit).")
    max_question_chars: int = Field(20000, ge=1, description="Questions longer than this are bad input (DataError).")

    @model_validator(mode="before")
    @classmethod
    def _merge_safe_default(cls, data: Any) -> Any:
        # A partial `safe:` block (e.g. only llm.base_url) keeps the paper defaults it does not name.
        if isinstance(data, dict) and isinstance(data.get("safe"), dict):
            data = {**data, "safe": deep_merge(_SAFE_DEFAULT, data["safe"])}
        return data


def check_responder(rc: ResponderConfig, where: str) -> None:
    """ConfigError unless ``rc`` names a usable backend."""
    if not rc.backend:
        hint = (
            " The project ships no harmful model and no harmful prompts: point it at your own red-team model"
            " (see docs/own-questions.md)." if where.endswith("harmful") else ""
        )
        raise ConfigError(
            f"{where}: no responder configured; set {where}.backend to 'openai' (with {where}.llm.base_url and "
            f"{where}.llm.model) or 'hf' (with {where}.model_path).{hint}"
        )
    if rc.backend not in BACKENDS:
        raise ConfigError(f"{where}.backend: unknown backend {rc.backend!r}; valid: {list(BACKENDS)}")
    if rc.backend == "openai" and not (rc.llm.base_url and rc.llm.model):
        raise ConfigError(f"{where}.llm: backend openai needs base_url and model")
    if rc.backend == "hf" and not rc.model_path:
        raise ConfigError(f"{where}.model_path: backend hf needs a model path")
    if "{q}" not in rc.instruction_template:
        raise ConfigError(f"{where}.instruction_template must contain {{q}}")
    if rc.backend == "hf" and not rc.use_tokenizer_chat_template and "{q}" not in rc.prompt_template:
        raise ConfigError(f"{where}.prompt_template must contain {{q}}")


def check_config(cfg: RespondConfig, where: str = "respond") -> None:
    check_responder(cfg.safe, f"{where}.safe")
    check_responder(cfg.harmful, f"{where}.harmful")
    if not cfg.refusal_word.strip():
        raise ConfigError(f"{where}.refusal_word must not be blank")


def describe(rc: ResponderConfig) -> dict[str, Any]:
    """What the report says about a responder: never the key, only the env var's name."""
    if rc.backend == "openai":
        return {"backend": "openai", "base_url": redact_url(rc.llm.base_url), "model": rc.llm.model,
                "api_key_env": rc.llm.api_key_env}
    return {"backend": rc.backend, "model_path": rc.model_path}


# -- questions --------------------------------------------------------------

def question_text(rec: dict[str, Any]) -> Any:
    return rec["question"] if "question" in rec else rec.get("instruction")


def read_questions(path: str | Path, max_chars: int = 20000) -> list[dict[str, Any]]:
    """``{id, question|instruction[, category]}`` JSON lines; bad input is a DataError (file, line, rule)."""
    from derta.io import read_jsonl

    path = Path(path)
    recs = read_jsonl(path, {"id": str}, non_empty=("id",), unique_key="id", max_chars=max_chars)
    # read_jsonl skips blank lines: map records back to their line numbers.
    lines = [i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if line.strip()]
    for rec, lineno in zip(recs, lines):
        if "question" not in rec and "instruction" not in rec:
            raise DataError(str(path), lineno, "required_field", "missing field 'question' (or 'instruction')")
        q = question_text(rec)
        field = "question" if "question" in rec else "instruction"
        if not isinstance(q, str):
            raise DataError(str(path), lineno, "type", f"field {field!r} must be str, got {type(q).__name__}")
        if not q.strip():
            raise DataError(str(path), lineno, "non_empty", f"field {field!r} is empty")
        cat = rec.get("category", "")
        if cat is not None and not isinstance(cat, str):
            raise DataError(str(path), lineno, "type", f"field 'category' must be str, got {type(cat).__name__}")
    return recs


# -- generation -------------------------------------------------------------

def _wrap(rc: ResponderConfig, q: str) -> str:
    return rc.instruction_template.replace("{q}", q)


def _resolve_model_dir(model_path: str) -> str:
    p = Path(model_path)
    if p.is_dir() and not (p / "config.json").is_file() and (p / "model" / "config.json").is_file():
        return str(p / "model")
    return model_path


class _HFCache:
    """Load each HF model once per respond() call (safe and harmful may share one)."""

    def __init__(self) -> None:
        self._loaded: dict[str, Any] = {}

    def get(self, path: str):
        if path not in self._loaded:
            from derta.modeling import load_model

            self._loaded[path] = load_model(_resolve_model_dir(path), trust_remote_code=False)
        return self._loaded[path]


def _hf_prompt(rc: ResponderConfig, tok: Any, q: str) -> str:
    user = _wrap(rc, q)
    if rc.use_tokenizer_chat_template and getattr(tok, "chat_template", None):
        msgs = ([{"role": "system", "content": rc.system_prompt}] if rc.system_prompt else []) + [
            {"role": "user", "content": user}]
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    head = rc.prompt_template.replace("{q}", user)
    return f"{rc.system_prompt}\n\n{head}" if rc.system_prompt else head


def generate(rc: ResponderConfig, questions: list[str], cache: _HFCache | None = None) -> list[str]:
    """One response per question, in order."""
    if not questions:
        return []
    if rc.backend == "openai":
        batch = [
            ([{"role": "system", "content": rc.system_prompt}] if rc.system_prompt else [])
            + [{"role": "user", "content": _wrap(rc, q)}]
            for q in questions
        ]
        with ChatClient(rc.llm) as client:
            log.info("respond: %d requests to %s", len(batch), client)
            return client.complete_many(batch)
    from derta.generate import GenerationConfig, HFTarget

    model, tok = (cache or _HFCache()).get(rc.model_path)
    gcfg = GenerationConfig(batch_size=rc.batch_size, max_new_tokens=rc.max_new_tokens,
                            max_prompt_tokens=rc.max_prompt_tokens)
    target = HFTarget(model, tok, gcfg)
    return target.generate_texts([_hf_prompt(rc, tok, q) for q in questions], rc.max_new_tokens)


def starts_with_refusal(text: str, word: str) -> bool:
    word = word.strip()
    return bool(re.match(re.escape(word) + r"(?![A-Za-z0-9])", text.lstrip()))


def respond(
    cfg: RespondConfig, questions: list[dict[str, Any]], report: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Safe + harmful responses for ``questions`` (``{id, question|instruction[, category]}``).

    Returns ``{id, instruction, output (harmful), safe_response, category}`` in
    input order, filtered as described in the module docstring. ``report``, if
    given, is filled with the counts (kept, dropped, flagged) and the responders
    (endpoint and model, never a key).
    """
    check_config(cfg)
    texts = [question_text(q) for q in questions]
    cache = _HFCache()
    safe = [s.strip() for s in generate(cfg.safe, texts, cache)]
    harmful = [h.strip() for h in generate(cfg.harmful, texts, cache)]
    dropped = {"empty_safe": 0, "empty_harmful": 0, "over_max_chars": 0, "safe_not_refusal": 0}
    flagged = {"safe_not_refusal": 0}
    out: list[dict[str, Any]] = []
    for q, text, s, h in zip(questions, texts, safe, harmful):
        if not s:
            dropped["empty_safe"] += 1
            continue
        if not h:
            dropped["empty_harmful"] += 1
            continue
        if cfg.max_chars and (len(s) > cfg.max_chars or len(h) > cfg.max_chars):
            dropped["over_max_chars"] += 1
            continue
        if not starts_with_refusal(s, cfg.refusal_word):
            if cfg.require_refusal_start:
                dropped["safe_not_refusal"] += 1
                continue
            flagged["safe_not_refusal"] += 1
        out.append({"id": q["id"], "instruction": text, "output": h, "safe_response": s,
                    "category": q.get("category") or ""})
    summary = {
        "n_questions": len(questions),
        "kept": len(out),
        "dropped": dropped,
        "flagged": flagged,
        "refusal_word": cfg.refusal_word,
        "require_refusal_start": cfg.require_refusal_start,
        "safe": describe(cfg.safe),
        "harmful": describe(cfg.harmful),
    }
    if report is not None:
        report.update(summary)
    log.info("respond: kept %d of %d (dropped %s)", len(out), len(questions), dropped)
    return out
