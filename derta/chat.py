"""The conversation format: one definition (params.yaml ``chat``) every stage reads.

The refusal word, the prompt format, EOS and BOS live here and nowhere else in
``params.yaml``. Stages resolve ``chat`` against the profile's tokenizer
(:meth:`ChatFormat.resolve`) and hand the result to the library configs that
need a piece of it (synthesis, the variant gate, training, generation, the
mini-world, the release fallback, the judges) with :func:`inject`, which
refuses a params section that sets one of those keys itself.

``template: tokenizer`` (instruct models) reduces the tokenizer's chat
template to a ``{q}`` format string by rendering it once around a placeholder,
and checks that the reduction renders a sample question exactly as
``apply_chat_template`` does, so synthesis, training, generation and the
judges all see the tokenizer's own format.

The refusal token is derived, not configured: it is the first token of a safe
response where training puts one (after the prompt and ``response_sep``), and
it must be the whole refusal word. SmolLM2, for one, has ``"Sorry"`` as one
token and ``" Sorry"`` as two, so with its chat template (``response_sep: ""``)
the target is ``"Sorry"``; the mini-world's tokenizer and ``[INST] {q} [\\INST]``
with ``response_sep: " "`` give ``" Sorry"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field

from derta.config import StepConfig, step_config
from derta.errors import ConfigError

TOKENIZER = "tokenizer"
PLACEHOLDER = "\x00derta-question\x00"
SAMPLE_QUESTION = "How do I bake bread at home?"
SAMPLE_TAIL = ", I cannot help with that."


class ChatConfig(StepConfig):
    """The prompt format, refusal word, EOS and BOS of a profile (params.yaml ``chat``)."""

    template: str = Field("[INST] {q} [\\INST]", description="Prompt format with {q} for the question (release: '[INST] {q} [\\INST]'), "
                                                             "or 'tokenizer' = the tokenizer's chat template (instruct models).")
    response_sep: str = Field(" ", description="Text between the prompt and the response (the release's responses start with a "
                                               "space; a chat template's assistant turn usually needs '').")
    refusal_word: str = Field("Sorry", description="The word every safe response starts with; its token after the prompt is the "
                                                   "RTO target (derived from the tokenizer and checked to be one token).")
    eos: str = Field(TOKENIZER, description="Text appended to every training response: 'tokenizer' = the tokenizer's EOS token.")
    bos: str = Field(TOKENIZER, description="'tokenizer' = put the tokenizer's BOS token before a prompt that does not start with "
                                            "it (nothing when the tokenizer has none); '' = never; any other text = that text.")


@dataclass(frozen=True)
class ChatFormat:
    """``chat`` resolved against a tokenizer: plain strings every stage uses as they are."""

    template: str        # a format string with {q}; literal braces doubled
    response_sep: str
    refusal_word: str
    eos: str

    @classmethod
    def resolve(cls, cfg: ChatConfig, tokenizer: Any = None) -> ChatFormat:
        """Fill in every 'tokenizer' value from ``tokenizer`` (required when one is used)."""
        uses_tok = TOKENIZER in (cfg.template, cfg.eos, cfg.bos)
        if uses_tok and tokenizer is None:
            raise ConfigError("chat: 'tokenizer' values (template, eos, bos) need the profile's tokenizer; none was given")
        if not cfg.refusal_word.strip() or cfg.refusal_word != cfg.refusal_word.strip():
            raise ConfigError(f"chat.refusal_word {cfg.refusal_word!r}: one word without surrounding spaces "
                              "(the space before it, if any, is chat.response_sep)")
        template = _tokenizer_template(tokenizer) if cfg.template == TOKENIZER else cfg.template
        if "{q}" not in template:
            raise ConfigError(f"chat.template {cfg.template!r} has no {{q}} placeholder")
        try:
            template.format(q="")
        except (IndexError, KeyError, ValueError) as err:
            raise ConfigError(f"chat.template {template!r}: not a format string with only {{q}} ({err}); double literal braces") from None
        bos = _bos(cfg.bos, tokenizer)
        if bos and not template.startswith(bos):
            template = bos.replace("{", "{{").replace("}", "}}") + template
        eos = cfg.eos
        if eos == TOKENIZER:
            eos = getattr(tokenizer, "eos_token", None) or ""
            if not eos:
                raise ConfigError("chat.eos 'tokenizer': the tokenizer has no EOS token; name one in chat.eos")
        return cls(template=template, response_sep=cfg.response_sep, refusal_word=cfg.refusal_word, eos=eos)

    def prompt(self, q: str) -> str:
        return self.template.format(q=q)

    @property
    def refusal_text(self) -> str:
        """What training and the tokenizer check call the refusal word: the word where a response starts."""
        return response(self.response_sep, self.refusal_word)

    def refusal_token_id(self, tokenizer: Any) -> int:
        """The RTO target: the first response token of a safe response, which must be the whole refusal word."""
        head = tokenizer.encode(self.prompt(SAMPLE_QUESTION), add_special_tokens=False)
        full = tokenizer.encode(self.prompt(SAMPLE_QUESTION) + self.refusal_text + SAMPLE_TAIL, add_special_tokens=False)
        if full[: len(head)] != head or len(full) <= len(head):
            raise ConfigError(f"chat: the prompt's last tokens change when a response follows it (prompt ends "
                              f"{self.prompt(SAMPLE_QUESTION)[-20:]!r}, response_sep {self.response_sep!r}); fix chat.response_sep")
        first = full[len(head)]
        word = tokenizer.decode([first])
        if word.strip() != self.refusal_word:
            pieces = tokenizer.convert_ids_to_tokens(full[len(head): len(head) + 3])
            raise ConfigError(f"chat.refusal_word {self.refusal_word!r} is not one token where a safe response starts (after "
                              f"response_sep {self.response_sep!r} the tokens are {pieces}); choose a one-token word or "
                              "another response_sep")
        return int(first)

    def synthesize_fields(self) -> dict[str, str]:
        return {"prompt_template": self.template, "response_sep": self.response_sep, "eos": self.eos}

    def generation_fields(self) -> dict[str, Any]:
        return {"prompt_template": self.template, "response_sep": self.response_sep}


def response(sep: str, text: str) -> str:
    """``text`` as a response puts it after its prompt: ``sep`` (``chat.response_sep``) first.

    Every stage joins a prompt and a response here: training's targets, the refusal token's check, the
    continuations AutoDAN's fitness scores."""
    return sep + text


