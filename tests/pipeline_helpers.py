"""Shared by the slow pipeline tests: a small copy of the repo to run `dvc repro` in."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SKIP = {"dvc.lock"}  # outputs of the repo's own runs: the small workspace starts fresh

SMALL_WORLD = dict(n_safety_train=60, n_helpful_train=40, n_eval_harmful=12, n_eval_helpful=10, n_dev_harmful=6,
                   n_dev_helpful=6, web_harmful_docs=60, web_chatter_docs=20, web_faq_docs=40, n_entities=30)


def repo_files() -> list[str]:
    out = []
    for args in (["ls-files"], ["ls-files", "--others", "--exclude-standard"]):
        out += subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.splitlines()
    return sorted({f for f in out if f not in SKIP and (REPO / f).is_file()})


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update({"PATH": f"{VENV_BIN}{os.pathsep}{e.get('PATH', '')}", "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false",
              "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
              "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
              "GIT_COMMITTER_EMAIL": "t@example.com"})
    e.update(extra)
    return e


def small_params(params: dict) -> dict:
    """The small profile: a few minutes on 2 CPU cores."""
    params["profile"] = "tiny"
    params["data"]["miniworld"] = dict(SMALL_WORLD)
    params["gate"] = {"duplicate_rate_overrides": {"helpful_train": 0.6, "web": 0.6, "variants": 0.5, "dpo_pairs": 0.2},
                      "max_duplicate_rate": 0.2}
    params["synthesize"].update(n_triples=20, n_helpful=40, variants=["vanilla", "derta"])
    params["eval"]["variants"] = ["vanilla", "derta"]
    # vocab 400 does not make the refusal word one token on this world; " Sorry" is what training uses.
    params["tokenizer"].update(vocab_size=500)  # the refusal word comes from params.yaml `chat`
    params["model"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
    # pretraining resolves TrainConfig.refusal_word too (default "Sorry", two tokens here): see the report.
    params["pretrain"]["train"].update(epochs=1, refusal_word=" Sorry")
    params["train"]["epochs"] = 1
    params["eval"]["attacks"] = {"direct": {}, "completingattack": {}, "prefill": {"units": [1]}, "codeattack": {},
                                 "pair": {"streams": 1, "iterations": 1, "n_questions": 3},
                                 "autodan": {"population": 2, "generations": 1, "n_questions": 3}}
    params["eval"]["generation"]["max_new_tokens"] = 24
    params["profiles"] = {"tiny": {}}
    return params


PAIR_PRETRAIN_EPOCHS = 6


def safety_pair_params(params: dict) -> dict:
    """The default mini-world and models, only vanilla and DeRTa, scored on the ``dev`` split; pretraining
    shortened to PAIR_PRETRAIN_EPOCHS (with the default's 20 the test took 1,343 s on 2026-12-03, with 6 515 s)."""
    params["profile"] = "tiny"
    params["pretrain"]["train"]["epochs"] = PAIR_PRETRAIN_EPOCHS
    params["synthesize"]["variants"] = params["eval"]["variants"] = ["vanilla", "derta"]
    params["eval"]["split"] = "dev"
    params["profiles"] = {"tiny": {}}
    return params


def make_workspace(dest: Path, shape: Callable[[dict], dict] = small_params) -> Path:
    """Copy the repo's source files to ``dest``, reshape params.yaml (default: shrink it), git commit; DVC ready."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in repo_files():
        if f.startswith("runs/"):  # other profiles' pipelines: small_params keeps only `tiny`
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)
    p = dest / "params.yaml"
    p.write_text(yaml.safe_dump(shape(yaml.safe_load(p.read_text())), sort_keys=False))
    e = env()
    run = lambda *a: subprocess.run(list(a), cwd=dest, env=e, check=True, capture_output=True, text=True)  # noqa: E731
    run("git", "init", "-q")
    if not (dest / ".dvc" / "config").exists():
        run(str(VENV_BIN / "dvc"), "init", "-q")
    run(str(VENV_BIN / "dvc"), "config", "core.analytics", "false")
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "small workspace")
    return dest


def init_mlflow_store(uri: str) -> None:
    """Create the SQLite store once up front (two stages creating it at once race on the schema)."""
    subprocess.run([sys.executable, "-m", "derta.cli", "mlflow-store", uri], check=True, env=env(), capture_output=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout}s")


def stop(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    """Stop a server started with start_new_session=True (its whole process group)."""
    import signal

    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=timeout)


def post_retrying(url: str, json: dict, tries: int = 8, timeout: float = 30.0):
    """POST to a local test server, retrying 5xx / connection errors (a loaded SQLite-backed server answers 503)."""
    import httpx

    delay = 0.5
    for attempt in range(tries):
        try:
            r = httpx.post(url, json=json, timeout=timeout)
            if r.status_code < 500:
                r.raise_for_status()
                return r
        except httpx.TransportError:
            if attempt == tries - 1:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 8.0)
    r.raise_for_status()
    return r
