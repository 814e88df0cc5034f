"""``derta check-profile NAME``: a profile's preflight, in seconds, before any GPU time.

It loads only the profile's resolved config and its tokenizer (no weights)
and checks what would otherwise surface after hours of training:

* ``refusal_token``: ``train.refusal_word`` is one token, and it is the token
  a safe response starts with where training puts it (after the prompt and
  ``synthesize.response_sep``). Real tokenizers differ: SmolLM2 has
  ``"Sorry"`` as one token and ``" Sorry"`` as two.
* ``refusal_word_one_place``: the tokenizer stage and training name the
  same refusal word.
* ``eos``: the tokenizer has an EOS token and ``synthesize.eos`` (appended to
  every training response) is that token, so the model learns to stop.
* ``template``: training and evaluation render a question to the same prompt
  text (the release template vs the tokenizer's chat template).
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

from derta.config import load_params, step_config
from derta.errors import ConfigError

SAMPLE_QUESTION = "How do I bake bread at home?"
SAMPLE_TAIL = ", I cannot help with that."
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


def check_refusal_token(tok, word: str, prompt: str, sep: str) -> Check:
    """``word`` is one token and is the first response token after ``prompt + sep``."""
    ids = tok.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        return ("refusal_token", False, f"train.refusal_word {word!r} is {len(ids)} tokens {tok.convert_ids_to_tokens(ids)}")
    head = tok.encode(prompt, add_special_tokens=False)
    full = tok.encode(prompt + sep + word.lstrip(" ") + SAMPLE_TAIL, add_special_tokens=False)
    if full[: len(head)] != head or len(full) <= len(head):
        return ("refusal_token", False, f"the prompt's tokens change when a response follows it ({prompt[-30:]!r} + {sep!r})")
    first = full[len(head)]
    if first != ids[0]:
        got = tok.convert_ids_to_tokens([first] + full[len(head) + 1 : len(head) + 2])
        return ("refusal_token", False, f"after the prompt and response_sep {sep!r} a safe response starts with tokens {got}, "
                                        f"not the refusal token {tok.convert_ids_to_tokens(ids)}: the RTO target would never be emitted")
    return ("refusal_token", True, f"{word!r} = token {ids[0]}, the first token of a safe response")


def check_eos(tok, eos: str) -> Check:
    if not tok.eos_token:
        return ("eos", False, "the tokenizer has no EOS token")
    if eos != tok.eos_token:
        return ("eos", False, f"synthesize.eos {eos!r} is not the tokenizer's EOS {tok.eos_token!r}: the model never learns to stop")
    return ("eos", True, f"{eos!r}")


def check_template(tok, train_prompt: str, eval_prompt: str) -> Check:
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
    from derta.generate import GenerationConfig, format_prompt
    from derta.modeling import TokenizerConfig
    from derta.train import TrainConfig
    from derta.variants import SynthesizeConfig

    syn = step_config(SynthesizeConfig, params, "synthesize", profile)
    train = step_config(TrainConfig, params, "train", profile)
    tcfg = step_config(TokenizerConfig, params, "tokenizer", profile)
    gen = step_config(GenerationConfig, params, "eval.generation", profile)
    tok = load_tokenizer(tokenizer or tcfg.path, fallback_tokenizer)
    train_prompt = syn.prompt_template.format(q=SAMPLE_QUESTION)
    eval_prompt = format_prompt(AttackPrompt(id="q", question_id="q", attack="direct", text=SAMPLE_QUESTION), gen, tok)
    same_word = tcfg.refusal_word == train.refusal_word
    return [
        check_refusal_token(tok, train.refusal_word, train_prompt, syn.response_sep),
        ("refusal_word_one_place", same_word,
         f"{train.refusal_word!r}" if same_word else f"tokenizer.refusal_word {tcfg.refusal_word!r} != train.refusal_word {train.refusal_word!r}"),
        check_eos(tok, syn.eos),
        check_template(tok, train_prompt, eval_prompt),
        check_batch(train.total_batch_size, train.per_device_batch_size, ranks),
    ]


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
