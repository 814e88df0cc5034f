"""derta.dpo / steps.dpo: the DPO baseline runs on the tiny model and moves it towards the chosen responses."""

from __future__ import annotations

import json

import pytest

from tests.ds_worker import build_world, tiny_model, tokenizer


@pytest.fixture(scope="module")
def start_model(tmp_path_factory):
    """A tiny 'vanilla' model dir (<dir>/model) as train@vanilla would write it (untrained weights suffice)."""
    root = build_world(tmp_path_factory.mktemp("world"))
    tok = tokenizer(root)
    start = tmp_path_factory.mktemp("vanilla")
    tiny_model(tok).save_pretrained(str(start / "model"))
    tok.save_pretrained(str(start / "model"))
    return root, start


def test_dpo_step_runs_and_moves_model(start_model, tmp_path):
    import torch

    from derta.dpo import DPOTrainConfig
    from derta.modeling import ModelConfig, load_model
    from steps import dpo

    root, start = start_model
    torch.set_num_threads(1)
    cfg = DPOTrainConfig(learning_rate=5e-3, beta=0.1, epochs=1, total_batch_size=8, per_device_batch_size=8,
                         logging_steps=1, warmup_ratio=0.0)
    s = dpo.run(cfg, ModelConfig(), root / "dpo_pairs.jsonl", start, tmp_path / "dpo")

    assert s["global_step"] == 5  # 40 pairs / 8
    losses = [e["loss"] for e in s["log_history"] if "loss" in e]
    assert len(losses) == 5 and all(l == l for l in losses)
    # The first step starts at the reference (loss ln 2, margin 0); training pulls chosen above rejected.
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)
    assert losses[-1] < losses[0]
    assert s["reward_margins"][-1] > s["reward_margins"][0]
    # Same layout as train@<variant>: steps.evaluate can load it.
    log = json.loads((tmp_path / "dpo" / "train_log.json").read_text())
    assert log["global_step"] == 5 and log["base_model"].endswith("model")
    model, tok = load_model(tmp_path / "dpo" / "model")
    ref, _ = load_model(start / "model")
    diff = sum(float((a - b).abs().sum()) for a, b in zip(model.parameters(), ref.parameters()))
    assert diff > 0
    assert tok.padding_side == "left"
