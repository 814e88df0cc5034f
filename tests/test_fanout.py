"""Fan-out (issue 11): the deployment sends stages to two nodes through a DVC remote, against REAL servers.

Two process workers of pool ``derta-nodes``, each on its own clone of the
workspace (two "nodes"), a local-directory DVC remote, a real Prefect server
and a real MLflow server. Threads are pinned (``OMP_NUM_THREADS=1``) so the
models of the fan-out and of a serial ``dvc repro`` hash alike.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.pipeline_helpers import REPO, VENV_BIN, env, free_port, make_workspace, post_retrying, small_params, stop, wait_http

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.e2e]

PINNED = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DERTA_THREADS": "1"}
NODES = "derta-stage/stage"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A Prefect server and an MLflow server for the module; yields the env every process gets."""
    root = tmp_path_factory.mktemp("servers")
    pport, mport = free_port(), free_port()
    e = env(PREFECT_HOME=str(root / "prefect"), PREFECT_UI_ENABLED="false", PREFECT_API_URL=f"http://127.0.0.1:{pport}/api",
            MLFLOW_TRACKING_URI=f"http://127.0.0.1:{mport}", **PINNED)
    e.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    logs = {n: open(root / f"{n}.log", "w") for n in ("prefect", "mlflow")}
    procs = {
        "prefect": subprocess.Popen([str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(pport)],
                                    cwd=root, env={k: v for k, v in e.items() if k != "PREFECT_API_URL"},
                                    stdout=logs["prefect"], stderr=subprocess.STDOUT, start_new_session=True),
        "mlflow": subprocess.Popen([str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mport), "--workers", "1",
                                    "--backend-store-uri", f"sqlite:///{root}/m.db", "--serve-artifacts",
                                    "--artifacts-destination", str(root / "artifacts")],
                                   cwd=root, env=e, stdout=logs["mlflow"], stderr=subprocess.STDOUT, start_new_session=True),
    }
    try:
        wait_http(e["PREFECT_API_URL"] + "/health", 180, procs["prefect"])
        wait_http(e["MLFLOW_TRACKING_URI"] + "/health", 180, procs["mlflow"])
        subprocess.run([str(VENV_BIN / "prefect"), "work-pool", "create", "derta-nodes", "--type", "process"], env=e, check=True,
                       capture_output=True)
        yield e
    finally:
        for p in procs.values():
            stop(p)
        for fh in logs.values():
            fh.close()


def _shape(params: dict) -> dict:
    """The small config, every training step logged (so the live MLflow run shows a loss per step)."""
    params = small_params(params)
    params["train"]["logging_steps"] = 1
    return params


