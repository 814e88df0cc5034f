"""Prefect flow `derta` (flows/derta_flow.py): helpers fast; the deployment against REAL servers (slow)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from flows.derta_flow import apply_overrides, stage_names
from tests.pipeline_helpers import REPO, VENV_BIN, env, free_port, make_workspace, post_retrying, stop, wait_http


def test_stage_names_expand_foreach():
    params = {"synthesize": {"variants": ["vanilla", "derta"]}, "eval": {"variants": ["vanilla", "derta"]}}
    names = stage_names(REPO, params)
    assert names == [
        "source", "gate_source", "tokenizer", "synthesize", "gate_variants", "pretrain",
        "train@vanilla", "train@derta", "evaluate@vanilla", "evaluate@derta", "report", "register",
    ]
    params["eval"]["variants"].append("dpo")
    assert stage_names(REPO, params)[6:] == ["train@vanilla", "train@derta", "train_dpo", "evaluate@vanilla", "evaluate@derta",
                                             "evaluate@dpo", "report", "register"]
    empty = {"synthesize": {"variants": []}, "eval": {"variants": []}}
    assert stage_names(REPO, empty) == ["source", "gate_source", "tokenizer", "synthesize", "gate_variants", "pretrain", "report", "register"]


def test_apply_overrides_keeps_comments_anchors_and_merge_keys(tmp_path):
    """A deployment parameter must not damage the user's params.yaml (issue: safe_dump dropped 36 comments
    and flattened the &full/&lora merge keys)."""
    src = (REPO / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(src)
    params = apply_overrides(tmp_path, {"eval.judge": "keyword", "synthesize.variants": ["vanilla", "derta"]})
    out = (tmp_path / "params.yaml").read_text()
    comments = lambda text: [ln.split("#", 1)[1] for ln in text.splitlines() if "#" in ln]  # noqa: E731
    assert comments(out) == comments(src)
    for token in ("&full", "&lora", "<<: *full", "<<: *lora"):
        assert out.count(token) == src.count(token), token
    assert len(out.splitlines()) == len(src.splitlines())
    before, after = yaml.safe_load(src), yaml.safe_load(out)
    assert after == params and after["eval"]["judge"] == "keyword" and after["synthesize"]["variants"] == ["vanilla", "derta"]
    after["eval"]["judge"], after["synthesize"]["variants"] = before["eval"]["judge"], before["synthesize"]["variants"]
    assert after == before  # nothing else moved, merged profiles included


def test_apply_overrides(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"profile": "tiny", "synthesize": {"variants": ["vanilla"], "seed": 0}, "eval": {"judge": "guideline"}},
                                sort_keys=False))
    params = apply_overrides(tmp_path, {"profile": None, "synthesize.variants": ["derta"], "eval.attacks": {"direct": {}},
                                        "new.deep.key": 3})
    on_disk = yaml.safe_load(p.read_text())
    assert params == on_disk
    assert on_disk["profile"] == "tiny"  # None leaves a key alone
    assert on_disk["synthesize"] == {"variants": ["derta"], "seed": 0}
    assert on_disk["eval"] == {"judge": "guideline", "attacks": {"direct": {}}}
    assert on_disk["new"] == {"deep": {"key": 3}}
    # no change -> no write
    before = p.stat().st_mtime_ns
    time.sleep(0.01)
    apply_overrides(tmp_path, {"synthesize.variants": ["derta"], "eval.judge": None})
    assert p.stat().st_mtime_ns == before


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.e2e
@pytest.mark.timeout(1500)
def test_deployment_against_real_servers(tmp_path):
    import httpx

    ws = make_workspace(tmp_path / "ws")
    pport, mport = free_port(), free_port()
    api = f"http://127.0.0.1:{pport}/api"
    ml = f"http://127.0.0.1:{mport}"
    e = env(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
            PREFECT_API_URL=api, MLFLOW_TRACKING_URI=ml, PYTHONPATH=str(ws))
    e.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)  # default: SQLite in PREFECT_HOME
    logs = {n: open(tmp_path / f"{n}.log", "w") for n in ("prefect", "mlflow", "serve")}
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["prefect"] = subprocess.Popen(
            [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(pport)],
            cwd=tmp_path, env={k: v for k, v in e.items() if k != "PREFECT_API_URL"}, stdout=logs["prefect"],
            stderr=subprocess.STDOUT, start_new_session=True)
        procs["mlflow"] = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mport), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{tmp_path}/m.db", "--serve-artifacts",
             "--artifacts-destination", str(tmp_path / "artifacts")],
            cwd=tmp_path, env=e, stdout=logs["mlflow"], stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{api}/health", 180, procs["prefect"])
        wait_http(f"{ml}/health", 180, procs["mlflow"])

        procs["serve"] = subprocess.Popen([sys.executable, "-m", "flows.derta_flow", "serve"], cwd=ws, env=e,
                                          stdout=logs["serve"], stderr=subprocess.STDOUT, start_new_session=True)
        dep = None
        end = time.monotonic() + 180
        while time.monotonic() < end and dep is None:
            assert procs["serve"].poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            r = httpx.get(f"{api}/deployments/name/derta/full", timeout=5)
            dep = r.json() if r.status_code == 200 else None
            time.sleep(1)
        assert dep, "deployment derta/full never appeared"

        r = post_retrying(f"{api}/deployments/{dep['id']}/create_flow_run", {})
        r.raise_for_status()
        run_id = r.json()["id"]
        state = None
        end = time.monotonic() + 900
        while time.monotonic() < end:
            state = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"]
            if state and state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(3)
        assert state and state["type"] == "COMPLETED", f"{state}\n{(tmp_path / 'serve.log').read_text()[-6000:]}"

        from mlflow import MlflowClient

        mv = MlflowClient(tracking_uri=ml).get_model_version_by_alias("derta-tiny", "champion")
        assert mv.name == "derta-tiny"
        assert (ws / "reports" / "summary.json").is_file()
    finally:
        for name in ("serve", "mlflow", "prefect"):
            stop(procs.get(name))
        for fh in logs.values():
            fh.close()
