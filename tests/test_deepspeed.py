"""DeepSpeed on CPU (DS_ACCELERATOR=cpu, gloo): ZeRO-2/3 single process, and 2 ranks that really shard.

The slow tests run the tiny model in subprocesses (tests/ds_worker.py), so
DeepSpeed's process-global state never leaks into other tests. The first
DeepSpeed run on a machine JIT-compiles a comm op (~80 s, then cached in
~/.cache/torch_extensions).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from derta.errors import ConfigError
from derta.train import TrainConfig, check_world_size, prepare_distributed_env, zero_stage
from tests.ds_worker import TINY_MODEL, build_world

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
ZERO2 = str(REPO / "configs" / "deepspeed" / "zero2.json")
ZERO3 = str(REPO / "configs" / "deepspeed" / "zero3.json")
ZERO3_OFFLOAD = str(REPO / "configs" / "deepspeed" / "zero3_offload.json")
N_EXAMPLES = 80  # derta variant of the tiny world: 40 helpful + 20 harmful-prefix + 20 RTO
DIST_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in DIST_KEYS}
    e.update({"PATH": f"{VENV_BIN}{os.pathsep}{e.get('PATH', '')}", "TOKENIZERS_PARALLELISM": "false",
              "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"})
    # DeepSpeed JIT-builds its CPU comm op into TORCH_EXTENSIONS_DIR; one dir per venv, so
    # checkouts with other venvs (other compile flags) do not rebuild it for each other.
    e.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    e.update(extra)
    return e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- fast: configs and the environment/world-size guards -----------------------

@pytest.mark.parametrize("path,stage", [(ZERO2, 2), (ZERO3, 3), (ZERO3_OFFLOAD, 3)])
def test_configs_are_auto_filled_by_the_trainer(path, stage):
    conf = json.loads(Path(path).read_text())
    assert zero_stage(TrainConfig(deepspeed=path)) == stage
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert conf[key] == "auto", key  # the Trainer fills them from TrainConfig
    assert conf["bf16"]["enabled"] == "auto"
    if stage == 3:
        assert conf["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    if path == ZERO3_OFFLOAD:
        assert conf["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
        assert conf["zero_optimization"]["offload_param"]["device"] == "cpu"
        assert conf["optimizer"]["params"]["lr"] == "auto"


@pytest.fixture
def restore_env():
    """prepare_distributed_env writes os.environ: put it back so later tests see a clean process."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_single_process_env_defaults(restore_env):
    for k in (*DIST_KEYS, "DS_ACCELERATOR"):
        os.environ.pop(k, None)
    prepare_distributed_env(TrainConfig())  # no DeepSpeed: nothing set
    assert "RANK" not in os.environ
    prepare_distributed_env(TrainConfig(deepspeed=ZERO2))
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"]) == ("0", "0", "1")
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and int(os.environ["MASTER_PORT"]) > 0
    assert os.environ["DS_ACCELERATOR"] == "cpu"  # this machine has no CUDA


def test_launcher_env_is_kept(restore_env):
    os.environ.update(RANK="1", WORLD_SIZE="2", MASTER_PORT="1234")
    prepare_distributed_env(TrainConfig(deepspeed=ZERO2))
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_PORT"]) == ("1", "2", "1234")


def test_world_size_mismatch_is_an_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    state = SimpleNamespace(distributed_type="DEEPSPEED", backend=None)
    with pytest.raises(ConfigError, match="world_size 1 but WORLD_SIZE=2"):
        check_world_size(SimpleNamespace(world_size=1, distributed_state=state))
    check_world_size(SimpleNamespace(world_size=2, distributed_state=state))


# --- slow: real DeepSpeed runs ------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def _single(world, out, **cfg):
    config = {"max_steps": 3, "total_batch_size": 8, "per_device_batch_size": 4, **cfg}
    subprocess.run([sys.executable, "-m", "tests.ds_worker", "--root", str(world), "--out", str(out), "--config",
                    json.dumps(config)], cwd=REPO, env=_env(), check=True, timeout=600)
    return json.loads((out / "train_log.json").read_text())


