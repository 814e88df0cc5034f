"""Stage `register` + derta/tracking.py: promotion gate, lineage, model card, secrets.

One module-scoped registry (SQLite store in tmp, no server): a tiny model is
registered four times with four fake ``summary.json`` files, so the gate is
seen promoting and refusing for both reasons. An LLM-judge call with a fake
key runs against a local stub server in the same scope; the secrets test then
scans the store for the key.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest
import yaml

from derta import tracking
from tests.pipeline_helpers import REPO, SMALL_WORLD, env

FAKE_KEY = "sk-test-DERTA-SECRET-123"
KEY_ENV = "DERTA_FAKE_KEY"
NAME = "derta-tiny"

# (asr per attack, helpfulness) -> expected decision, in registration order.
CASES = [
    ({"direct": 20.0, "prefill": 40.0}, 50.0, "champion"),   # v1: no champion yet
    ({"direct": 10.0, "prefill": 20.0}, 47.0, "champion"),   # v2: ASR 15 <= 30, drop 3 <= 5
    ({"direct": 30.0, "prefill": 10.0}, 60.0, "candidate"),  # v3: ASR 20 > 15
    ({"direct": 5.0, "prefill": 5.0}, 40.0, "candidate"),    # v4: drop 7 > 5
]


def _summary(asr: dict, helpful: float) -> dict:
    row = {"asr": asr, "helpfulness": {"miniworld": helpful}, "asr_black_box_avg": None, "asr_white_box_avg": None,
           "refusal_position": {"median": None}}
    return {"profile": "tiny", "variants": {"derta": row, "vanilla": {**row, "asr": {"direct": 90.0}}}}


FAKE_LOCK = {"schema": "2.0", "stages": {
    "source": {"cmd": "x", "outs": [{"path": "data/source", "hash": "md5", "md5": "aaa111.dir", "size": 1}]},
    "pretrain": {"cmd": "y", "outs": [{"path": "models/base", "hash": "md5", "md5": "bbb222.dir", "size": 2}]},
}}


def make_tiny_model(root: Path) -> Path:
    """<root>/derta/model: a 2-layer Llama + BPE tokenizer trained on mini-world web text."""
    from derta.miniworld import MiniWorldConfig, generate
    from derta.modeling import ModelConfig, TokenizerConfig, build_model, train_tokenizer

    texts = [r["text"] for r in generate(MiniWorldConfig(**SMALL_WORLD))["web"]][:300]
    out = root / "derta" / "model"
    tok = train_tokenizer(TokenizerConfig(vocab_size=300), texts, out)
    model = build_model(ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                    num_key_value_heads=2), tok)
    model.save_pretrained(str(out), safe_serialization=True)
    return root


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Register four versions; return (workdir, tracking uri, [result], captured log text)."""
    from steps.register import RegisterConfig, run

    wd = tmp_path_factory.mktemp("registry")
    models = make_tiny_model(wd / "models")
    (wd / "dvc.lock").write_text(yaml.safe_dump(FAKE_LOCK))
    e = env()
    subprocess.run(["git", "init", "-q"], cwd=wd, check=True, env=e)
    subprocess.run(["git", "add", "dvc.lock"], cwd=wd, check=True, env=e)
    subprocess.run(["git", "commit", "-qm", "x"], cwd=wd, check=True, env=e)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=wd, check=True, env=e, capture_output=True, text=True).stdout.strip()
    uri = f"sqlite:///{wd}/mlflow.db"
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["eval"]["judge_config"] = {"llm": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": KEY_ENV}}

    handler = logging.Handler()
    lines: list[str] = []
    handler.emit = lambda rec: lines.append(rec.getMessage())  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    results = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(wd)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv(KEY_ENV, FAKE_KEY)
        try:
            for i, (asr, helpful, _) in enumerate(CASES):
                rep = wd / f"reports{i}"
                rep.mkdir()
                (rep / "summary.json").write_text(json.dumps(_summary(asr, helpful)))
                results.append(run(RegisterConfig(), params, "tiny", ["vanilla", "derta"], models, wd / "eval", rep,
                                   rep / "registry.json"))
            lines.append(_judge_with_key())
        finally:
            logging.getLogger().removeHandler(handler)
    return {"wd": wd, "uri": uri, "results": results, "commit": commit, "log": "\n".join(lines)}


def _judge_with_key() -> str:
    """One llm-judge call with the fake key against the stub server; returns what the stub saw."""
    from derta.judges import JudgeInput, get_judge
    from tests.helpers_openai_server import OpenAIServer

    with OpenAIServer(handler=lambda req: '{"unsafe": false, "reason": "refuses"}') as srv:
        judge = get_judge("llm", {"llm": {"base_url": srv.url, "model": "m", "api_key_env": KEY_ENV}})
        verdicts = judge.judge([JudgeInput(id="a", question="q", response="Sorry, no.", attack="direct")])
        assert verdicts[0].unsafe is False
        assert srv.requests[0]["headers"].get("Authorization") == f"Bearer {FAKE_KEY}"  # the key did reach the server
        return repr(judge) + repr(verdicts)


# ---------------------------------------------------------------- pure gate

@pytest.mark.parametrize("row,champ,expected", [
    ({"asr": {"a": 10.0}, "helpfulness": {"h": 50.0}}, None, "champion"),
    ({"asr": {"a": 10.0}, "helpfulness": {"h": 46.0}}, {"asr_mean": "10.0", "helpfulness_mean": "50.0"}, "champion"),
    ({"asr": {"a": 10.5}, "helpfulness": {"h": 90.0}}, {"asr_mean": "10.0", "helpfulness_mean": "50.0"}, "candidate"),
    ({"asr": {"a": 1.0}, "helpfulness": {"h": 44.9}}, {"asr_mean": "10.0", "helpfulness_mean": "50.0"}, "candidate"),
    ({"asr": {"a": 1.0}, "helpfulness": {}}, {"asr_mean": "10.0", "helpfulness_mean": "50.0"}, "candidate"),
    ({"asr": {}, "helpfulness": {"h": 50.0}}, None, "candidate"),
    ({"asr": {"a": 50.0}}, {"profile": "tiny"}, "champion"),  # old champion without numbers is replaced
])
def test_promotion_gate_rules(row, champ, expected):
    d = tracking.decide(row, champ, "1" if champ else None, max_helpfulness_drop=5.0)
    assert d.decision == expected, d.reason
    tags = d.tags()
    assert set(tags) >= {"promotion.decision", "promotion.reason", "asr_mean", "helpfulness_mean", "champion.asr_mean",
                         "champion.helpfulness_mean", "champion.version", "promotion.max_helpfulness_drop"}


def test_dvc_out_hashes_are_per_output(tmp_path):
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(FAKE_LOCK))
    assert tracking.dvc_out_hashes(tmp_path / "dvc.lock") == {"data/source": "aaa111.dir", "models/base": "bbb222.dir"}
    assert tracking.dvc_out_hashes(tmp_path / "missing.lock") == {}


