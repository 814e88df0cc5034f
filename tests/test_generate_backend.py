"""``generation.backend`` picks the target the evaluate stage generates with (derta/generate.py).

No vLLM here: a missing package is forced with a patched ``find_spec``, and the
vLLM wiring (token ids in, prompt log-probs out) runs against a fake ``vllm``
module that records what it is given.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import math
import sys
import types
from dataclasses import dataclass

import pytest

from derta.attacks.base import AttackPrompt
from derta.errors import ConfigError
from derta.generate import BACKENDS, GenerationConfig, VLLMTarget, check_backend, format_prompt, load_target


@pytest.fixture
def no_vllm(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "vllm" else real(name, *a, **k))


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading any model fails the test: config errors must come first."""
    import derta.modeling

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(derta.modeling, "load_model", boom)


def test_unknown_backend_is_a_config_error_listing_the_valid_ones():
    from steps.evaluate import EvalConfig

    assert sorted(BACKENDS) == ["hf", "vllm"]
    with pytest.raises(ConfigError, match=r"generation\.backend\n.*unknown generation backend 'tgi'; valid: \['hf', 'vllm'\]"):
        EvalConfig.from_dict({"generation": {"backend": "tgi"}}, where="params.yaml:eval")
    # A config built without validation (model_copy) is caught by check_backend.
    cfg = GenerationConfig().model_copy(update={"backend": "tgi"})
    with pytest.raises(ConfigError, match=r"eval\.generation\.backend: unknown generation backend 'tgi'; valid: \['hf', 'vllm'\]"):
        check_backend(cfg, "eval.generation")


def test_vllm_without_the_package_names_the_extra(no_vllm, no_model_load, tmp_path):
    with pytest.raises(ConfigError, match=r"eval\.generation\.backend 'vllm': the vllm package is not installed; "
                                          r"install the GPU extra \(pip install -e '\.\[gpu\]'\)"):
        load_target(tmp_path / "model", GenerationConfig(backend="vllm"), "eval.generation")
    check_backend(GenerationConfig(backend="hf"))  # hf needs nothing extra


@pytest.mark.parametrize("backend,error", [("vllm", "vllm package is not installed"), ("tgi", "unknown generation backend")])
def test_evaluate_fails_on_the_backend_before_loading_a_model(no_vllm, no_model_load, tmp_path, backend, error):
    import json

    from steps import evaluate

    src = tmp_path / "src"
    src.mkdir()
    (src / "eval_harmful.jsonl").write_text(json.dumps({"id": "h0", "question": "question 0"}) + "\n")
    (src / "eval_helpful.jsonl").write_text(json.dumps({"id": "w0", "question": "q", "answer": "a"}) + "\n")
    cfg = evaluate.EvalConfig.from_dict({"judge": "keyword", "attacks": {"direct": {}}, "over_refusal": {"set": "none"}})
    cfg = cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"backend": backend})})
    with pytest.raises(ConfigError, match=error):
        evaluate.run(cfg, tmp_path / "no-model", src, tmp_path / "ev")
    assert not (tmp_path / "ev").exists()


# --- the vLLM target against a fake vllm module ---------------------------------------------------------
class _Tok:
    """One token per character (id = code point); no special tokens."""

    chat_template = None

    def encode(self, text, add_special_tokens=True):
        assert add_special_tokens is False  # both backends feed the prompt without BOS/EOS
        return [ord(c) for c in text]


@dataclass
class _Logprob:
    logprob: float


class _FakeLLM:
    calls: list = []

    def __init__(self, model, trust_remote_code=False, **kwargs):
        self.model = model

    def get_tokenizer(self):
        return _Tok()

    def generate(self, prompts, params):
        _FakeLLM.calls.append((prompts, params))
        outs = []
        for p in prompts:
            ids = p["prompt_token_ids"]
            # Text: the prompt's length; prompt log-probs: -(position) for the token at each position.
            lps = [None] + [{t: _Logprob(-float(i))} for i, t in enumerate(ids) if i > 0]
            outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f"len={len(ids)}")], prompt_logprobs=lps))
        return outs


class _FakeSamplingParams:
    def __init__(self, **kw):
        self.kw = kw


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    mod.LLM, mod.SamplingParams = _FakeLLM, _FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", mod)
    _FakeLLM.calls = []
    return mod


