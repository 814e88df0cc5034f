"""derta.live: run times stay out of DVC outputs; the stage run is a child of the pipeline's parent run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from derta import live


def test_split_timings_keeps_losses_and_moves_run_times_out():
    summary = {"log_history": [{"loss": 1.0, "step": 1}, {"train_runtime": 3.2, "train_samples_per_second": 9.0,
                                                          "train_steps_per_second": 1.0, "train_loss": 1.0, "step": 2}],
               "train_runtime_s": 3.2, "train_loss": 1.0, "global_step": 2}
    clean, timings = live.split_timings(summary)
    assert clean == {"log_history": [{"loss": 1.0, "step": 1}, {"train_loss": 1.0, "step": 2}], "train_loss": 1.0, "global_step": 2}
    assert timings == {"train_runtime": 3.2, "train_samples_per_second": 9.0, "train_steps_per_second": 1.0,
                       "train_runtime_s": 3.2}
    assert live.split_timings(clean) == (clean, {})  # idempotent: what the old code wrote, cleaned, equals the new


def test_dvc_hash_is_the_lock_md5_or_the_file_md5(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  a:\n    outs:\n    - path: models/base\n      md5: abc.dir\n")
    (tmp_path / "f.jsonl").write_text("x\n")
    assert live.dvc_hash(Path("models/base")) == "abc.dir"
    assert live.dvc_hash(Path("f.jsonl")) == hashlib.md5(b"x\n").hexdigest()  # noqa: S324
    assert live.dvc_hash(Path("absent")) is None


def test_without_a_tracking_uri_stages_log_to_the_default_store(tmp_path, monkeypatch):
    """One default for every stage and register: sqlite:///mlflow.db in the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(live.PARENT_ENV, "-")
    monkeypatch.setenv(live.EXPERIMENT_ENV, "derta-test")
    assert live.tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv(live.PARENT_ENV, live.open_parent({"profile": "tiny", "register": {"experiment": "derta-test"}}))
    with live.stage_run("train@x", "tiny") as run:
        live.log_metrics({"a": 1.0})
    assert run is not None and (tmp_path / "mlflow.db").is_file()
    assert run.data.tags["derta.variant"] == "x"


def test_find_stage_run_prefers_this_pipeline_s_run_and_matches_tags(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    monkeypatch.setenv(live.EXPERIMENT_ENV, "derta-test")
    monkeypatch.setenv(live.PARENT_ENV, "-")
    ids = {}
    for pipeline in ("first", "second"):
        monkeypatch.setenv(live.PARENT_ENV, live.open_parent({"profile": "tiny", "register": {"experiment": "derta-test"}}))
        for md5 in ("aaa.dir", "bbb.dir"):
            with live.stage_run("evaluate@derta", "tiny", tags={"derta.model_md5": md5}) as run:
                ids[pipeline, md5] = run.info.run_id
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("derta-test").experiment_id
    first_parent = client.get_run(ids["first", "aaa.dir"]).data.tags["mlflow.parentRunId"]
    find = live.find_stage_run
    assert find(client, exp, "tiny", ["evaluate@derta"], {"derta.model_md5": "aaa.dir"}).info.run_id == ids["second", "aaa.dir"]
    assert find(client, exp, "tiny", ["evaluate@derta"], {"derta.model_md5": "aaa.dir"},
                first_parent).info.run_id == ids["first", "aaa.dir"]
    assert find(client, exp, "tiny", ["evaluate@derta"], {"derta.model_md5": "ccc.dir"}) is None
    assert find(client, exp, "other-profile", ["evaluate@derta"]) is None


def test_log_reports_puts_the_reports_and_gate_verdicts_on_the_parent(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    monkeypatch.setenv(live.EXPERIMENT_ENV, "derta-test")
    monkeypatch.setenv(live.PARENT_ENV, "-")
    monkeypatch.setenv(live.PARENT_ENV, live.open_parent({"profile": "tiny", "register": {"experiment": "derta-test"}}))
    (tmp_path / "reports" / "validation").mkdir(parents=True)
    (tmp_path / "reports" / "summary.json").write_text("{}")
    (tmp_path / "reports" / "validation" / "source.json").write_text(json.dumps({"a": {"success": True}, "b": {"success": False}}))
    (tmp_path / "reports" / "validation" / "web.json").write_text(json.dumps({"a": {"success": True}}))
    parent = live.log_reports("tiny", tmp_path / "reports")
    got = mlflow.MlflowClient().get_run(parent)
    assert got.data.metrics == {"validation.source.success": 0.0, "validation.web.success": 1.0}
    assert {f.path for f in mlflow.MlflowClient().list_artifacts(parent, "reports")} == {"reports/summary.json"}


def test_dvc_hash_reads_a_profile_s_own_lock(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "p").mkdir(parents=True)
    (tmp_path / "runs" / "p" / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  t:\n    outs:\n    - path: runs/p/models/derta\n      md5: def.dir\n")
    assert live.dvc_hash(Path("runs/p/models/derta")) == "def.dir"


def test_stage_run_is_a_child_of_the_parent_run(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    monkeypatch.setenv(live.EXPERIMENT_ENV, "derta-test")
    monkeypatch.delenv(live.PARENT_ENV, raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/m.db")
    parent = live.open_parent({"profile": "tiny", "register": {"experiment": "derta-test"}})
    (tmp_path / "train.jsonl").write_text(json.dumps({"id": "1"}) + "\n")
    with live.stage_run("train@derta", "tiny", params={"lr": 0.1}, datasets={"train": "train.jsonl"}) as run:
        live.log_metrics({"loss": 2.0}, step=1)
        live.log_metrics({"loss": 1.0}, step=2)
    live.close_parent(parent, ok=True)
    client = mlflow.MlflowClient()
    got = client.get_run(run.info.run_id)
    assert got.data.tags["mlflow.parentRunId"] == parent and got.data.params["lr"] == "0.1"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [2.0, 1.0]
    assert got.inputs.dataset_inputs[0].dataset.digest == hashlib.md5((tmp_path / "train.jsonl").read_bytes()).hexdigest()  # noqa: S324
    assert client.get_run(parent).info.status == "FINISHED"
    monkeypatch.delenv(live.PARENT_ENV)


@pytest.mark.parametrize("env_parent", [True, False])
def test_parent_run_id_prefers_the_flow_s(tmp_path, monkeypatch, env_parent):
    import mlflow

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/m.db")
    exp = mlflow.set_experiment("x")
    client = mlflow.MlflowClient()
    if env_parent:
        monkeypatch.setenv(live.PARENT_ENV, "abc")
        assert live.parent_run_id(client, exp.experiment_id, "tiny") == "abc"
    else:
        monkeypatch.delenv(live.PARENT_ENV, raising=False)
        rid = live.parent_run_id(client, exp.experiment_id, "tiny")  # not under dvc repro: a new run, not remembered
        assert client.get_run(rid).info.run_name == "pipeline-tiny" and not (tmp_path / live.STATE).exists()