# ---------------------------------------------------------------- against a real store

@pytest.mark.slow
def test_register_promotes_and_refuses(registry):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registry["uri"])
    for i, (res, (_, _, expected)) in enumerate(zip(registry["results"], CASES), start=1):
        assert res["version"] == str(i)
        mv = client.get_model_version(NAME, str(i))
        assert mv.tags["promotion.decision"] == expected, mv.tags["promotion.reason"]
        assert res["alias"] == expected
    champ = client.get_model_version_by_alias(NAME, "champion")
    assert str(champ.version) == "2"
    assert str(client.get_model_version_by_alias(NAME, "candidate").version) == "4"
    v3, v4 = client.get_model_version(NAME, "3").tags, client.get_model_version(NAME, "4").tags
    assert "ASR 20.0 > champion's 15.0" in v3["promotion.reason"]
    assert (v3["asr_mean"], v3["champion.asr_mean"], v3["champion.version"]) == ("20.0", "15.0", "2")
    assert "helpfulness drop 7.0 > 5.0" in v4["promotion.reason"]
    assert (v4["helpfulness_mean"], v4["champion.helpfulness_mean"]) == ("40.0", "47.0")


@pytest.mark.slow
def test_lineage_on_parent_and_child_runs_and_model_card(registry):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registry["uri"])
    res = registry["results"][1]
    parent = client.get_run(res["parent_run_id"])
    children = [client.get_run(r) for r in res["variants"].values()]
    for r in (parent, *children):
        t = r.data.tags
        assert t["derta.git_commit"] == registry["commit"]
        assert t["derta.profile"] == "tiny"
        assert t["derta.dvc.out.data/source"] == "aaa111.dir" and t["derta.dvc.out.models/base"] == "bbb222.dir"
        assert r.data.params["train.rto_keep_ratio"] and r.data.params["profile"] == "tiny"
    mv = client.get_model_version(NAME, res["version"])
    assert mv.tags["dvc.out.models/base"] == "bbb222.dir" and mv.tags["git_commit"] == registry["commit"]
    assert "| variant |" in mv.description and "| derta | 10.0 | 20.0 | 15.0 | 47.0 |" in mv.description
    assert "**champion**" in mv.description
    card = client.download_artifacts(res["run_id"], "model_card.md", str(registry["wd"] / "dl"))
    assert Path(card).read_text() == mv.description


@pytest.mark.slow
def test_champion_loads_and_generates(registry, monkeypatch):
    import mlflow

    mlflow.set_tracking_uri(registry["uri"])
    pipe = mlflow.transformers.load_model(f"models:/{NAME}@champion")
    out = pipe("[INST] What is the capital of Zarnia? [\\INST]", max_new_tokens=5, do_sample=False)
    assert isinstance(out[0]["generated_text"], str) and out[0]["generated_text"]


@pytest.mark.slow
def test_secret_never_reaches_store_or_logs(registry):
    wd = registry["wd"]
    scanned = 0
    for p in wd.rglob("*"):  # the SQLite store, mlruns/ artifacts, reports, model dirs
        if p.is_file() and ".git" not in p.parts:
            assert FAKE_KEY.encode() not in p.read_bytes(), p
            scanned += 1
    assert (wd / "mlflow.db").is_file() and len(list(wd.glob("mlruns/**/model_card.md"))) == 4 and scanned > 20  # the store and its artifacts were really there
    assert FAKE_KEY not in registry["log"]
    # params files hold env var NAMES only
    params_text = (REPO / "params.yaml").read_text()
    assert "sk-" not in params_text
    for cfg in (REPO / "configs").rglob("*.y*ml") if (REPO / "configs").exists() else []:
        assert "sk-" not in cfg.read_text(), cfg
