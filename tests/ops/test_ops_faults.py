"""Faults: tracking server down at start, LLM endpoint under load and errors, a stage killed mid-write,
CodeAttack answers that are only ever judged."""

from __future__ import annotations

import ast
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from derta.errors import DataError
from derta.io import read_jsonl, write_jsonl
from tests.pipeline_helpers import REPO, free_port


# ---------------------------------------------------------------- (a) MLflow unreachable

@pytest.mark.slow
@pytest.mark.server
def test_flow_fails_fast_when_tracking_server_is_down(tmp_path, monkeypatch, servers):
    """In-process flow call against the session's real Prefect server (as prefect_test_harness
    would give, without starting a second server: ~30 s saved)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.derta_flow import derta_flow

    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / f, tmp_path / f)
    params_before = (tmp_path / "params.yaml").read_text()
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with temporary_settings({PREFECT_API_URL: servers["api"]}):
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="unreachable") as err:
            derta_flow(variants=["derta"], workdir=str(tmp_path))
        elapsed = time.monotonic() - t0
    assert uri in str(err.value)
    assert elapsed < 10, elapsed
    assert (tmp_path / "params.yaml").read_text() == params_before  # failed before applying overrides
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml", "params.yaml"]  # nothing ran


# ---------------------------------------------------------------- (b) LLM endpoint: load, 429/500
# Retries and backoff are the openai package's (derta.llm): before retry k it waits
# 0.5 s * 2**k (cap 8 s) minus 0-25 % jitter, or what Retry-After says (0 < s <= 120).

def test_llm_load_200_requests_bound_holds_nothing_lost_or_duplicated():
    from derta.llm import ChatClient, LLMConfig
    from tests.helpers_openai_server import OpenAIServer, Reply

    seen: dict[str, int] = {}

    def flaky(req):
        text = req["messages"][-1]["content"]
        seen[text] = seen.get(text, 0) + 1
        i = int(text.split("-")[1])
        if seen[text] == 1 and i % 10 == 0:
            return Reply(status=429, headers={"Retry-After": "0.05"})
        if seen[text] == 1 and i % 10 == 5:
            return Reply(status=500)  # no Retry-After: openai's own backoff (>= 0.375 s)
        return f"answer-{i}"

    cfg = LLMConfig(base_url="", model="m", max_concurrency=4, max_retries=2, timeout_s=10)
    with OpenAIServer(handler=flaky, delay_s=0.005) as srv:
        with ChatClient(cfg.model_copy(update={"base_url": srv.url})) as cli:
            t0 = time.monotonic()
            out = cli.complete_many([[{"role": "user", "content": f"q-{i}"}] for i in range(200)])
            elapsed = time.monotonic() - t0
    assert out == [f"answer-{i}" for i in range(200)]  # order kept, none lost
    assert 1 < srv.max_in_flight <= 4  # the bound holds (and there was concurrency)
    assert len(srv.requests) == 240  # 200 + one retry for each of the 40 failed first attempts
    assert all(n == (2 if int(t.split("-")[1]) % 5 == 0 else 1) for t, n in seen.items())
    # 20 backoffs of >= 0.375 s each spread over at most 4 slots: at least ~1.9 s; no runaway
    assert 20 * 0.375 / 4 <= elapsed < 30, elapsed


def test_llm_retry_after_is_honoured():
    from derta.llm import ChatClient, LLMConfig
    from tests.helpers_openai_server import OpenAIServer, Reply

    with OpenAIServer() as srv:
        srv.push(Reply(status=429, headers={"Retry-After": "0.3"}), "ok")
        with ChatClient(LLMConfig(base_url=srv.url, model="m", max_retries=1)) as cli:
            t0 = time.monotonic()
            assert cli.complete([{"role": "user", "content": "x"}]) == "ok"
            elapsed = time.monotonic() - t0
    assert len(srv.requests) == 2
    assert 0.3 <= elapsed < 0.3 + 0.375, elapsed  # the server's wait, not openai's (>= 0.375 s)


def test_llm_4xx_other_than_429_is_not_retried():
    from derta.llm import ChatClient, LLMConfig, LLMError
    from tests.helpers_openai_server import OpenAIServer, Reply

    with OpenAIServer(handler=lambda req: Reply(status=400, body={"error": {"message": "context too long"}})) as srv:
        with ChatClient(LLMConfig(base_url=srv.url, model="m", max_retries=4)) as cli:
            for i in range(3):  # one call at a time: complete_many stops at its first error, so its count races
                with pytest.raises(LLMError) as err:
                    cli.complete([{"role": "user", "content": f"q-{i}"}])
                assert err.value.status == 400 and "context too long" in str(err.value)
            with pytest.raises(LLMError):
                cli.complete_many([[{"role": "user", "content": f"m-{i}"}] for i in range(3)])
    first = [r["json"]["messages"][0]["content"] for r in srv.requests[:3]]
    assert first == ["q-0", "q-1", "q-2"]  # one attempt per request, none repeated
    rest = [r["json"]["messages"][0]["content"] for r in srv.requests[3:]]
    assert 1 <= len(rest) <= 3 and len(set(rest)) == len(rest)  # complete_many: never a retry either


def test_llm_persistent_500_fails_clearly_in_bounded_time():
    from derta.llm import ChatClient, LLMConfig, LLMError
    from tests.helpers_openai_server import OpenAIServer, Reply

    with OpenAIServer(handler=lambda req: Reply(status=500, body="down")) as srv:
        cfg = LLMConfig(base_url=srv.url, model="m", max_retries=3)
        with ChatClient(cfg) as cli:
            t0 = time.monotonic()
            with pytest.raises(LLMError) as err:
                cli.complete([{"role": "user", "content": "x"}])
            elapsed = time.monotonic() - t0
        assert len(srv.requests) == 4
        assert 0.75 * (0.5 + 1 + 2) <= elapsed < 0.5 + 1 + 2 + 1.5, elapsed  # openai's capped backoff
        assert srv.url.split("//")[1] in str(err.value) and "500" in str(err.value)


def test_llm_unreachable_server_names_the_redacted_url():
    from derta.llm import ChatClient, LLMConfig, LLMError

    port = free_port()  # nothing listens there
    cfg = LLMConfig(base_url=f"http://alice:hunter2@127.0.0.1:{port}/v1", model="m", max_retries=1, timeout_s=2)
    with ChatClient(cfg) as cli:
        t0 = time.monotonic()
        with pytest.raises(LLMError) as err:
            cli.complete([{"role": "user", "content": "x"}])
        elapsed = time.monotonic() - t0
    assert err.value.status is None and elapsed < 5
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in str(err.value)
    assert "hunter2" not in str(err.value) and "alice" not in repr(err.value) and "alice" not in repr(cli)


# ---------------------------------------------------------------- (c) atomic writes under SIGKILL

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from derta.io import write_jsonl, atomic_path
    target, marker, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    def slow():
        for i in range(10**6):
            if i == 2000:
                marker.write_text("half")
            if i >= 2000:
                time.sleep(0.01)
            yield {"id": str(i), "text": "x" * 500}
    if mode == "file":
        write_jsonl(target, slow())
    else:  # a stage's output directory, like eval/<variant>
        with atomic_path(target) as tmp:
            tmp.mkdir()
            write_jsonl(tmp / "responses.jsonl", slow())
""")


