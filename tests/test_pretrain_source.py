"""Stage `pretrain` with ``model.path``: ``models/base/source.json`` records what the weights are.

Replacing the weights at the same path must change the stage's output (so DVC
re-runs everything after it); a path that is not there is a clear error.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from derta.errors import ConfigError
from derta.modeling import ModelConfig
from steps.pretrain import PretrainConfig, run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Llama saved by ``save_pretrained`` (config.json, generation_config.json, model.safetensors)."""
    import torch
    import transformers

    d = tmp_path_factory.mktemp("hf") / "tiny-llama"
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(d))
    (d / "tokenizer_config.json").write_text('{"model_max_length": 16}\n')
    (d / "README.md").write_text("not read by from_pretrained\n")
    (d / "pytorch_model.bin").write_bytes(b"never loaded: use_safetensors=True")
    return d


def _stage(path, out):
    summary = run(PretrainConfig(), ModelConfig(path=str(path)), "unused-source", "unused-tokenizer", out)
    return summary, (out / "source.json").read_text()


def test_manifest_lists_every_read_file_with_its_hash(model_dir, tmp_path):
    summary, text = _stage(model_dir, tmp_path / "a")
    manifest = json.loads(text)
    assert summary["source"] == manifest
    assert manifest["path"] == str(model_dir) and manifest["revision"] is None
    names = [f["name"] for f in manifest["files"]]
    assert names == sorted(names)
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= set(names)
    assert "README.md" not in names and "pytorch_model.bin" not in names
    for f in manifest["files"]:
        data = (model_dir / f["name"]).read_bytes()
        assert f["size"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
    assert json.loads((tmp_path / "a" / "train_log.json").read_text()) == {"base_model": str(model_dir), "pretrained": False}
    # Same weights -> byte-identical output (the DVC hash of models/base does not move).
    assert _stage(model_dir, tmp_path / "b")[1] == text


def test_one_changed_weight_byte_changes_the_manifest(model_dir, tmp_path):
    before = json.loads(_stage(model_dir, tmp_path / "a")[1])
    weights = model_dir / "model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # last byte: inside the tensor data
        after = json.loads(_stage(model_dir, tmp_path / "b")[1])
    finally:
        weights.write_bytes(original)
    changed = [a["name"] for a, b in zip(before["files"], after["files"], strict=True) if a != b]
    assert changed == ["model.safetensors"]


def test_missing_path_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError, match="no-such-model"):
        run(PretrainConfig(), ModelConfig(path=str(missing)), "src", "tok", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_directory_without_safetensors_is_an_error(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"no \*\.safetensors"):
        run(PretrainConfig(), ModelConfig(path=str(tmp_path / "m")), "src", "tok", tmp_path / "out")


def test_hub_id_resolves_to_the_cached_snapshot(model_dir, tmp_path, monkeypatch):
    """A hub id (offline) hashes the cached snapshot's files and records its commit."""
    from huggingface_hub import constants

    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snap / name).write_bytes((model_dir / name).read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    manifest = json.loads(_stage("org/tiny-llama", tmp_path / "out")[1])
    assert manifest["path"] == "org/tiny-llama" and manifest["revision"] == rev
    assert [f["name"] for f in manifest["files"]] == ["config.json", "model.safetensors"]
    with pytest.raises(ConfigError, match="org/not-cached"):
        run(PretrainConfig(), ModelConfig(path="org/not-cached"), "src", "tok", tmp_path / "out2")
