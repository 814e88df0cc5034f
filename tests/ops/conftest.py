"""One real Prefect server + MLflow server pair for the whole ops session, and
one pipeline run through a process work pool (killed once, then resumed).

Both servers bind 127.0.0.1 on free ports; PREFECT_HOME and the MLflow store
live in a temp dir; analytics are off. The pipeline fixture is what the work
pool, killed-worker and browser tests read.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.pipeline_helpers import VENV_BIN, env, free_port, make_workspace, post_retrying, small_params, stop, wait_http

POOL = "derta-process"
TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ops-servers")
    pport, mport = free_port(), free_port()
    api, ml = f"http://127.0.0.1:{pport}/api", f"http://127.0.0.1:{mport}"
    e = env(PREFECT_HOME=str(tmp / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
            PREFECT_API_URL=api, MLFLOW_TRACKING_URI=ml, PREFECT_WORKER_QUERY_SECONDS="2",
            PREFECT_WORKER_PREFETCH_SECONDS="2")
    e.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    logs = {n: open(tmp / f"{n}.log", "w") for n in ("prefect", "mlflow")}
    procs = {}
    try:
        procs["prefect"] = subprocess.Popen(
            [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(pport)],
            cwd=tmp, env={k: v for k, v in e.items() if k != "PREFECT_API_URL"}, stdout=logs["prefect"],
            stderr=subprocess.STDOUT, start_new_session=True)
        procs["mlflow"] = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mport), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db", "--serve-artifacts",
             "--artifacts-destination", str(tmp / "mlartifacts")],
            cwd=tmp, env=e, stdout=logs["mlflow"], stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{api}/health", 180, procs["prefect"])
        wait_http(f"{ml}/health", 180, procs["mlflow"])
        yield {"api": api, "ml": ml, "tmp": tmp, "env": e, "procs": procs}
    finally:
        for p in procs.values():
            stop(p)
        for fh in logs.values():
            fh.close()


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and every descendant (a node going away, not a shutdown)."""
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        victims = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for p in victims:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)


def flow_run_state(api: str, run_id: str) -> dict:
    import httpx

    return httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"] or {}


def wait_terminal(api: str, run_id: str, timeout: float, log: Path) -> dict:
    end = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < end:
        state = flow_run_state(api, run_id)
        if state.get("type") in TERMINAL:
            return state
        time.sleep(2)
    raise AssertionError(f"flow run {run_id} not finished after {timeout}s: {state}\n{log.read_text()[-4000:]}")


def stage_table(api: str, run_id: str) -> dict[str, str]:
    """The flow's `derta-stages` table artifact: stage -> ran | cached."""
    import json

    import httpx

    r = httpx.post(f"{api}/artifacts/filter", timeout=10,
                   json={"artifacts": {"key": {"any_": ["derta-stages"]}, "flow_run_id": {"any_": [run_id]}}})
    r.raise_for_status()
    (art,) = r.json()
    data = json.loads(art["data"]) if isinstance(art["data"], str) else art["data"]
    return {row["stage"]: row["status"] for row in data}


def locked_stages(ws: Path) -> set[str]:
    try:
        return set((yaml.safe_load((ws / "dvc.lock").read_text()) or {}).get("stages") or {})
    except (OSError, yaml.YAMLError):
        return set()


@pytest.fixture(scope="session")
def pipeline_run(servers, tmp_path_factory):
    """Deploy derta/full (prefect.yaml) to a process pool, run it, SIGKILL the worker once
    models/base is done, start a new worker, run again. Returns what the tests check."""
    import httpx

    tmp = tmp_path_factory.mktemp("ops-pipeline")
    ws = make_workspace(tmp / "ws")
    api = servers["api"]
    e = {**servers["env"], "PYTHONPATH": str(ws)}
    cli = lambda *a: subprocess.run([str(VENV_BIN / "prefect"), *a], cwd=ws, env=e, capture_output=True, text=True,  # noqa: E731
                                    timeout=180)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    r = cli("work-pool", "create", POOL, "--type", "process")
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli("--no-prompt", "deploy", "--name", "full")
    assert r.returncode == 0, r.stdout + r.stderr
    dep = httpx.get(f"{api}/deployments/name/derta/full", timeout=10).json()
    timings["pool+deploy_s"] = round(time.monotonic() - t0, 1)

    small = small_params(yaml.safe_load((ws / "params.yaml").read_text()))
    parameters = {"profile": "tiny", "variants": small["synthesize"]["variants"], "attacks": small["eval"]["attacks"],
                  "judge": "guideline"}
    logs = [tmp / "worker1.log", tmp / "worker2.log"]

    def worker(log: Path) -> subprocess.Popen:
        return subprocess.Popen([str(VENV_BIN / "prefect"), "worker", "start", "--pool", POOL], cwd=ws, env=e,
                                stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def create_run() -> str:
        r = post_retrying(f"{api}/deployments/{dep['id']}/create_flow_run", {"parameters": parameters})
        return r.json()["id"]

    w1 = worker(logs[0])
    try:
        t0 = time.monotonic()
        run1 = create_run()
        end = time.monotonic() + 600
        while "pretrain" not in locked_stages(ws):
            assert time.monotonic() < end, logs[0].read_text()[-4000:]
            assert w1.poll() is None, logs[0].read_text()[-4000:]
            st = flow_run_state(api, run1)
            assert st.get("type") not in TERMINAL, f"{st}\n{logs[0].read_text()[-4000:]}"
            time.sleep(0.5)
        kill_tree(w1)
        timings["run1_until_kill_s"] = round(time.monotonic() - t0, 1)
        done_before_kill = locked_stages(ws)
        state1 = flow_run_state(api, run1)
    finally:
        stop(w1)
    w2 = worker(logs[1])
    try:
        t0 = time.monotonic()
        run2 = create_run()
        state2 = wait_terminal(api, run2, 900, logs[1])
        timings["run2_s"] = round(time.monotonic() - t0, 1)
    finally:
        stop(w2)
    assert state2["type"] == "COMPLETED", f"{state2}\n{logs[1].read_text()[-6000:]}"
    return {"ws": ws, "api": api, "ml": servers["ml"], "deployment": dep, "run1": run1, "state1": state1, "run2": run2,
            "done_before_kill": done_before_kill, "stages2": stage_table(api, run2), "timings": timings,
            "worker_logs": logs}
