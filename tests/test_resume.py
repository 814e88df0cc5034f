"""Resume after a hard kill: a run SIGKILLed mid-epoch and restarted ends where an uninterrupted run ends.

Tolerance: the logged losses after the resume point equal the uninterrupted
run's within abs 1e-4 (measured: identical on CPU). RTO keep ratio 0.5, so the
collator's keep draws must be restored too (derta.train.DeRTaCollator seeds
each batch from (seed, rank, global_step, micro-batch)).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ds_worker import build_world, examples, tiny_model, tokenizer

REPO = Path(__file__).resolve().parents[1]
CFG = dict(max_steps=14, epochs=3, save_steps=2, save_total_limit=3, total_batch_size=8, per_device_batch_size=4,
           rto_keep_ratio=0.5, learning_rate=1e-3, logging_steps=1, refusal_word=" Sorry", seed=0)
TOL = 1e-4


def _cmd(root, out, sleep):
    return [sys.executable, "-m", "tests.ds_worker", "--root", str(root), "--out", str(out),
            "--config", json.dumps(CFG), "--step-sleep", str(sleep)]


def _losses(log):
    return {e["step"]: e["loss"] for e in log["log_history"] if "loss" in e}


def test_killed_run_resumes_to_same_final_loss(tmp_path):
    import torch

    from derta.train import TrainConfig, train

    root = build_world(tmp_path / "world")
    dist = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {**{k: v for k, v in os.environ.items() if k not in dist}, "TOKENIZERS_PARALLELISM": "false"}

    # Reference: uninterrupted, in this process (1 thread, like the worker).
    torch.set_num_threads(1)
    tok = tokenizer(root)
    ref = train(TrainConfig(**CFG), tiny_model(tok), tok, examples(root, tok), tmp_path / "ref")
    assert ref["global_step"] == 14 and ref["resumed_from"] is None

    # Killed run: SIGKILL once the first complete checkpoint exists (mid-epoch: 10 steps per epoch).
    out = tmp_path / "run"
    err = open(tmp_path / "killed.err", "w")
    proc = subprocess.Popen(_cmd(root, out, 0.4), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file():
        assert proc.poll() is None, "run ended before its first checkpoint: " + (tmp_path / "killed.err").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "train_log.json").exists()

    # Restart the same command: it resumes from the newest complete checkpoint.
    subprocess.run(_cmd(root, out, 0.0), cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = json.loads((out / "train_log.json").read_text())
    assert log["resumed_from"] and Path(log["resumed_from"]).name.startswith("checkpoint-")
    resumed_at = int(Path(log["resumed_from"]).name.split("-")[1])
    assert 2 <= resumed_at < 14
    assert log["global_step"] == 14
    a, b = _losses(ref), _losses(log)
    after = [s for s in b if s > resumed_at]
    assert after and after[-1] == 14
    for s in after:
        assert b[s] == pytest.approx(a[s], abs=TOL), f"step {s}"