def test_vllm_backend_feeds_token_ids_like_hf(fake_vllm, no_model_load, tmp_path):
    cfg = GenerationConfig(backend="vllm", max_new_tokens=7, max_prompt_tokens=12, prompt_template="[{q}]")
    target = load_target(tmp_path / "model", cfg)
    assert isinstance(target, VLLMTarget) and target.llm.model == str(tmp_path / "model")
    prompts = [AttackPrompt(id="a", question_id="a", attack="t", text="hi"),
               AttackPrompt(id="b", question_id="b", attack="t", text="a much longer question", prefill="Sure")]
    assert target.generate(prompts) == ["len=4", "len=12"]
    sent, params = _FakeLLM.calls[-1]
    full = format_prompt(prompts[1], cfg, target.tok)
    assert sent[0] == {"prompt_token_ids": [ord(c) for c in "[hi]"]}
    assert sent[1] == {"prompt_token_ids": [ord(c) for c in full][-12:]}  # left-truncated, as HFTarget
    assert params.kw == {"temperature": 0.0, "max_tokens": 7}
    target.generate(prompts[:1], max_new_tokens=3)
    assert _FakeLLM.calls[-1][1].kw == {"temperature": 0.0, "max_tokens": 3}


def test_vllm_loglik_sums_the_continuation_positions(fake_vllm, tmp_path):
    cfg = GenerationConfig(backend="vllm", prompt_template="{q}", response_sep="")
    target = load_target(tmp_path / "model", cfg)
    p = AttackPrompt(id="a", question_id="a", attack="t", text="abc")
    # head "abc" = positions 0-2; continuation "de" = positions 3, 4 -> -(3 + 4).
    assert target.loglik([p, p], ["de", ""]) == [-7.0, 0.0]
    sent, params = _FakeLLM.calls[-1]
    assert sent[0] == {"prompt_token_ids": [ord(c) for c in "abcde"]}
    assert params.kw == {"temperature": 0.0, "max_tokens": 1, "prompt_logprobs": 0}
    assert target.loglik([p], ["x"]) == [-3.0]
    # Log-probs vLLM did not return for a continuation token: -inf, never a partial sum.
    target.llm.generate = lambda prompts, params: [types.SimpleNamespace(outputs=[], prompt_logprobs=[None, None])]
    assert target.loglik([p], ["de"]) == [-math.inf]


def test_vllm_loglik_scores_the_continuation_after_the_response_separator(fake_vllm, tmp_path):
    """The continuation is response text: the response starts after ``response_sep``, as in training."""
    target = load_target(tmp_path / "model", GenerationConfig(backend="vllm", prompt_template="{q}", response_sep=" "))
    p = AttackPrompt(id="a", question_id="a", attack="t", text="abc")
    # " de" = positions 3, 4, 5; the empty continuation stays 0.
    assert target.loglik([p, p], ["de", ""]) == [-12.0, 0.0]
    assert _FakeLLM.calls[-1][0][0] == {"prompt_token_ids": [ord(c) for c in "abc de"]}
    # After a prefill the response has started: no separator again.
    prefilled = AttackPrompt(id="b", question_id="b", attack="t", text="abc", prefill="Su")
    target.loglik([prefilled], ["re"])
    assert _FakeLLM.calls[-1][0][0] == {"prompt_token_ids": [ord(c) for c in "abc Sure"]}


class _CharTok(_Tok):
    """A character tokenizer with what HFTarget needs (batch call, padding)."""

    padding_side, pad_token_id, eos_token, eos_token_id = "right", 0, "\x00", 0

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [self.encode(t, add_special_tokens) for t in texts]}


class _UniformLM:
    """Every next token equally likely over 256 ids: log p(continuation) = -len(tokens) * log 256."""

    def __init__(self):
        import torch

        self.torch, self.weight = torch, torch.nn.Parameter(torch.zeros(1))

    def eval(self):
        return self

    def parameters(self):
        yield self.weight

    def __call__(self, input_ids, attention_mask):
        return types.SimpleNamespace(logits=self.torch.zeros(*input_ids.shape, 256))


@pytest.mark.parametrize("sep", [" ", ""])
def test_hf_loglik_scores_the_continuation_after_the_response_separator(sep):
    """AutoDAN's fitness scores "Sure, ..." as the response's tokens: after response_sep (" Sure" in the
    mini-world, two tokens that "Sure" alone is not), never the word glued to the prompt."""
    from derta.generate import HFTarget

    target = HFTarget(_UniformLM(), _CharTok(), GenerationConfig(prompt_template="[{q}]", response_sep=sep))
    p = AttackPrompt(id="a", question_id="a", attack="t", text="hi")
    got = target.loglik([p, p], ["Sure", ""])
    assert got[0] == pytest.approx(-len(sep + "Sure") * math.log(256)) and got[1] == 0.0
