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
