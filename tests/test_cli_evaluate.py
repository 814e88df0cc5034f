"""``derta evaluate --model PATH|models:/NAME@ALIAS``: the evaluate stage on any checkpoint.

One untrained tiny model (tests/ds_worker.py) in three forms: a variant dir
(``models/<variant>/model``), a bare Hugging Face dir, and a version
registered the way stage ``register`` registers one (sqlite store in tmp).
Greedy decoding: every form must give the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from derta.cli import main

EVAL = {"split": "eval", "judge": "keyword", "attacks": {"direct": {}, "prefill": {"units": [1]}}, "max_questions": 20,
        "max_helpful": 3, "generation": {"batch_size": 16, "max_new_tokens": 6}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(source dir, variant dir holding model/, params file)."""
    from tests.ds_worker import build_world, tiny_model, tokenizer

    root = build_world(tmp_path_factory.mktemp("world"))
    tok = tokenizer(root)
    variant = tmp_path_factory.mktemp("models") / "derta"
    tiny_model(tok).save_pretrained(str(variant / "model"))
    tok.save_pretrained(str(variant / "model"))
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"profile": "", "eval": EVAL}))
    return root / "src", variant, params


def _evaluate(capsys, model: str, source: Path, out: Path, params: Path) -> dict:
    rc = main(["evaluate", "--model", model, "--source", str(source), "--out", str(out), "--params", str(params),
               "--max-questions", "4"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1, captured.out
    line = json.loads(lines[0])
    metrics = json.loads((out / "metrics.json").read_text())
    assert line["asr"] == metrics["asr"] and line["helpfulness"] == metrics["helpfulness"]
    assert set(line["asr"]) == {"direct", "prefill"} and set(line["helpfulness"]) == {"miniworld"}
    assert set(metrics["helpfulness_detail"]) == {"miniworld"} and metrics["helpfulness_detail"]["miniworld"]["n"] == 3
    kinds = {json.loads(x)["kind"] for x in (out / "helpful.jsonl").read_text().splitlines()}
    assert set(metrics["helpfulness_by_kind"]) == (kinds if len(kinds) > 1 else set())
    assert line["skipped"] == metrics["skipped"] and set(line["skipped"]) == {"alpacaeval"}  # no judge configured
    assert metrics["n"]["direct"] == 4  # --max-questions overrides params eval.max_questions
    return line


def test_evaluate_variant_dir_and_hf_dir(world, tmp_path, capsys):
    source, variant, params = world
    a = _evaluate(capsys, str(variant), source, tmp_path / "a", params)
    b = _evaluate(capsys, str(variant / "model"), source, tmp_path / "b", params)  # a bare HF model dir
    assert (a["asr"], a["helpfulness"]) == (b["asr"], b["helpfulness"])
    assert a["model"] == str(variant) and a["split"] == "eval"


def test_evaluate_registered_model(world, tmp_path, capsys, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from steps.register import _log_model

    source, variant, params = world
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("cli-evaluate")  # not the active experiment of another test's store
    with mlflow.start_run():
        version = _log_model(variant / "model", "derta-tiny")  # what stage register logs
    MlflowClient(tracking_uri=uri).set_registered_model_alias("derta-tiny", "champion", version)

    plain = _evaluate(capsys, str(variant), source, tmp_path / "plain", params)
    by_alias = _evaluate(capsys, "models:/derta-tiny@champion", source, tmp_path / "alias", params)
    by_version = _evaluate(capsys, f"models:/derta-tiny/{version}", source, tmp_path / "version", params)
    assert plain["asr"] == by_alias["asr"] == by_version["asr"]
    assert plain["helpfulness"] == by_alias["helpfulness"] == by_version["helpfulness"]


@pytest.mark.parametrize("model,message", [
    ("{tmp}/missing", "not a model"),
    ("{tmp}", "not a model"),                      # a dir, but no model in it
    ("models:/no-such-model@champion", "models:/no-such-model@champion"),
])
def test_evaluate_bad_model_exits_2(world, tmp_path, capsys, monkeypatch, model, message):
    source, _, params = world
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    rc = main(["evaluate", "--model", model.format(tmp=tmp_path), "--source", str(source), "--out", str(tmp_path / "o"),
               "--params", str(params)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "o").exists()
