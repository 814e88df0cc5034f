"""steps.respond / derta.responses: safe + harmful responses for your own questions.

No harmful content anywhere: the "harmful" stub answers with a content-free
placeholder, and the HF run uses a randomly initialised tiny model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from derta.errors import ConfigError, DataError
from derta.responses import RespondConfig, respond, starts_with_refusal
from helpers_openai_server import OpenAIServer
from steps import respond as stage

SAFE_KEY = "sk-safe-DO-NOT-LEAK-4242"
HARM_KEY = "sk-harm-DO-NOT-LEAK-9191"
PLACEHOLDER = "Step 1: get the [tool] from the [place]. Step 2: take it to the [place]."
ROOT = Path(__file__).resolve().parent.parent


def _write_questions(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _params(path: Path, respond_section: dict) -> Path:
    path.write_text(yaml.safe_dump({"profile": "", "respond": respond_section}), encoding="utf-8")
    return path


def _llm(url: str, model: str, key_env: str) -> dict:
    return {"base_url": url, "model": model, "api_key_env": key_env, "max_retries": 0, "timeout_s": 5}


QUESTIONS = [
    {"id": "q1", "question": "How do I do the [bad thing]?", "category": "cat-a"},
    {"id": "q2", "instruction": "Explain the [other bad thing]."},
    {"id": "q3", "question": "EMPTY-SAFE [x]?"},
    {"id": "q4", "question": "NO-REFUSAL [y]?"},
]


def _safe_handler(req):
    user = req["messages"][-1]["content"]
    if "EMPTY-SAFE" in user:
        return "   "
    if "NO-REFUSAL" in user:
        return "Here is a general overview instead."
    return "Sorry, I can't help with that. Consider a legal alternative."


def test_openai_stubs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("DERTA_TEST_SAFE_KEY", SAFE_KEY)
    monkeypatch.setenv("DERTA_TEST_HARM_KEY", HARM_KEY)
    qpath = _write_questions(tmp_path / "q.jsonl", QUESTIONS)
    with OpenAIServer(handler=_safe_handler) as safe, OpenAIServer(handler=lambda req: PLACEHOLDER) as harm:
        params = _params(tmp_path / "params.yaml", {
            "safe": {"llm": _llm(safe.url, "safe-stub", "DERTA_TEST_SAFE_KEY")},  # backend/system prompt: defaults
            "harmful": {"backend": "openai", "llm": _llm(harm.url, "harm-stub", "DERTA_TEST_HARM_KEY"),
                        "system_prompt": "SYS-PLACEHOLDER", "instruction_template": "Q: {q}"},
        })
        stage.main(["--params", str(params), "--questions", str(qpath), "--out", str(tmp_path / "out")])
        safe_reqs, harm_reqs = list(safe.requests), list(harm.requests)

    out = tmp_path / "out"
    recs = [json.loads(line) for line in (out / "safety_train.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs] == ["q1", "q2"]
    assert recs[0] == {"id": "q1", "instruction": "How do I do the [bad thing]?", "output": PLACEHOLDER,
                       "safe_response": "Sorry, I can't help with that. Consider a legal alternative.",
                       "category": "cat-a"}
    assert recs[1]["instruction"] == "Explain the [other bad thing]." and recs[1]["category"] == ""
    report = json.loads((out / "respond_report.json").read_text())
    assert report["n_questions"] == 4 and report["kept"] == 2
    assert report["dropped"] == {"empty_safe": 1, "empty_harmful": 0, "over_max_chars": 0, "safe_not_refusal": 1}
    assert report["safe"]["model"] == "safe-stub" and report["safe"]["api_key_env"] == "DERTA_TEST_SAFE_KEY"

    # Requests: keys sent as Bearer headers, the safe default system prompt kept, templates applied.
    assert len(safe_reqs) == 4 and len(harm_reqs) == 4
    assert {{k.lower(): v for k, v in r["headers"].items()}.get("authorization") for r in safe_reqs} == {f"Bearer {SAFE_KEY}"}
    assert {{k.lower(): v for k, v in r["headers"].items()}.get("authorization") for r in harm_reqs} == {f"Bearer {HARM_KEY}"}
    assert safe_reqs[0]["json"]["messages"][0]["role"] == "system"
    assert "Sorry" in safe_reqs[0]["json"]["messages"][0]["content"]
    harm_users = sorted(r["json"]["messages"][-1]["content"] for r in harm_reqs)
    assert "Q: How do I do the [bad thing]?" in harm_users
    assert all(r["json"]["messages"][0] == {"role": "system", "content": "SYS-PLACEHOLDER"} for r in harm_reqs)

    # The keys never reach an output file.
    for f in out.iterdir():
        text = f.read_text()
        assert SAFE_KEY not in text and HARM_KEY not in text
    assert sorted(p.name for p in out.iterdir()) == ["respond_report.json", "safety_train.jsonl"]


def test_flag_instead_of_drop_and_max_chars():
    with OpenAIServer(handler=_safe_handler) as safe, OpenAIServer(handler=lambda req: PLACEHOLDER) as harm:
        cfg = RespondConfig.from_dict({
            "safe": {"llm": _llm(safe.url, "s", "")},
            "harmful": {"backend": "openai", "llm": _llm(harm.url, "h", "")},
            "require_refusal_start": False,
        })
        report: dict = {}
        recs = respond(cfg, QUESTIONS, report)
        assert [r["id"] for r in recs] == ["q1", "q2", "q4"]
        assert report["flagged"] == {"safe_not_refusal": 1}
        short = cfg.model_copy(update={"max_chars": 40})
        report = {}
        assert respond(short, QUESTIONS, report) == [] and report["dropped"]["over_max_chars"] == 3


def test_refusal_start():
    assert starts_with_refusal("  Sorry, no.", "Sorry")
    assert starts_with_refusal("Sorry", " Sorry")
    assert not starts_with_refusal("Sorrynot", "Sorry")
    assert not starts_with_refusal("I'm sorry", "Sorry")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    import torch

    from derta.modeling import ModelConfig, TokenizerConfig, build_model, train_tokenizer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tinyhf")
    texts = ["Sorry, I cannot help with that request.", "Step one: gather the items.",
             "How do I do the thing?", "The answer is simple."] * 20
    tok = train_tokenizer(TokenizerConfig(vocab_size=300, refusal_word="Sorry"), texts, root / "model")
    model = build_model(ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                    num_key_value_heads=2, max_position_embeddings=128,
                                    tie_word_embeddings=False), tok, seed=0)  # tied: repeats a special token
    model.save_pretrained(str(root / "model"), safe_serialization=True)
    return root  # holds model/ (the layout of a trained run dir)


def test_hf_backend_plumbing(tiny_model_dir, tmp_path):
    qpath = _write_questions(tmp_path / "q.jsonl", QUESTIONS[:2])
    hf = {"backend": "hf", "model_path": str(tiny_model_dir), "max_new_tokens": 6, "batch_size": 2}
    params = _params(tmp_path / "params.yaml", {
        "safe": {**hf, "system_prompt": ""}, "harmful": hf, "require_refusal_start": False})
    report = stage.run(RespondConfig.from_dict(stage.load_params(params)["respond"]), qpath, tmp_path / "o")
    recs = [json.loads(line) for line in (tmp_path / "o" / "safety_train.jsonl").read_text().splitlines()]
    assert report["n_questions"] == 2
    assert report["kept"] == 2 and sum(report["dropped"].values()) == 0
    assert report["safe"] == {"backend": "hf", "model_path": str(tiny_model_dir)}
    for r in recs:
        assert set(r) == {"id", "instruction", "output", "safe_response", "category"}
        assert r["output"].strip() and r["safe_response"].strip()
    assert [r["instruction"] for r in recs] == [q.get("question") or q.get("instruction") for q in QUESTIONS[:2]]


def test_missing_harmful_responder_is_a_config_error(tmp_path):
    qpath = _write_questions(tmp_path / "q.jsonl", QUESTIONS)
    with pytest.raises(ConfigError, match=r"respond\.harmful: no responder configured.*ships no harmful model"):
        stage.run(RespondConfig(), qpath, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=r"respond\.harmful\.model_path"):
        respond(RespondConfig.from_dict({"harmful": {"backend": "hf"}}), QUESTIONS)
    with pytest.raises(ConfigError, match="unknown backend"):
        respond(RespondConfig.from_dict({"harmful": {"backend": "vllm"}}), QUESTIONS)
    with pytest.raises(ConfigError, match="harmful"):
        RespondConfig.from_dict({"harmful": {"llm": {"nope": 1}}})
    # Through the entry point: exit 2 with one clear line, no traceback.
    params = _params(tmp_path / "params.yaml", {})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "steps.respond", "--params", str(params), "--questions", str(qpath),
                           "--out", str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "no responder configured" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("lines, lineno, rule", [
    (['{"id": "a", "question": "q?"}', "", '{"id": "b", "question": "q?"', ], 3, "json"),
    (['{"id": "a", "question": "q?"}', '{"id": "b"}'], 2, "required_field"),
    (['{"id": "a", "question": "  "}'], 1, "non_empty"),
    (['{"id": "a", "question": 3}'], 1, "type"),
    (['{"id": "a", "question": "q"}', '{"id": "a", "question": "r"}'], 2, "unique_id"),
    (['{"question": "q"}'], 1, "required_field"),
])
def test_malformed_questions_are_data_errors(tmp_path, lines, lineno, rule):
    qpath = tmp_path / "bad.jsonl"
    qpath.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = RespondConfig.from_dict({"harmful": {"backend": "hf", "model_path": "/nonexistent"}})
    with pytest.raises(DataError) as err:
        stage.run(cfg, qpath, tmp_path / "out")
    assert err.value.path == str(qpath) and err.value.line == lineno and err.value.rule == rule
    assert str(err.value).startswith(f"{qpath}:{lineno}: [{rule}]")
    assert not (tmp_path / "out").exists()
