"""Generation backends: the model under test as a :class:`derta.attacks.base.Target`.

Registry ``BACKENDS`` (``generation.backend``), built by :func:`load_target`:

* ``hf``: :class:`HFTarget`, batched greedy decoding with left padding and
  length-sorted batches (Hugging Face ``generate``), CPU or GPU.
* ``vllm``: :class:`VLLMTarget`, the optional GPU backend
  (``pip install -e '.[gpu]'``), imported lazily. :func:`check_backend`
  raises a :class:`ConfigError` naming that extra before any model is loaded.

Both feed the model the same token ids: the formatted prompt tokenized
without special tokens, left-truncated to ``max_prompt_tokens``.

Prompt formatting (must match training, see derta/variants.py): a chat prompt
is ``template.format(q=text)``, followed by ``response_sep + prefill`` when the
attack prefills the response; a raw prompt (``chat=False``) is fed as is.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from derta.attacks.base import AttackPrompt
from derta.chat import response, started_response
from derta.config import StepConfig
from derta.errors import ConfigError

# generation.backend -> what it runs (the classes are below; load_target builds them).
BACKENDS: dict[str, str] = {
    "hf": "HFTarget: batched Hugging Face transformers generate (CPU or GPU)",
    "vllm": "VLLMTarget: vLLM engine (GPU; pip install -e '.[gpu]')",
}
GPU_EXTRA = "pip install -e '.[gpu]'"


class GenerationConfig(StepConfig):
    """Decoding settings (paper: greedy)."""

    backend: str = Field("hf", description="hf (batched transformers generate) or vllm (GPU; pip install -e '.[gpu]').")
    batch_size: int = Field(64, description="Prompts per batch (batches are length-sorted).")
    max_new_tokens: int = Field(96, description="New tokens per response.")
    prompt_template: str = Field("[INST] {q} [\\INST]", description="Prompt format; the pipeline sets it from params.yaml `chat` "
                                                                    "(derta.chat), as it does synthesis's, so the two are equal.")
    response_sep: str = Field(" ", description="Text between the prompt and the response (from `chat`, as in training).")
    max_prompt_tokens: int = Field(1024, description="Prompts are left-truncated to this many tokens.")

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        if v not in BACKENDS:
            raise ValueError(f"unknown generation backend {v!r}; valid: {sorted(BACKENDS)}")
        return v


def check_backend(cfg: GenerationConfig, where: str = "generation") -> None:
    """Raise :class:`ConfigError` now if ``cfg.backend`` cannot run here (unknown, or its package missing).

    Cheap (no import of the backend): callers run it before loading any model.
    """
    if cfg.backend not in BACKENDS:  # a config built with model_copy(update=...) skips the validator
        raise ConfigError(f"{where}.backend: unknown generation backend {cfg.backend!r}; valid: {sorted(BACKENDS)}")
    if cfg.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError(f"{where}.backend 'vllm': the vllm package is not installed; install the GPU extra "
                          f"({GPU_EXTRA}) or set {where}.backend: hf")


def load_target(model_path: str | Path, cfg: GenerationConfig, where: str = "generation") -> HFTarget | VLLMTarget:
    """The model saved at ``model_path`` (a Hugging Face model dir) as a Target on ``cfg.backend``.

    Both targets expose the tokenizer as ``.tok``.
    """
    check_backend(cfg, where)
    if cfg.backend == "vllm":
        return VLLMTarget(str(model_path), cfg)
    from derta.modeling import load_model

    model, tok = load_model(model_path)
    return HFTarget(model, tok, cfg)


def format_prompt(p: AttackPrompt, cfg: GenerationConfig, tokenizer=None) -> str:
    """The exact text given to the model for one attack prompt."""
    if not p.chat:
        return p.text
    # A prefill is a started response: joined exactly as a harmful prefix in training.
    return started_response(cfg.prompt_template.format(q=p.text), cfg.response_sep, p.prefill)


def response_texts(prompts: list[AttackPrompt], continuations: list[str], cfg: GenerationConfig) -> list[str]:
    """Each continuation as the text a response puts after its prompt: ``response_sep`` first, as in training and
    generation (the mini-world's " Sure" is two tokens that "Sure" alone is not); after a prefill, none (the
    prefill already holds it). An empty continuation stays empty (its log-likelihood is 0)."""
    return [c if not c or p.prefill else response(cfg.response_sep, c) for p, c in zip(prompts, continuations)]


class HFTarget:
    """Greedy batched generation and log-likelihoods with a local HF causal LM."""

    def __init__(self, model, tokenizer, cfg: GenerationConfig):
        import torch

        self.model, self.tok, self.cfg = model.eval(), tokenizer, cfg
        self.tok.padding_side = "left"
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.device = next(model.parameters()).device
        self._torch = torch

    def _encode(self, texts: list[str]) -> list[list[int]]:
        ids = self.tok(texts, add_special_tokens=False)["input_ids"]
        return [x[-self.cfg.max_prompt_tokens :] for x in ids]

    def generate_texts(self, texts: list[str], max_new_tokens: int | None = None, skip_special_tokens: bool = True) -> list[str]:
        """Greedy continuations of raw texts (order preserved)."""
        torch = self._torch
        max_new = max_new_tokens or self.cfg.max_new_tokens
        enc = self._encode(texts)
        order = sorted(range(len(texts)), key=lambda i: len(enc[i]))
        out: list[str] = [""] * len(texts)
        pad = self.tok.pad_token_id
        for start in range(0, len(order), self.cfg.batch_size):
            idx = order[start : start + self.cfg.batch_size]
            width = max(len(enc[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                n = len(enc[i])
                ids[row, width - n :] = torch.tensor(enc[i])
                mask[row, width - n :] = 1
            with torch.no_grad():
                gen = self.model.generate(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device), max_new_tokens=max_new,
                    do_sample=False, pad_token_id=pad, eos_token_id=self.tok.eos_token_id,
                )
            for row, i in enumerate(idx):
                out[i] = self.tok.decode(gen[row, width:], skip_special_tokens=skip_special_tokens)
        return out

    def generate(self, prompts: list[AttackPrompt], max_new_tokens: int | None = None) -> list[str]:
        return self.generate_texts([format_prompt(p, self.cfg, self.tok) for p in prompts], max_new_tokens)

    def loglik(self, prompts: list[AttackPrompt], continuations: list[str]) -> list[float]:
        """Sum of log p(continuation | prompt), the continuation where the response starts (``response_texts``),
        tokenized on its own as training tokenizes a response; batched (AutoDAN fitness)."""
        torch = self._torch
        heads = self._encode([format_prompt(p, self.cfg, self.tok) for p in prompts])
        tails = [self.tok.encode(t, add_special_tokens=False) for t in response_texts(prompts, continuations, self.cfg)]
        out: list[float] = []
        for start in range(0, len(heads), self.cfg.batch_size):
            hs, ts = heads[start : start + self.cfg.batch_size], tails[start : start + self.cfg.batch_size]
            seqs = [h + t for h, t in zip(hs, ts)]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), self.tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, s in enumerate(seqs):
                ids[r, width - len(s) :] = torch.tensor(s)
                mask[r, width - len(s) :] = 1
            with torch.no_grad():
                logp = torch.log_softmax(self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float(), -1)
            for r, t in enumerate(ts):
                n = len(t)
                if n == 0:
                    out.append(0.0)
                    continue
                pos = torch.arange(width - n - 1, width - 1)
                tgt = torch.tensor(t)
                out.append(float(logp[r, pos, tgt].sum()))
        return out


class VLLMTarget:
    """vLLM backend for GPU runs (greedy). Imported lazily: ``pip install -e '.[gpu]'``.

    Prompts go in as token ids (``{"prompt_token_ids": ...}``), encoded as
    :class:`HFTarget` encodes them (no special tokens added, left-truncated to
    ``max_prompt_tokens``), so both backends condition on the same tokens.
    """

    def __init__(self, model_path: str, cfg: GenerationConfig, **llm_kwargs: Any):
        from vllm import LLM, SamplingParams  # noqa: PLC0415 - optional GPU extra

        self.cfg = cfg
        self.llm = LLM(model=model_path, trust_remote_code=False, **llm_kwargs)
        self.tok = self.llm.get_tokenizer()
        self._params = SamplingParams(temperature=0.0, max_tokens=cfg.max_new_tokens)
        self._sp = SamplingParams

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return [self.tok.encode(t, add_special_tokens=False)[-self.cfg.max_prompt_tokens :] for t in texts]

    def generate(self, prompts: list[AttackPrompt], max_new_tokens: int | None = None) -> list[str]:
        params = self._params if max_new_tokens is None else self._sp(temperature=0.0, max_tokens=max_new_tokens)
        ids = self._encode([format_prompt(p, self.cfg, self.tok) for p in prompts])
        outs = self.llm.generate([{"prompt_token_ids": x} for x in ids], params)
        return [o.outputs[0].text for o in outs]

    def loglik(self, prompts: list[AttackPrompt], continuations: list[str]) -> list[float]:
        """Sum of log p(continuation | prompt), from vLLM's prompt log-probabilities (as HFTarget.loglik)."""
        params = self._sp(temperature=0.0, max_tokens=1, prompt_logprobs=0)
        heads = self._encode([format_prompt(p, self.cfg, self.tok) for p in prompts])
        tails = [self.tok.encode(t, add_special_tokens=False) for t in response_texts(prompts, continuations, self.cfg)]
        outs = self.llm.generate([{"prompt_token_ids": h + t} for h, t in zip(heads, tails)], params)
        res = []
        for h, t, o in zip(heads, tails, outs):
            # prompt_logprobs[i]: {token id: Logprob} for prompt token i (None at i = 0).
            lps = (o.prompt_logprobs or [])[len(h) :]
            if not t:
                res.append(0.0)
            elif len(lps) != len(t) or any(d is None or tok not in d for d, tok in zip(lps, t)):
                res.append(-math.inf)
            else:
                res.append(float(sum(d[tok].logprob for d, tok in zip(lps, t))))
        return res