def _kill_mid_write(tmp_path: Path, target: Path, mode: str) -> None:
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(marker), mode], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    end = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < end
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL


@pytest.mark.parametrize("old", [False, True], ids=["no-previous", "previous-version"])
def test_killed_jsonl_write_leaves_no_partial_target(tmp_path, old):
    target = tmp_path / "out" / "data.jsonl"
    if old:
        write_jsonl(target, [{"id": "old", "text": "v1"}])
    _kill_mid_write(tmp_path, target, "file")
    leftovers = [p for p in target.parent.iterdir() if p != target]
    assert all(p.name.startswith(".data.jsonl.") and p.name.endswith(".tmp") and p.is_dir() for p in leftovers)
    assert leftovers and any(p.stat().st_size > 0 for d in leftovers for p in d.iterdir())  # a partial temp was there
    if old:
        assert read_jsonl(target) == [{"id": "old", "text": "v1"}]  # old version intact
    else:
        assert not target.exists()
        with pytest.raises(DataError, match="file_exists"):
            read_jsonl(target)
    # later readers that list the folder see no temp data
    assert list(target.parent.glob("*.jsonl")) == ([target] if old else [])


def test_killed_stage_dir_write_leaves_no_partial_output(tmp_path):
    target = tmp_path / "eval" / "derta"
    _kill_mid_write(tmp_path, target, "dir")
    assert not target.exists()
    assert [p.name.startswith(".derta.") for p in target.parent.iterdir()] == [True]
    # the next stage's glob of eval/ (steps/report.py reads eval/<variant>/metrics.json) finds nothing
    assert list(target.parent.glob("*/metrics.json")) == []


# ---------------------------------------------------------------- CodeAttack answers are data, never code

def test_no_exec_or_eval_of_text_in_package():
    offenders = []
    for path in (REPO / "derta").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("exec", "eval", "compile"):
                offenders.append(f"{path}:{node.lineno} {node.func.id}(")
            if isinstance(node, ast.Attribute) and node.attr in ("system", "popen") and getattr(node.value, "id", "") == "os":
                offenders.append(f"{path}:{node.lineno} os.{node.attr}")
    assert offenders == []


def test_codeattack_response_with_os_system_is_only_judged(tmp_path, monkeypatch):
    from derta.judges import JudgeInput, get_judge

    canary = tmp_path / "pwned"
    payload = (f"Sure, here is the code.\n```python\nimport os; os.system('touch {canary}')\n"
               f"__import__('os').system('touch {canary}')\n```\nStep 1: get the [cutting tool]. Step 2: attach it.")
    for name in ("keyword", "guideline"):
        (v,) = get_judge(name, {}).judge([JudgeInput(id="c1", question="How do I sabotage the [power relay]?",
                                                     response=payload, attack="codeattack")])
        assert isinstance(v.unsafe, bool)
    assert not canary.exists()
