"""Multi-seed runs: aggregation (fast); `make seeds` as queued DVC experiments, two at once (slow)."""

import json
import subprocess
import sys

import pytest

from steps.seeds import aggregate, markdown
from tests.pipeline_helpers import env, init_mlflow_store, make_workspace


def _summary(asr, helpful, at0):
    return {"variants": {"derta": {"asr": {"completingattack": asr}, "helpfulness": {"miniworld": helpful},
                                   "refusal_position": {"share_at_0": at0, "share_after_30": None}}}}


def test_aggregate_mean_and_spread():
    agg = aggregate({0: _summary(10.0, 5.0, 50.0), 1: _summary(20.0, 7.0, 40.0), 2: _summary(30.0, 6.0, 45.0)})
    row = agg["variants"]["derta"]
    assert row["asr.completingattack"]["mean"] == 20.0
    assert row["asr.completingattack"]["std"] == 8.16  # pstdev(10, 20, 30)
    assert row["helpfulness.miniworld"]["values"] == [5.0, 7.0, 6.0]
    assert "refusal_position.share_after_30" not in row  # None values are skipped
    assert "20.0 ± 8.2" in markdown(agg)


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_make_seeds_queues_experiments_and_leaves_the_workspace_alone(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    init_mlflow_store(uri)
    before = (ws / "params.yaml").read_text()
    e = env(MLFLOW_TRACKING_URI=uri, DERTA_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ws))
    proc = subprocess.run([sys.executable, "-m", "steps.seeds", "--seeds", "0", "1", "--jobs", "2"], cwd=ws, env=e,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    agg = json.loads((ws / "reports" / "seeds" / "summary.json").read_text())
    assert agg["seeds"] == [0, 1]
    row = agg["variants"]["derta"]
    assert all(len(v["values"]) == 2 for v in row.values())
    seed0, seed1 = (json.loads((ws / "reports" / "seeds" / f"seed-{s}.json").read_text()) for s in (0, 1))
    assert seed0 != seed1  # two seeds, two worlds
    assert (ws / "params.yaml").read_text() == before  # queued experiments leave the user's params alone
    names = subprocess.run([str(sys.executable).rsplit("/", 1)[0] + "/dvc", "exp", "list", "--name-only"], cwd=ws, env=e,
                           capture_output=True, text=True, check=True).stdout.split()
    assert {"seed-0", "seed-1"} <= set(names)
