"""Shared argv handling of the stage entry points (``python -m steps.<stage>``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from derta.errors import ConfigError, DataError

for _k, _v in {"GX_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1", "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}.items():
    os.environ.setdefault(_k, _v)


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    p.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    p.add_argument("--profile", default=None, help="override params.yaml's profile")
    return p


def entry(fn: Callable[[], object]) -> None:
    """Run a stage main; bad input or config exits 2 with one clear line, nothing half-written."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("great_expectations", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        fn()
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except ConfigError as err:
        argv = sys.argv[1:]
        params = argv[argv.index("--params") + 1] if "--params" in argv[:-1] else "params.yaml"
        print(f"error: {params}: {err}", file=sys.stderr)
        sys.exit(2)
    end_distributed()


def end_distributed() -> None:
    """Tear down the process group a launcher's rank set up (DeepSpeed, torchrun), after a stage succeeded.

    Left to the interpreter's exit, gloo's worker threads can outlive it and abort the rank ("terminate called
    without an active exception", exit 250) after all its work is done. Only on success: a rank that failed
    must not wait in a barrier for the others. A no-op where torch.distributed was never imported or started.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()


def chat_format(params: dict, profile: str | None, tokenizer_dir: str | None = None):
    """The profile's ``chat`` section resolved against its tokenizer (derta.chat); ``tokenizer_dir`` may be None
    when no chat value names the tokenizer."""
    from derta.chat import TOKENIZER, ChatFormat, chat_config

    cfg = chat_config(params, profile)
    tok = None
    if tokenizer_dir and TOKENIZER in (cfg.template, cfg.eos, cfg.bos):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return ChatFormat.resolve(cfg, tok)
