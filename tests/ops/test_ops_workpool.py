"""derta/full on a process work pool (prefect.yaml + `prefect worker start`), a worker
SIGKILLed mid-run and a resume that recomputes nothing DVC had finished; stale DVC
locks; retries only where the network is."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import time

import pytest

from flows import derta_flow as fl
from tests.pipeline_helpers import REPO

pytestmark = []


# ---------------------------------------------------------------- work pool, killed worker (real servers)

@pytest.mark.slow
@pytest.mark.server
@pytest.mark.timeout(1500)
def test_deployment_runs_on_process_work_pool(pipeline_run):
    dep = pipeline_run["deployment"]
    assert dep["work_pool_name"] == "derta-process"
    assert dep["entrypoint"] == "flows/derta_flow.py:derta_flow"
    assert set(dep["parameter_openapi_schema"]["properties"]) >= {"profile", "variants", "attacks", "judge"}
    stages = pipeline_run["stages2"]
    variants = {"synthesize": {"variants": ["vanilla", "derta"]}, "eval": {"variants": ["vanilla", "derta"]}}
    assert list(stages) == fl.stage_names(pipeline_run["ws"], variants)
    assert (pipeline_run["ws"] / "reports" / "registry.json").is_file()
    print("timings", pipeline_run["timings"])


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.timeout(1500)
def test_killed_worker_resume_recomputes_nothing_finished(pipeline_run):
    assert pipeline_run["state1"].get("type") != "COMPLETED"  # the first run really died mid-way
    before = pipeline_run["done_before_kill"]
    assert {"source", "gate_source", "synthesize", "gate_variants", "tokenizer", "pretrain"} <= before
    stages = pipeline_run["stages2"]
    assert {s: stages[s] for s in before} == {s: "cached" for s in before}
    assert {s: v for s, v in stages.items() if s not in before} == {s: "ran" for s in stages if s not in before}
    assert "register" not in before and stages["register"] == "ran"


# ---------------------------------------------------------------- stale locks (fast)

def _rwlock(tmp_path, lock: dict | str):
    d = tmp_path / ".dvc" / "tmp"
    d.mkdir(parents=True)
    (d / "rwlock").write_text(lock if isinstance(lock, str) else json.dumps(lock))
    return d / "rwlock"


def _argv_set(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Wait until ``proc``'s command line reads back: Popen returns once the exec closed its pipe, which the
    kernel does before it writes the new argv, so under load /proc/PID/cmdline can still be empty."""
    import psutil

    deadline = time.monotonic() + timeout
    while not psutil.Process(proc.pid).cmdline() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_clear_stale_locks_drops_dead_and_reused_pids_keeps_live_dvc(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    other = subprocess.Popen(["sleep", "30"])  # a pid reused by a process that is not dvc
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "dvc", "repro"])
    _argv_set(live)
    try:
        lock = {"read": {"data/source": [{"pid": dead.pid, "cmd": "dvc repro"}, {"pid": live.pid, "cmd": "dvc repro"}]},
                "write": {"models/base": {"pid": other.pid, "cmd": "dvc repro"},
                          "models/x": {"pid": live.pid, "cmd": "dvc repro"}}}
        path = _rwlock(tmp_path, lock)
        removed = fl.clear_stale_locks(tmp_path)
        assert len(removed) == 2 and any(str(dead.pid) in r for r in removed) and any(str(other.pid) in r for r in removed)
        assert json.loads(path.read_text()) == {"read": {"data/source": [{"pid": live.pid, "cmd": "dvc repro"}]},
                                                "write": {"models/x": {"pid": live.pid, "cmd": "dvc repro"}}}
        assert fl.clear_stale_locks(tmp_path) == []
    finally:
        for p in (other, live):
            p.kill()
            p.wait()


def test_clear_stale_locks_removes_corrupted_rwlock_and_respects_a_running_dvc(tmp_path):
    import zc.lockfile

    path = _rwlock(tmp_path, '{"read": {"data/so')  # cut short by a kill mid-write
    held = zc.lockfile.LockFile(str(path.parent / "lock"))  # a dvc command is running here
    try:
        assert fl.clear_stale_locks(tmp_path) == [] and path.exists()
    finally:
        held.close()
    assert fl.clear_stale_locks(tmp_path) == [f"{path} (corrupted)"] and not path.exists()
    assert fl.clear_stale_locks(tmp_path) == []


def test_dvc_itself_drops_rwlock_entries_of_dead_pids():
    """Documents the DVC behaviour the flow relies on (dvc/rwlock.py `_check_blockers`)."""
    from dvc import rwlock

    src = inspect.getsource(rwlock._check_blockers)
    assert "psutil.pid_exists" in src and "Auto removed" in src


# ---------------------------------------------------------------- retries only where the network is

def test_no_dvc_stage_task_has_retries():
    assert fl.run_stage.retries == 0
    assert not fl.run_stage.retry_delay_seconds
    assert fl.derta_flow.retries in (0, None)


def test_network_clients_have_bounded_retries():
    from derta.llm import LLMConfig
    from derta.release import ReleaseConfig

    for cfg in (LLMConfig(), ReleaseConfig()):
        fields = type(cfg).model_fields
        assert 0 < cfg.max_retries <= 5
        assert fields["max_retries"].metadata, "max_retries must be validated (ge=0)"
    assert "max_backoff_s" not in LLMConfig.model_fields  # openai caps one wait: 8 s backoff, Retry-After <= 120 s
    with pytest.raises(Exception):
        LLMConfig(max_retries=-1)


# ---------------------------------------------------------------- loopback by default

def test_servers_bind_loopback_by_default():
    import ast

    # the test servers of the ops suite, the colleague's flow test and the Makefile's UI
    for f in ("tests/ops/conftest.py", "tests/test_flow.py", "Makefile"):
        text = (REPO / f).read_text()
        assert "--host" in text and "0.0.0.0" not in text, f
        assert text.count('"--host", "127.0.0.1"') + text.count("--host 127.0.0.1") >= 1, f
    # `serve` registers a runner, it opens no port; its webserver (if enabled) defaults to loopback
    from prefect.settings import PREFECT_RUNNER_SERVER_HOST

    assert PREFECT_RUNNER_SERVER_HOST.value() in ("localhost", "127.0.0.1")
    # the LLM client's default endpoint is loopback
    from derta.llm import LLMConfig

    assert LLMConfig().base_url.startswith("http://127.0.0.1")
    tree = ast.parse((REPO / "flows" / "derta_flow.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value == "0.0.0.0"]
