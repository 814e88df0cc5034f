"""Paper profiles (params.yaml `profiles:`) resolve to valid step configs with the Appendix A settings.

Reads the repo's params.yaml (DERTA_PARAMS overrides the path, e.g. to check a
candidate file before it is merged).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from derta.config import load_params, resolve, step_config
from derta.dpo import DPOTrainConfig
from derta.modeling import ModelConfig, TokenizerConfig
from derta.train import TrainConfig, accumulation_steps

REPO = Path(__file__).resolve().parents[1]
PARAMS = load_params(os.environ.get("DERTA_PARAMS", REPO / "params.yaml"))

FULL = {"llama3-8b": "meta-llama/Meta-Llama-3-8B", "mistral-7b": "mistralai/Mistral-7B-v0.1"}
LORA = {"llama3-70b-lora": "meta-llama/Meta-Llama-3-70B", "mixtral-8x7b-lora": "mistralai/Mixtral-8x7B-v0.1",
        "llama3-70b-instruct-lora": "meta-llama/Meta-Llama-3-70B-Instruct"}
PAPER = {**FULL, **LORA}
TINY = ["tiny", "tiny-lora", "tiny-zero2"]


def _train(profile: str) -> TrainConfig:
    return step_config(TrainConfig, PARAMS, "train", profile)


def test_every_profile_is_listed():
    assert set(PAPER) | set(TINY) <= set(PARAMS.get("profiles") or {})


@pytest.mark.parametrize("profile", [*PAPER, *TINY])
def test_profile_resolves_to_valid_configs(profile):
    from steps.evaluate import EvalConfig

    step_config(ModelConfig, PARAMS, "model", profile)
    _train(profile)
    step_config(DPOTrainConfig, PARAMS, "dpo", profile)
    step_config(EvalConfig, PARAMS, "eval", profile)
    if "path" in TokenizerConfig.model_fields:
        step_config(TokenizerConfig, PARAMS, "tokenizer", profile)


@pytest.mark.parametrize("profile", list(PAPER))
def test_paper_common_settings(profile):
    m = step_config(ModelConfig, PARAMS, "model", profile)
    t = _train(profile)
    assert m.path == PAPER[profile]
    assert resolve(PARAMS, "data", profile)["source"] == "release"
    assert t.total_batch_size == 128 and t.bf16 and t.gradient_checkpointing
    assert t.deepspeed and (REPO / t.deepspeed).is_file()
    for ranks in (1, 2, 8):  # total 128 = per_device x accumulation x ranks
        if 128 % (t.per_device_batch_size * ranks) == 0:
            assert t.per_device_batch_size * accumulation_steps(t, ranks) * ranks == 128


@pytest.mark.parametrize("profile", list(FULL))
def test_full_parameter_profiles(profile):
    t = _train(profile)
    assert (t.learning_rate, t.lr_scheduler, t.warmup_ratio, t.weight_decay) == (2e-5, "cosine", 0.03, 2e-5)
    assert t.max_length == 1024 and t.rto_keep_ratio == 0.05 and t.epochs == 2
    assert not t.lora.enabled
    assert t.deepspeed == "configs/deepspeed/zero3_offload.json"
    assert step_config(DPOTrainConfig, PARAMS, "dpo", profile).learning_rate == 5e-7  # paper, 8B


@pytest.mark.parametrize("profile", list(LORA))
def test_lora_profiles(profile):
    t = _train(profile)
    assert t.lora.enabled and (t.lora.r, t.lora.alpha, t.lora.dropout) == (96, 16, 0.05)
    assert t.learning_rate == 1e-4 and t.max_length == 512 and t.warmup_ratio == 0.0 and t.rto_keep_ratio == 1.0
    attn = {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert attn <= set(t.lora.target_modules)
    if profile.startswith("mixtral"):  # experts' w1/w2/w3 = fused gate_up_proj / down_proj in transformers 5
        assert set(t.lora.target_parameters) == {"experts.gate_up_proj", "experts.down_proj"}
    else:
        assert {"gate_proj", "up_proj", "down_proj"} <= set(t.lora.target_modules)
    assert step_config(DPOTrainConfig, PARAMS, "dpo", profile).learning_rate == 2e-6  # paper, 70B


def test_instruct_profile():
    t = _train("llama3-70b-instruct-lora")
    assert t.max_steps == 100
    # the tokenizer's chat template for synthesis, training and generation alike (params.yaml `chat`)
    assert resolve(PARAMS, "chat", "llama3-70b-instruct-lora") == {**PARAMS["chat"], "template": "tokenizer", "response_sep": ""}
    for p in ("llama3-70b-lora", "mixtral-8x7b-lora"):
        assert _train(p).max_steps == -1


def test_tiny_profiles():
    assert _train("tiny-lora").lora.enabled
    zero = _train("tiny-zero2").deepspeed
    assert zero and (REPO / zero).is_file()
    for p in TINY:
        assert not step_config(ModelConfig, PARAMS, "model", p).path  # the mini-world model


def test_the_formats_dev_profile_is_the_formats_profile_cut_to_vanilla_and_derta_on_dev():
    """miniworld-formats-dev writes its sections out (DVC's -S cannot reach into a merged one): they must stay
    the formats profile's, except the variants and the split."""
    fmt, dev = PARAMS["profiles"]["miniworld-formats"], PARAMS["profiles"]["miniworld-formats-dev"]
    for section in ("data", "model", "pretrain", "train"):
        assert dev[section] == fmt[section], section
    assert {k: v for k, v in dev["synthesize"].items() if k != "variants"} == fmt["synthesize"]
    assert {k: v for k, v in dev["eval"].items() if k not in ("split", "variants")} == fmt["eval"]
    assert dev["synthesize"]["variants"] == dev["eval"]["variants"] == ["vanilla", "derta"]
    assert dev["eval"]["split"] == "dev"
    assert set(dev) == set(fmt)
