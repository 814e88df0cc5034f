"""derta.node: the stage graph, what a node pulls, lock merging, uncached outputs, the remote check (fast)."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from derta.node import pack, plan, pull_targets, read_lock, uncached_outs, unpack, write_lock
from tests.pipeline_helpers import REPO, VENV_BIN, env, make_workspace


def test_plan_names_each_stage_s_direct_upstream():
    names = ["source", "gate_source", "tokenizer", "synthesize", "gate_variants", "pretrain", "train@vanilla", "train@derta",
             "evaluate@vanilla", "evaluate@derta", "report", "register"]
    up = plan(REPO, names)
    assert up["source"] == []
    assert up["train@derta"] == ["gate_variants", "pretrain"] or set(up["train@derta"]) == {"synthesize", "gate_variants", "pretrain"}
    assert "train@vanilla" not in up["train@derta"] and "evaluate@vanilla" not in up["evaluate@derta"]  # variants are independent
    assert up["evaluate@derta"] == ["source", "train@derta"]
    assert set(up["report"]) == {"evaluate@vanilla", "evaluate@derta"}
    with pytest.raises(Exception, match="no stage 'nope'"):
        plan(REPO, ["nope"])


def test_pull_targets_are_exactly_the_stage_s_deps():
    # a file inside synthesize's output directory is pulled on its own, not all variants
    assert sorted(pull_targets(REPO, "train@derta")) == ["data/variants/derta.jsonl", "models/base"]
    assert sorted(pull_targets(REPO, "evaluate@vanilla")) == ["data/source", "models/vanilla"]
    assert uncached_outs(REPO, "gate_variants") == ["reports/validation/variants.json", "reports/validation/variants"]


def test_pack_unpack_round_trip_replaces_directories_whole(tmp_path):
    (tmp_path / "a" / "d").mkdir(parents=True)
    (tmp_path / "a" / "d" / "x.json").write_text("{}")
    (tmp_path / "a" / "f.bin").write_bytes(bytes(range(256)))
    packed = pack(tmp_path, ["a/d", "a/f.bin", "absent"])
    assert set(packed) == {"a/d", "a/f.bin"}
    dst = tmp_path / "dst"
    (dst / "a" / "d").mkdir(parents=True)
    (dst / "a" / "d" / "stale.json").write_text("old")
    unpack(dst, packed)
    assert sorted(p.name for p in (dst / "a" / "d").iterdir()) == ["x.json"]
    assert (dst / "a" / "f.bin").read_bytes() == bytes(range(256))


def test_write_lock_merges_entries(tmp_path):
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"a": {"cmd": "x"}, "b": {"cmd": "y"}}}))
    write_lock(tmp_path, {"b": {"cmd": "y2"}, "c": {"cmd": "z"}})
    assert read_lock(tmp_path) == {"a": {"cmd": "x"}, "b": {"cmd": "y2"}, "c": {"cmd": "z"}}
    assert yaml.safe_load((tmp_path / "dvc.lock").read_text())["schema"] == "2.0"


def test_unreachable_remote_fails_before_any_stage(tmp_path):
    from derta.node import RemoteUnreachable, check_remote

    ws = make_workspace(tmp_path / "ws")
    with pytest.raises(RemoteUnreachable, match="no DVC remote"):
        check_remote(ws)
    subprocess.run([str(VENV_BIN / "dvc"), "remote", "add", "-d", "store", str(tmp_path / "gone")], cwd=ws, check=True, env=env())
    with pytest.raises(RemoteUnreachable, match=r"DVC remote 'store' \(.*gone\) does not exist"):
        check_remote(ws)
    with pytest.raises(RemoteUnreachable, match="no DVC remote named 'other'"):
        check_remote(ws, "other")
    (tmp_path / "gone").mkdir()
    assert check_remote(ws).endswith("gone")


class _FakeClient:
    """Stands in for Prefect's sync client: a flow run RUNNING whose last heartbeat is ``beat_age_s`` old."""

    def __init__(self, state_type: str, beat_age_s: float | None, state_age_s: float = 0.0):
        from datetime import datetime, timedelta, timezone

        now = datetime.now(timezone.utc)
        self.state_type, self.crashed = state_type, None
        self.beat = None if beat_age_s is None else now - timedelta(seconds=beat_age_s)
        self.state_time = now - timedelta(seconds=state_age_s)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read_flow_run(self, flow_run_id):
        from types import SimpleNamespace

        t = self.state_type
        state = SimpleNamespace(is_final=lambda: t in ("COMPLETED", "CRASHED"), is_running=lambda: t == "RUNNING",
                                is_pending=lambda: t == "PENDING", timestamp=self.state_time, type=SimpleNamespace(value=t))
        return SimpleNamespace(id=flow_run_id, state=state)

    def request(self, method, path, json):
        from types import SimpleNamespace

        assert path == "/events/filter" and json["filter"]["resource"]["id"] == ["prefect.flow-run.r1"]
        events = [] if self.beat is None else [{"occurred": self.beat.isoformat()}]
        return SimpleNamespace(json=lambda: {"events": events})

    def set_flow_run_state(self, flow_run_id, state, force):
        self.crashed, self.state_type = state.message, "CRASHED"