def _check_saved_model(out):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out / "model"), use_safetensors=True)
    assert model.config.hidden_size == TINY_MODEL["hidden_size"]
    for name, p in model.named_parameters():
        assert p.numel() > 0 and torch.isfinite(p).all() and p.abs().sum() > 0, name  # complete, not ZeRO placeholders
    assert (out / "model" / "tokenizer.json").is_file()


def _curve(log):
    return [(e["loss"], e["grad_norm"]) for e in log["log_history"] if "loss" in e]


@pytest.mark.slow
@pytest.mark.e2e
def test_zero2_single_process_matches_plain_run(world, tmp_path):
    log = _single(world, tmp_path / "z2", deepspeed=ZERO2)
    assert log["deepspeed_enabled"] and log["deepspeed_zero_stage"] == 2
    assert log["world_size"] == 1 and log["global_step"] == 3
    assert log["effective_batch"] == 8 and log["gradient_accumulation_steps"] == 2
    _check_saved_model(tmp_path / "z2")
    # Same losses and gradient norms as without DeepSpeed: the accumulated loss is scaled once, not twice.
    plain = _single(world, tmp_path / "plain")
    assert not plain["deepspeed_enabled"]
    for (l1, g1), (l2, g2) in zip(_curve(log), _curve(plain), strict=True):
        assert l1 == pytest.approx(l2, rel=1e-4) and g1 == pytest.approx(g2, rel=1e-3)


@pytest.mark.slow
@pytest.mark.e2e
def test_zero3_single_process_saves_full_model(world, tmp_path):
    # loss_impl "chunked" reads lm_head.weight, which ZeRO-3 partitions: train() falls back to logits.
    log = _single(world, tmp_path, deepspeed=ZERO3, loss_impl="chunked")
    assert log["deepspeed_enabled"] and log["deepspeed_zero_stage"] == 3 and log["global_step"] == 3
    assert all(e["loss"] == e["loss"] for e in log["log_history"] if "loss" in e)
    _check_saved_model(tmp_path)
    assert not list(tmp_path.glob(".model*"))  # staging dir of the gathered ZeRO-3 save removed


@pytest.mark.slow
@pytest.mark.e2e
def test_two_ranks_shard_data_and_log_one_mlflow_run(world, tmp_path):
    """deepspeed --num_gpus 2 on CPU: disjoint shards, effective batch = 2 x 2 x 2, one MLflow run."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from derta.cli import create_store

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    create_store(uri)  # before two ranks could race on its schema
    mlflow.set_tracking_uri(uri)
    out = tmp_path / "out"
    config = {"deepspeed": ZERO2, "epochs": 1, "total_batch_size": 8, "per_device_batch_size": 2, "report_to": ["mlflow"]}
    cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(_free_port()), "--module", "tests.ds_worker",
           "--root", str(world), "--out", str(out), "--config", json.dumps(config)]
    subprocess.run(cmd, cwd=REPO, env=_env(MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME="ds-test"), check=True, timeout=600)

    ranks = [json.loads((out / f"ids-rank{r}.json").read_text()) for r in (0, 1)]
    ids = [set(r["ids"]) for r in ranks]
    assert all(len(set(r["ids"])) == len(r["ids"]) for r in ranks)  # each example once per epoch per rank
    assert ids[0].isdisjoint(ids[1])
    assert ids[0] | ids[1] == set(range(N_EXAMPLES))
    for r in ranks:
        assert r["deepspeed_enabled"]
        assert r["world_size"] == 2
        assert r["gradient_accumulation_steps"] == 2
        assert r["effective_batch"] == 8  # per_device 2 x accumulation 2 x 2 ranks = total_batch_size
        assert r["global_step"] == N_EXAMPLES // 8

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ds-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    assert "loss" in runs[0].data.metrics


@pytest.mark.slow
def test_gpu_check_cpu_dry_run(tmp_path):
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--cpu-dry-run"], cwd=REPO,
                         env=_env(TMPDIR=str(tmp_path)), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    line = json.loads(res.stdout.strip().splitlines()[-1])
    assert line["device"] == "cpu" and line["tokens_per_s"] > 0 and line["zero_stage"] == 2
    assert line["peak_gpu_memory_bytes"] is None


def test_gpu_check_fails_clearly_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "no CUDA device" in res.stderr and "--cpu-dry-run" in res.stderr
