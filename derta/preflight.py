"""``derta check-profile NAME``: a profile's preflight, in seconds, before any GPU time.

It loads only the profile's resolved config and its tokenizer (no weights)
and checks what would otherwise surface after hours of training:

* ``chat``: params.yaml ``chat`` resolves against the tokenizer (a ``{q}``
  template, or the tokenizer's chat template reduced to one; EOS; BOS).
* ``refusal_token``: ``chat.refusal_word`` is one token where a safe response
  starts (after the prompt and ``chat.response_sep``). Real tokenizers differ:
  SmolLM2 has ``"Sorry"`` as one token and ``" Sorry"`` as two, so after its
  chat template (``response_sep: ""``) it passes and after ``"[INST] ... "``
  (``response_sep: " "``) it fails.
* ``eos``: the tokenizer has an EOS token and ``chat.eos`` (appended to every
  training response) is that token, so the model learns to stop.
* ``template``: synthesis and generation, configured from ``chat`` as the
  stages configure them, render a question to the same prompt text.
* ``batch``: ``train.total_batch_size`` is divisible by
  ``per_device_batch_size x ranks``.

Each check returns ``(name, ok, detail)``; the CLI prints them and exits 1 if
any fails, 2 on a config error (unknown profile, no tokenizer).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from derta.chat import SAMPLE_QUESTION
from derta.config import load_params, step_config
from derta.errors import ConfigError

Check = tuple[str, bool, str]


def load_tokenizer(tok_path: str, fallback: str | Path | None = None):
    """The profile's tokenizer, offline: a local dir, an HF id already in the local cache, or ``fallback``."""
    from transformers import AutoTokenizer

    source = tok_path or (str(fallback) if fallback and Path(fallback).is_dir() else "")
    if not source:
        raise ConfigError("no tokenizer: the profile trains its own (run the `tokenizer` stage first) or pass --tokenizer DIR")
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"tokenizer {source!r} is not available offline ({type(err).__name__}); pass --tokenizer DIR") from None


def check_chat(chat, tok) -> tuple[Check, Any]:
    """``chat`` resolves against the tokenizer (template, EOS, BOS); returns the check and the ChatFormat (or None)."""
    from derta.chat import ChatFormat

    try:
        fmt = ChatFormat.resolve(chat, tok)
    except ConfigError as err:
        return ("chat", False, str(err)), None
    return ("chat", True, f"prompt {fmt.prompt('{q}')!r}, response_sep {fmt.response_sep!r}"), fmt


def check_refusal_token(fmt, tok) -> Check:
    """The refusal word is one token where a safe response starts (after the prompt and ``response_sep``)."""
    try:
        tid = fmt.refusal_token_id(tok)
    except ConfigError as err:
        return ("refusal_token", False, str(err))
    return ("refusal_token", True, f"{fmt.refusal_text!r} = token {tid} {tok.convert_ids_to_tokens([tid])}, the first token of a safe response")


def check_eos(tok, eos: str) -> Check:
    if not tok.eos_token:
        return ("eos", False, "the tokenizer has no EOS token")
    if eos != tok.eos_token:
        return ("eos", False, f"chat.eos {eos!r} is not the tokenizer's EOS {tok.eos_token!r}: the model never learns to stop")
    return ("eos", True, f"{eos!r}")


def check_template(train_prompt: str, eval_prompt: str) -> Check:
    if train_prompt != eval_prompt:
        return ("template", False, f"training renders {train_prompt!r}, evaluation {eval_prompt!r}")
    return ("template", True, "training and evaluation render the same prompt")


def check_batch(total: int, per_device: int, ranks: int) -> Check:
    if total % (per_device * ranks):
        return ("batch", False, f"train.total_batch_size {total} is not divisible by per_device_batch_size {per_device} x {ranks} rank(s)")
    return ("batch", True, f"accumulation {total // (per_device * ranks)} = {total} / ({per_device} x {ranks})")


def check_profile(params: dict[str, Any], profile: str, tokenizer: str | None = None, ranks: int = 1,
                  fallback_tokenizer: str | Path | None = "models/tokenizer") -> list[Check]:
    """Every preflight check of ``profile`` (see the module docstring)."""
    from derta.attacks.base import AttackPrompt
    from derta.chat import chat_config
    from derta.generate import GenerationConfig, format_prompt
    from derta.modeling import TokenizerConfig
    from derta.train import TrainConfig
    from derta.variants import Builder, SynthesizeConfig

    train = step_config(TrainConfig, params, "train", profile)
    tcfg = step_config(TokenizerConfig, params, "tokenizer", profile)
    tok = load_tokenizer(tokenizer or tcfg.path, fallback_tokenizer)
    chat_check, fmt = check_chat(chat_config(params, profile), tok)
    batch = check_batch(train.total_batch_size, train.per_device_batch_size, ranks)
    if fmt is None:
        return [chat_check, batch]
    # Synthesis and generation are configured from the same ChatFormat, as the stages do.
    train_prompt = Builder(SynthesizeConfig(**fmt.synthesize_fields())).prompt(SAMPLE_QUESTION)
    gen = GenerationConfig(**fmt.generation_fields())
    eval_prompt = format_prompt(AttackPrompt(id="q", question_id="q", attack="direct", text=SAMPLE_QUESTION), gen, tok)
    return [chat_check, check_refusal_token(fmt, tok), check_eos(tok, fmt.eos), check_template(train_prompt, eval_prompt), batch]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("check-profile", help="a profile's preflight: refusal token, EOS, template, batch (seconds, no weights)")
    p.add_argument("profile", help="profile name in params.yaml (profiles.<name>; '' = the top-level settings)")
    p.add_argument("--params", default="params.yaml", help="params file")
    p.add_argument("--tokenizer", default=None, help="local tokenizer dir (default: the profile's tokenizer.path, offline)")
    p.add_argument("--ranks", type=int, default=int(os.environ.get("WORLD_SIZE", "1")), help="data-parallel ranks (default $WORLD_SIZE or 1)")
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: argparse.Namespace) -> int:
    checks = check_profile(load_params(args.params), args.profile, args.tokenizer, args.ranks)
    width = max(len(name) for name, _, _ in checks)
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name:<{width}}  {detail}")
    failed = [name for name, ok, _ in checks if not ok]
    if failed:
        print(f"profile {args.profile!r} fails preflight: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