@pytest.mark.parametrize("state, beat_age, state_age, crashed", [
    ("RUNNING", 200.0, 300.0, True),    # heartbeats stopped: its node died
    ("RUNNING", 10.0, 300.0, False),    # alive (completes below)
    ("RUNNING", None, 200.0, True),     # never sent one since it started running
    ("PENDING", None, 100.0, False),    # a worker took it; its process is still starting
    ("PENDING", None, 2000.0, True),    # ... and never started
])
def test_follow_crashes_only_a_silent_stage_run(monkeypatch, state, beat_age, state_age, crashed):
    import prefect.client.orchestration as orch

    from flows.derta_flow import follow

    fake = _FakeClient(state, beat_age, state_age)
    monkeypatch.setattr(orch, "get_client", lambda sync_client: fake)
    if not crashed:  # end it after one look, as the run would
        real = fake.read_flow_run
        calls = []

        def read(fid):
            calls.append(fid)
            if len(calls) > 1:
                fake.state_type = "COMPLETED"
            return real(fid)

        fake.read_flow_run = read
    fr = follow("r1", poll_s=0.01)
    assert fr.state.type.value == ("CRASHED" if crashed else "COMPLETED")
    assert (fake.crashed is not None) == crashed


@pytest.mark.slow
def test_s3_remote_through_a_local_s3_server(tmp_path):
    """The S3 path of docs/cluster.md against moto in server mode: a stage's output pushed and pulled back; the
    server gone, the remote check names the remote and its URL."""
    import boto3

    from derta.node import RemoteUnreachable, check_remote
    from tests.pipeline_helpers import free_port, stop, wait_http

    port = free_port()
    e = env(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    server = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], env=e,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", 60, server)
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket="derta-dvc")
        ws = make_workspace(tmp_path / "ws")
        dvc = lambda *a: subprocess.run([str(VENV_BIN / "dvc"), *a], cwd=ws, env=e, check=True,  # noqa: E731
                                        capture_output=True, text=True)
        dvc("remote", "add", "-d", "store", "s3://derta-dvc/cache")
        dvc("remote", "modify", "store", "endpointurl", endpoint)
        import os

        old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
        os.environ.update({k: e[k] for k in old})
        try:
            assert check_remote(ws) == "s3://derta-dvc/cache"
            (ws / "blob.txt").write_text("a stage output\n")
            dvc("add", "blob.txt")
            dvc("push", "blob.txt.dvc")
            (ws / "blob.txt").unlink()
            subprocess.run(["rm", "-rf", str(ws / ".dvc" / "cache")], check=True)
            dvc("pull", "blob.txt.dvc")
            assert (ws / "blob.txt").read_text() == "a stage output\n"
            stop(server)
            with pytest.raises(RemoteUnreachable, match=r"DVC remote 'store' \(s3://derta-dvc/cache\) is unreachable"):
                check_remote(ws)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        stop(server)
