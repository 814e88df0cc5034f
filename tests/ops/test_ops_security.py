"""Models load from safetensors with trust_remote_code off unless a profile enables it."""

from __future__ import annotations

import pytest


@pytest.fixture
def recorded(monkeypatch):
    """Record the kwargs of every Auto*.from_pretrained call (nothing is loaded)."""
    import transformers

    calls: list[tuple[str, dict]] = []
    for name in ("AutoModelForCausalLM", "AutoTokenizer"):
        cls = getattr(transformers, name)

        def fake(path, _name=name, **kw):
            calls.append((_name, kw))
            return type("Loaded", (), {"padding_side": "right"})()

        monkeypatch.setattr(cls, "from_pretrained", staticmethod(fake))
    return calls


def test_load_model_uses_safetensors_and_no_remote_code_by_default(recorded):
    from derta.modeling import load_model

    load_model("some/dir")
    assert recorded == [("AutoTokenizer", {"trust_remote_code": False}),
                        ("AutoModelForCausalLM", {"trust_remote_code": False, "use_safetensors": True})]


def test_remote_code_only_when_the_profile_enables_it(recorded):
    from derta.modeling import ModelConfig, build_model

    assert ModelConfig().trust_remote_code is False
    build_model(ModelConfig(path="org/model"), tokenizer=None)
    build_model(ModelConfig(path="org/model", trust_remote_code=True), tokenizer=None)
    assert [kw for _, kw in recorded] == [{"trust_remote_code": False, "use_safetensors": True},
                                          {"trust_remote_code": True, "use_safetensors": True}]
