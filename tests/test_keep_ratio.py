"""steps/keep_ratio.py: the RTO keep-ratio ablation (`make keep-ratio`)."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from steps.keep_ratio import main, markdown, with_overrides
from tests.pipeline_helpers import VENV_BIN, env, make_workspace, small_params


def test_overrides_reach_the_active_profile_and_touch_nothing_else():
    params = {"profile": "p", "train": {"rto_keep_ratio": 1.0, "epochs": 2}, "eval": {"split": "eval"},
              "profiles": {"p": {"train": {"rto_keep_ratio": 0.1}}, "q": {"train": {"rto_keep_ratio": 0.5}}}}
    out = with_overrides(params, 0.05, "dev")
    assert out["train"] == {"rto_keep_ratio": 0.05, "epochs": 2} and out["eval"] == {"split": "dev"}
    assert out["profiles"]["p"] == {"train": {"rto_keep_ratio": 0.05}, "eval": {"split": "dev"}}
    assert out["profiles"]["q"] == {"train": {"rto_keep_ratio": 0.5}}
    assert params["train"]["rto_keep_ratio"] == 1.0 and params["profiles"]["p"] == {"train": {"rto_keep_ratio": 0.1}}


def test_markdown_has_a_row_per_model_with_its_ratio():
    row = {"asr": {"pair": 50.0, "completingattack": 10.0}, "asr_detail": {"pair": {"ci95": [30.0, 70.0]}},
           "asr_black_box_avg": 50.0, "asr_white_box_avg": 10.0, "helpfulness": {"miniworld": 60.0},
           "over_refusal": 5.0, "refusal_position": {"share_at_0": 20.0, "median": 7}}
    md = markdown({"variants": {"vanilla": row, "derta-keep0.05": row}}, [0.05], "dev")
    assert "on the `dev` split" in md
    assert "| vanilla | - | 50.0 [30.0–70.0] | 10.0 | 50.0 | 10.0 | 60.0 | 5.0 | 20.0 | 7 |" in md
    assert "| derta-keep0.05 | 0.05 |" in md


def test_bad_ratio_and_missing_pipeline_outputs_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--ratios", "0", "--base", str(tmp_path)])
    assert "(0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--base", str(tmp_path / "nope")])
    assert "make run" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_keep_ratio_trains_and_scores_each_ratio_on_dev(tmp_path):
    ws = make_workspace(tmp_path / "ws", shape=small_params)
    e = env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    p = subprocess.run([str(VENV_BIN / "dvc"), "repro", "train@vanilla", "train@derta"], cwd=ws, env=e, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    p = subprocess.run([str(VENV_BIN / "python"), "-m", "steps.keep_ratio", "--ratios", "0.05", "1"], cwd=ws, env=e,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    report = json.loads((ws / "reports" / "keep_ratio.json").read_text())
    assert sorted(report["variants"]) == ["derta-keep0.05", "derta-keep1", "vanilla"]
    assert {v["split"] for v in report["variants"].values()} == {"dev"}
    logs = {r: json.loads((ws / "keep_ratio" / "models" / f"derta-keep{r}" / "train_log.json").read_text()) for r in ("0.05", "1")}
    used = {r: yaml.safe_load((ws / "keep_ratio" / f"params-derta-keep{r}.yaml").read_text())["train"]["rto_keep_ratio"] for r in logs}
    assert used == {"0.05": 0.05, "1": 1.0}
    assert "| derta-keep0.05 | 0.05 |" in (ws / "reports" / "keep_ratio.md").read_text()
    # a second call reuses every evaluation
    p = subprocess.run([str(VENV_BIN / "python"), "-m", "steps.keep_ratio", "--ratios", "0.05", "1"], cwd=ws, env=e,
                       capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.count("exists, kept") == 3, p.stdout