class Cluster:
    """A workspace (the user's checkout, serving derta/full), its DVC remote, and one worker per node clone."""

    def __init__(self, root: Path, e: dict[str, str], n_nodes: int = 2):
        self.root, self.e, self.procs, self.logs = root, dict(e), {}, {}
        self.ws = make_workspace(root / "ws", shape=_shape)
        self.remote = root / "remote"
        self.remote.mkdir()
        self.run("dvc", "remote", "add", "-d", "store", str(self.remote))
        self.run("git", "add", ".dvc/config")
        self.run("git", "commit", "-q", "-m", "remote")
        self.nodes = []
        for i in range(n_nodes):
            clone = root / f"node{i}"
            subprocess.run(["git", "clone", "-q", str(self.ws), str(clone)], check=True, env=self.e)
            self.nodes.append(clone)
        self.run("prefect", "--no-prompt", "deploy", "--name", "stage")
        for i, clone in enumerate(self.nodes):
            self.start(f"node{i}", [str(VENV_BIN / "prefect"), "worker", "start", "--pool", "derta-nodes", "--limit", "1",
                                    "--name", f"{root.name}-node{i}"], clone, DERTA_CHECKOUT=str(clone), PYTHONPATH=str(clone))
        self.start("serve", [sys.executable, "-m", "flows.derta_flow", "serve"], self.ws, PYTHONPATH=str(self.ws))

    def run(self, *cmd: str) -> str:
        exe = str(VENV_BIN / cmd[0]) if (VENV_BIN / cmd[0]).exists() else cmd[0]
        return subprocess.run([exe, *cmd[1:]], cwd=self.ws, env=self.e, check=True, capture_output=True, text=True).stdout

    def start(self, name: str, cmd: list[str], cwd: Path, **extra: str) -> None:
        self.logs[name] = open(self.root / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(cmd, cwd=cwd, env={**self.e, **extra}, stdout=self.logs[name],
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text()[-5000:]

    def api(self, method: str, path: str, body: dict | None = None):
        import httpx

        url = self.e["PREFECT_API_URL"] + path
        if method == "post":
            return post_retrying(url, body or {}).json()
        return httpx.get(url, timeout=10).json()

    def deployment_id(self, name: str) -> str:
        import httpx

        end = time.monotonic() + 180
        while time.monotonic() < end:
            assert self.procs["serve"].poll() is None, self.log("serve")
            r = httpx.get(self.e["PREFECT_API_URL"] + f"/deployments/name/{name}", timeout=5)
            if r.status_code == 200:
                return r.json()["id"]
            time.sleep(1)
        raise AssertionError(f"deployment {name} never appeared\n{self.log('serve')}")

    def start_run(self, **parameters) -> str:
        dep = self.deployment_id("derta/full")
        return self.api("post", f"/deployments/{dep}/create_flow_run", {"parameters": parameters})["id"]

    def wait(self, run_id: str, timeout: float) -> dict:
        """The run once it ended; fails (with its state message and the logs) unless it COMPLETED."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            run = self.api("get", f"/flow_runs/{run_id}")
            if run["state"] and run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                assert run["state"]["type"] == "COMPLETED", (f"{run['state']['type']}: {run['state'].get('message')}\n"
                                                             + "\n".join(self.log(n) for n in self.procs))
                return run
            time.sleep(3)
        raise AssertionError(f"run {run_id} still {run['state']}\n" + "\n".join(self.log(n) for n in self.procs))

    def stage_runs(self) -> list[dict]:
        dep = self.deployment_id(NODES)
        return self.api("post", "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep]}}, "limit": 200})

    def results(self) -> dict[str, dict]:
        """The derta-stage-result artifact rows by flow run id."""
        arts = self.api("post", "/artifacts/filter", {"artifacts": {"key": {"any_": ["derta-stage-result"]}}, "limit": 200})
        return {a["flow_run_id"]: (json.loads(a["data"]) if isinstance(a["data"], str) else a["data"])[0] for a in arts}

    def close(self) -> None:
        for p in self.procs.values():
            stop(p)
        for fh in self.logs.values():
            fh.close()


def _lock(ws: Path) -> dict:
    """dvc.lock's stages; ``register``'s output holds MLflow ids (they differ run to run by nature)."""
    stages = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    stages["register"].pop("outs", None)
    return stages


def _status(ws: Path, e: dict[str, str]) -> str:
    """``dvc status`` of the pipeline the flow runs: ``register`` and every stage before it (not train_dpo, which
    the flow runs only when ``dpo`` is among the evaluated variants)."""
    return subprocess.run([str(VENV_BIN / "dvc"), "status", "register"], cwd=ws, env=e, capture_output=True, text=True).stdout


def _serial_lock(root: Path, ws: Path, e: dict[str, str]) -> dict:
    """The lock of a plain ``dvc repro`` of the same pipeline in a fresh clone of the workspace."""
    serial = root / "serial"
    subprocess.run(["git", "clone", "-q", str(ws), str(serial)], check=True, env=e)
    subprocess.run([str(VENV_BIN / "dvc"), "repro", "register"], cwd=serial, env={**e, "PYTHONPATH": str(serial)}, check=True,
                   capture_output=True, text=True)
    return _lock(serial)


def _interval(run: dict) -> tuple[float, float]:
    from datetime import datetime

    return tuple(datetime.fromisoformat(run[k].replace("Z", "+00:00")).timestamp() for k in ("start_time", "end_time"))


@pytest.mark.timeout(3000)
def test_fan_out_overlaps_matches_serial_and_reruns_nothing(tmp_path, servers):
    c = Cluster(tmp_path, servers)
    try:
        t0 = time.monotonic()
        run = c.wait(c.start_run(nodes=NODES, max_parallel=2), 1500)
        fan_out_s = time.monotonic() - t0
        assert run["state"]["type"] == "COMPLETED", "\n".join(c.log(n) for n in c.procs)
        runs = {r["id"]: r for r in c.stage_runs() if r["state_type"] == "COMPLETED"}
        results = c.results()
        by_stage = {results[i]["stage"]: (runs[i], results[i]) for i in runs if i in results}
        assert set(by_stage) >= {"source", "pretrain", "train@vanilla", "train@derta", "evaluate@vanilla", "evaluate@derta", "register"}
        assert {r["checkout"] for _, r in by_stage.values()} == {str(n) for n in c.nodes}  # both nodes worked
        overlaps = []
        for a, b in (("train@vanilla", "train@derta"), ("evaluate@vanilla", "evaluate@derta")):
            (sa, ea), (sb, eb) = _interval(by_stage[a][0]), _interval(by_stage[b][0])
            overlaps.append(min(ea, eb) - max(sa, sb))
        assert max(overlaps) > 0, f"no two variant stages ran at once: {overlaps}"

        # The merged lock is a serial run's, and the user's checkout has nothing left to do.
        assert "up to date" in _status(c.ws, c.e)
        t0 = time.monotonic()
        serial = _serial_lock(tmp_path, c.ws, c.e)
        serial_s = time.monotonic() - t0
        assert _lock(c.ws) == serial

        # A second deployment run computes nothing.
        again = c.wait(c.start_run(nodes=NODES, max_parallel=2), 900)
        assert again["state"]["type"] == "COMPLETED"
        arts = c.api("post", "/artifacts/filter", {"artifacts": {"key": {"any_": ["derta-stages"]}}, "limit": 10})
        table = [json.loads(a["data"]) for a in arts if a["flow_run_id"] == again["id"]][0]
        assert {row["status"] for row in table} == {"cached"}, table

        # Live tracking: each stage's run is a child of its pipeline's parent run, with per-step losses; the
        # flow opened the fan-out's parent, the first stage opened the serial `dvc repro`'s and register closed it.
        from mlflow import MlflowClient

        ml = MlflowClient(tracking_uri=c.e["MLFLOW_TRACKING_URI"])
        exp = ml.get_experiment_by_name("derta").experiment_id
        stages = {}
        for opened_by in ("flow", "first stage"):
            parents = ml.search_runs([exp], f"tags.`derta.opened_by` = '{opened_by}'")
            assert parents and all(p.info.status == "FINISHED" for p in parents), opened_by
            children = [r for p in parents for r in ml.search_runs([exp], f"tags.mlflow.parentRunId = '{p.info.run_id}'")]
            stages[opened_by] = {r.data.tags.get("derta.stage"): r for r in children}
            assert {"pretrain", "train@vanilla", "train@derta", "evaluate@vanilla", "evaluate@derta"} <= set(stages[opened_by])
        assert len(ml.search_runs([exp], "tags.`derta.opened_by` = 'first stage'")) == 1  # one parent per dvc repro
        train = stages["flow"]["train@derta"]
        losses = ml.get_metric_history(train.info.run_id, "loss")
        assert [m.step for m in losses] == list(range(1, len(losses) + 1)) and len(losses) >= 2  # one per step
        assert {"loss_mle", "loss_rto"} <= set(train.data.metrics)
        assert "train_runtime" in train.data.metrics and train.inputs.dataset_inputs
        assert "seconds_direct" in stages["flow"]["evaluate@derta"].data.metrics
        figures = {"fan_out_s": round(fan_out_s, 1), "serial_s": round(serial_s, 1), "ratio": round(fan_out_s / serial_s, 2),
                   "overlap_s": {"train": round(overlaps[0], 1), "evaluate": round(overlaps[1], 1)}}
        (REPO / "test-artifacts").mkdir(exist_ok=True)
        (REPO / "test-artifacts" / "fanout.json").write_text(json.dumps(figures, indent=2) + "\n")
        print(f"\nfan-out vs serial (test-artifacts/fanout.json): {figures}")
    finally:
        c.close()


def _tree(proc: subprocess.Popen) -> list[psutil.Process]:
    p = psutil.Process(proc.pid)
    return [p, *p.children(recursive=True)]


@pytest.mark.timeout(3000)
def test_node_killed_mid_training_stage_reruns_elsewhere(tmp_path, servers):
    c = Cluster(tmp_path, servers)
    try:
        earlier = {r["id"] for r in c.stage_runs()}  # the server is the module's: other tests' stage runs
        run_id = c.start_run(nodes=NODES, max_parallel=2)
        victim, stage = None, None
        end = time.monotonic() + 1200
        while victim is None and time.monotonic() < end:
            for r in c.stage_runs():
                if (r["state_type"] == "RUNNING" and r["name"].startswith("train@") and r["infrastructure_pid"]
                        and r["id"] not in earlier):
                    pid = int(str(r["infrastructure_pid"]).rsplit(":", 1)[-1])
                    for name in ("node0", "node1"):
                        if pid in {p.pid for p in _tree(c.procs[name])}:
                            victim, stage = name, r["name"].split(" ")[0]
            time.sleep(2)
        assert victim, "no training stage started\n" + c.log("serve")
        time.sleep(5)  # into the training itself
        for p in _tree(c.procs[victim]):  # the node dies: its worker and everything it runs
            p.send_signal(signal.SIGKILL)
        run = c.wait(run_id, 1800)
        assert run["state"]["type"] == "COMPLETED", "\n".join(c.log(n) for n in c.procs)
        states = [r["state_type"] for r in c.stage_runs() if r["name"].startswith(stage + " ") and r["id"] not in earlier]
        assert "CRASHED" in states and states.count("COMPLETED") == 1, states
        assert "up to date" in _status(c.ws, c.e)
        assert _lock(c.ws) == _serial_lock(tmp_path, c.ws, c.e)
        # Nothing partial reached the remote: every directory object there is one the final lock names.
        lock = yaml.safe_load((c.ws / "dvc.lock").read_text())["stages"]
        from derta.node import uncached_outs

        git_kept = set(uncached_outs(c.ws, *lock))  # cache: false outputs live in git, never on the remote
        named = {o["md5"] for e in lock.values() for o in e.get("outs", [])
                 if str(o.get("md5", "")).endswith(".dir") and o["path"] not in git_kept}
        on_remote = {p.parent.name + p.name for p in c.remote.rglob("*.dir")}
        assert on_remote == named
    finally:
        c.close()
