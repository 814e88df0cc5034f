"""End to end: `dvc repro` on a small copy of the repo (minutes on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import yaml

from tests.pipeline_helpers import VENV_BIN, env, init_mlflow_store, make_workspace

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _dvc(ws, *args, e, timeout=900):
    t0 = time.monotonic()
    p = subprocess.run([str(VENV_BIN / "dvc"), *args], cwd=ws, env=e, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"dvc {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p.stdout + p.stderr, time.monotonic() - t0


def test_dvc_repro_small(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    init_mlflow_store(uri)
    e = env(MLFLOW_TRACKING_URI=uri, PREFECT_HOME=str(tmp_path / "prefect"))

    out, _ = _dvc(ws, "repro", e=e)
    assert "Running stage 'register'" in out

    summary = json.loads((ws / "reports" / "summary.json").read_text())
    assert summary["profile"] == "tiny"
    assert set(summary["variants"]) == {"vanilla", "derta"}
    for name, v in summary["variants"].items():
        assert {"asr", "helpfulness", "refusal_position", "n"} <= set(v), name
        assert set(v["asr"]) == {"direct", "completingattack", "prefill", "codeattack", "pair", "autodan"}, name
        assert all(x is None or 0 <= x <= 100 for x in v["asr"].values()), name
        assert "miniworld" in v["helpfulness"], name
        assert set(v["refusal_position"]) == {"share_at_0", "median", "share_after_30"}, name
        assert isinstance(v["n"], dict) and v["n"], name
        assert set(v["asr_detail"]) == set(v["asr"]), name
        for attack, d in v["asr_detail"].items():
            assert set(d) == {"asr", "n", "unsafe", "errors", "ci95"} and d["asr"] == v["asr"][attack], (name, attack)
            assert d["n"] == 0 or d["ci95"][0] <= d["asr"] <= d["ci95"][1], (name, attack)
        assert set(v["scoring"]["judges"]) == set(v["asr"]) and v["scoring"]["attack_set_sha256"], name
        assert v["over_refusal_detail"]["n"] == 60 and v["over_refusal"] == v["over_refusal_detail"]["rate"], name
        assert (ws / "eval" / name / "overrefusal.jsonl").is_file(), name
    # Every variant was scored by the same judge on the same attack set.
    assert len({json.dumps(v["scoring"], sort_keys=True) for v in summary["variants"].values()}) == 1
    assert (ws / "reports" / "ablation.md").read_text().strip()
    assert (ws / "reports" / "refusal_position.png").stat().st_size > 0

    reg = json.loads((ws / "reports" / "registry.json").read_text())
    assert reg["model_name"] == "derta-tiny" and reg["alias"] == "champion"
    from mlflow import MlflowClient

    mv = MlflowClient(tracking_uri=uri).get_model_version_by_alias("derta-tiny", "champion")
    assert str(mv.version) == str(reg["version"])

    # Nothing changed: no stage runs, quickly.
    out, dt = _dvc(ws, "repro", e=e)
    assert "Running stage" not in out, out
    assert dt < 15, f"no-op dvc repro took {dt:.1f}s"

    # Dropping a variant from the lists retrains and re-evaluates nothing: each train@<variant> reads its own
    # data file and gate result (reports/validation/variants/<variant>.json), not the gate report of all.
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["synthesize"]["variants"] = params["eval"]["variants"] = ["vanilla"]
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out, _ = _dvc(ws, "repro", e=e)
    assert "Running stage 'synthesize'" in out and "Running stage 'gate_variants'" in out, out
    assert "Stage 'train@vanilla' didn't change" in out and "Running stage 'train@vanilla'" not in out, out
    assert "Running stage 'evaluate@vanilla'" not in out, out
    subprocess.run(["git", "checkout", "params.yaml"], cwd=ws, env=e, check=True, capture_output=True)