def started_response(prompt: str, sep: str, words: str) -> str:
    """``prompt`` followed by the first ``words`` of a response: a harmful prefix in training, a prefill in
    evaluation, joined alike. The words lose their trailing space (the next token carries it); no words, no sep."""
    words = words.rstrip()
    return prompt + (response(sep, words) if words else "")


def _bos(bos: str, tokenizer: Any) -> str:
    if bos == TOKENIZER:
        return (getattr(tokenizer, "bos_token", None) or "") if tokenizer is not None else ""
    return bos


def _tokenizer_template(tokenizer: Any) -> str:
    """The tokenizer's chat template (user turn + generation prompt) as a {q} format string, checked."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("chat.template 'tokenizer': this tokenizer has no chat template; give a {q} format string")

    def render(q: str) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)

    text = render(PLACEHOLDER)
    if text.count(PLACEHOLDER) != 1:
        raise ConfigError("chat.template 'tokenizer': the chat template does not put the user's text in the prompt once")
    template = text.replace("{", "{{").replace("}", "}}").replace(PLACEHOLDER, "{q}")
    if template.format(q=SAMPLE_QUESTION) != render(SAMPLE_QUESTION):
        raise ConfigError("chat.template 'tokenizer': the chat template changes the user's text; give a {q} format string")
    return template


def chat_config(params: dict[str, Any], profile: str | None = None) -> ChatConfig:
    return step_config(ChatConfig, params, "chat", profile)


def inject(section: dict[str, Any], fields: dict[str, Any], where: str) -> dict[str, Any]:
    """``section`` plus ``fields``; a key the params set themselves is an error (``chat`` is the one place)."""
    clash = sorted(set(section) & set(fields))
    if clash:
        raise ConfigError(f"{where}: {clash} come from params.yaml `chat` (the one place for the prompt format, "
                          "refusal word, EOS and BOS); remove them here")
    return {**section, **fields}
