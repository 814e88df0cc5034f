"""Tokenizer and tiny base model of the mini-world.

* A byte-level BPE tokenizer trained locally with ``tokenizers`` in which the
  chat-template markers and EOS are special tokens and the refusal word is one
  token (checked: :func:`refusal_token_id`).
* A Llama-architecture causal LM initialised from a config. Any Hugging Face
  causal LM path works in its place (profiles name one with ``model.path``).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Iterable

from pydantic import Field

from derta.config import StepConfig
from derta.errors import ConfigError


class TokenizerConfig(StepConfig):
    """Byte-level BPE trained on the mini-world."""

    vocab_size: int = Field(1024, description="BPE vocabulary size (incl. special tokens).")
    min_frequency: int = Field(2, description="Minimum pair frequency for a merge.")
    special_tokens: list[str] = Field(
        ["<|end_of_text|>", "<pad>", "[INST]", "[\\INST]"],
        description="Special tokens; the first is EOS, the second padding; chat markers follow.",
    )
    refusal_word: str = Field("Sorry", description="Made / checked to be one token; the pipeline sets it from params.yaml `chat`.")
    path: str = Field("", description="HF id or local path of a pretrained model's tokenizer; set = copy it (refusal word checked) instead of training a BPE.")


class ModelConfig(StepConfig):
    """A Llama-architecture causal LM built from a config (or loaded from a path)."""

    path: str = Field("", description="Hugging Face id or local path of a pretrained base model; empty = build the tiny model.")
    hidden_size: int = Field(128, description="Hidden size of the tiny model.")
    intermediate_size: int = Field(384, description="MLP width.")
    num_hidden_layers: int = Field(4, description="Decoder layers.")
    num_attention_heads: int = Field(4, description="Attention heads.")
    num_key_value_heads: int = Field(4, description="KV heads (GQA when smaller).")
    max_position_embeddings: int = Field(512, description="Longest sequence.")
    tie_word_embeddings: bool = Field(True, description="Tie input and output embeddings.")
    trust_remote_code: bool = Field(False, description="Allow a hub model's own code (off unless a profile needs it).")


def train_tokenizer(cfg: TokenizerConfig, texts: Iterable[str], out_dir: str | Path):
    """Train a byte-level BPE and save it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(cfg.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The refusal word is the RTO target and must be one token: repeating it
    # (bare and after a space) makes BPE merge it whole even in a small corpus.
    word = cfg.refusal_word.strip()
    tok.train_from_iterator(itertools.chain(texts, [word, " " + word] * 500), trainer=trainer)
    eos, pad = cfg.special_tokens[0], cfg.special_tokens[1]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad, bos_token=None)
    fast.add_special_tokens({"additional_special_tokens": list(cfg.special_tokens[2:])})
    fast.padding_side = "left"
    fast.save_pretrained(str(out_dir))
    refusal_token_id(fast, cfg.refusal_word)  # fail early, before any training
    return fast


def refusal_token_id(tokenizer, word: str) -> int:
    """Id of the refusal word, which must be exactly one token (paper: "Sorry")."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ConfigError(
            f"refusal word {word!r} is {len(ids)} tokens {pieces} in this tokenizer; "
            "choose a word that is a single token (e.g. 'Sorry' for LLaMA3) or retrain the tokenizer"
        )
    return ids[0]


def build_model(cfg: ModelConfig, tokenizer, seed: int = 0):
    """The tiny Llama from ``cfg`` (seeded init), or ``cfg.path`` loaded from safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if cfg.path:
        return AutoModelForCausalLM.from_pretrained(cfg.path, trust_remote_code=cfg.trust_remote_code, use_safetensors=True)
    torch.manual_seed(seed)
    conf = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(conf)


def model_weights(model_dir: str | Path) -> Path | str:
    """The weights of a pipeline model dir: ``<dir>/model``, or for a real base model (pretrain with
    ``model.path``) the directory its ``source.json`` names."""
    import json

    model_dir = Path(model_dir)
    if (model_dir / "model").is_dir() or not (model_dir / "source.json").exists():
        return model_dir / "model"
    path = json.loads((model_dir / "source.json").read_text(encoding="utf-8"))["path"]
    return Path(path) if Path(path).is_dir() else path  # a hub id: loaded from the local cache


def load_model(path: str | Path, trust_remote_code: bool = False):
    """Load a saved model + tokenizer (safetensors only)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=trust_remote_code, use_safetensors=True)
    return model, tok


def set_threads() -> None:
    """Use the machine's cores for intra-op parallelism (CPU runs)."""
    import torch

    n = int(os.environ.get("DERTA_THREADS", "0")) or os.cpu_count() or 1
    torch.set_num_threads(n)
