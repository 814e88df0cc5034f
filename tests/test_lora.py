"""LoRA (paper Appendix A, LoRA profiles) on the tiny model: only adapters train; the merged model loads."""

from __future__ import annotations

import pytest

from tests.ds_worker import build_world, examples, tiny_model, tokenizer


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def test_wrap_lora_only_adapters_trainable(world):
    from derta.train import LoraConfig, _wrap_lora

    tok = tokenizer(world)
    model = _wrap_lora(LoraConfig(enabled=True, r=4, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"]), tiny_model(tok))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}
    assert next(m for n, m in model.named_modules() if n.endswith("q_proj")).r["default"] == 4


def test_lora_train_merges_and_loads(world, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from derta.train import LoraConfig, TrainConfig, train

    torch.set_num_threads(1)
    tok = tokenizer(world)
    base = tiny_model(tok)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = TrainConfig(max_steps=4, total_batch_size=8, per_device_batch_size=8, learning_rate=1e-2, logging_steps=1,
                      gradient_checkpointing=True,  # as in the paper profiles (PEFT + checkpointing needs input grads)
                      refusal_word=" Sorry", lora=LoraConfig(enabled=True, r=4, alpha=16, dropout=0.05,
                                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                            "gate_proj", "up_proj", "down_proj"]))
    s = train(cfg, base, tok, examples(world, tok), tmp_path)
    assert s["global_step"] == 4
    assert all(e["loss"] == e["loss"] for e in s["log_history"] if "loss" in e)

    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"), use_safetensors=True)
    after = merged.state_dict()
    assert not any("lora" in k for k in after)  # adapters merged into the base weights
    changed = {k for k in before if k in after and not torch.equal(before[k], after[k])}
    assert any("q_proj" in k for k in changed) and any("down_proj" in k for k in changed)
    # Weights without adapters are untouched (embeddings, norms).
    assert not any("embed_tokens" in k or "norm" in k for k in changed)
    out = merged(**tok(["[INST] hi [\\INST]"], return_tensors="pt"))
    assert out.logits.shape[-1] == len(tok)


def test_mixtral_fused_experts_get_adapters(tmp_path):
    """mixtral-8x7b-lora: the experts' w1/w2/w3 are fused 3-D parameters in transformers 5 (target_parameters)."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    from derta.train import LoraConfig, _wrap_lora

    torch.manual_seed(0)
    model = MixtralForCausalLM(MixtralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=2, num_local_experts=2,
                                             num_experts_per_tok=1))
    lora = LoraConfig(enabled=True, r=4, alpha=16, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      target_parameters=["experts.gate_up_proj", "experts.down_proj"])
    peft = _wrap_lora(lora, model)
    trainable = [n for n, p in peft.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n in trainable)
    assert any("experts" in n for n in trainable) and any("q_proj" in n for n in trainable)
    assert not any(".gate." in n and "lora" in n for n in trainable)  # the router stays frozen and adapter-free
    loss = peft(input_ids=torch.arange(8)[None], labels=torch.arange(8)[None]).loss
    loss.backward()
    merged = peft.merge_and_unload()
    assert not any("lora" in n for n, _ in merged.named_parameters())
