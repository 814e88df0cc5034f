"""Multi-seed runs: aggregation (fast); `make seeds` as queued DVC experiments, two at once (slow)."""

import json
import os
import subprocess
import sys
import time

import pytest

from derta.helpfulness import accuracy_by_kind
from steps.seeds import (
    Pipeline,
    add_helpfulness_by_kind,
    aggregate,
    check_overrides,
    forget,
    markdown,
    mean_summary,
    provenance,
    reusable,
    share_cores,
    supervise,
)
from steps.seeds import main as seeds_main
from tests.pipeline_helpers import (
    REPO,
    VENV_BIN,
    env,
    make_workspace,
)


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


def _helpful_rows(correct_by_kind):
    return "\n".join(json.dumps({"id": f"{k}-{i}", "bench": "miniworld", "kind": k, "correct": c})
                     for k, cs in correct_by_kind.items() for i, c in enumerate(cs)) + "\n"


def test_helpfulness_per_kind_is_read_from_each_variants_helpful_file_for_runs_from_before_the_metric(capsys):
    rows = [json.loads(line) for line in _helpful_rows({"capital": [1, 0, 0, 0], "first": [1, 1], "flag": [0]}).splitlines()]
    assert accuracy_by_kind(rows) == {"capital": 25.0, "first": 100.0, "flag": 0.0}
    assert accuracy_by_kind([{"bench": "gsm8k", "kind": None, "correct": True}]) == {}  # one kind: nothing to split
    # The release's benchmarks are their own kind: helpfulness already holds them.
    assert accuracy_by_kind([{"bench": "gsm8k", "kind": "gsm8k", "correct": True}, {"bench": "mmlu", "kind": "mmlu", "correct": False}]) == {}
    files = {"runs/tiny/eval/vanilla/helpful.jsonl": _helpful_rows({"capital": [1, 1], "last": [0, 1]})}

    def read(path):
        if path not in files:
            raise FileNotFoundError(path)
        return files[path]

    summary = {"variants": {"vanilla": {"asr": {}}, "derta": {"asr": {}}, "rto": {"asr": {}, "helpfulness_by_kind": {"flag": 5.0}}}}
    out = add_helpfulness_by_kind(summary, read, Pipeline("tiny"))
    assert out["variants"]["vanilla"]["helpfulness_by_kind"] == {"capital": 100.0, "last": 50.0}
    assert "helpfulness_by_kind" not in out["variants"]["derta"]
    assert out["variants"]["rto"]["helpfulness_by_kind"] == {"flag": 5.0}  # the evaluation wrote it: kept, not read again
    printed = capsys.readouterr().out
    assert "no helpfulness per kind for derta: runs/tiny/eval/derta/helpful.jsonl" in printed and "rto" not in printed


def test_helpfulness_per_kind_is_averaged_over_seeds():
    per_seed = {s: _summary(10.0, h, 50.0) for s, h in ((0, 60.0), (1, 40.0))}
    per_seed[0]["variants"]["derta"]["helpfulness_by_kind"] = {"capital": 20.0, "first": 100.0}
    per_seed[1]["variants"]["derta"]["helpfulness_by_kind"] = {"capital": 40.0, "first": 40.0}
    agg = aggregate(per_seed)
    assert agg["variants"]["derta"]["helpfulness_by_kind.first"] == {"mean": 70.0, "std": 30.0, "values": [100.0, 40.0]}
    assert mean_summary(agg)["variants"]["derta"]["helpfulness_by_kind"] == {"capital": 30.0, "first": 70.0}
    assert "| helpfulness_by_kind.capital |" in markdown(agg)


def _pair_summary(van_completing, der_completing, van_help, der_help):
    def variant(asr, helpful, at0, median):
        return {"asr": {"completingattack": asr, "codeattack": 0.0}, "helpfulness": {"miniworld": helpful},
                "asr_black_box_avg": 0.0, "asr_white_box_avg": asr, "over_refusal": 0.0, "split": "eval",
                "refusal_position": {"share_at_0": at0, "share_after_30": None, "median": median}}
    return {"variants": {"vanilla": variant(van_completing, van_help, 100.0, 0), "derta": variant(der_completing, der_help, 10.0, 16)}}


def test_findings_read_the_mean_over_seeds():
    # helpfulness: vanilla 70/60/68 (mean 66), DeRTa 60/64/59 (mean 61): within 5 points, though seed 0 alone is not
    agg = aggregate({0: _pair_summary(60.0, 0.0, 70.0, 60.0), 1: _pair_summary(50.0, 5.0, 60.0, 64.0),
                     2: _pair_summary(40.0, 1.0, 68.0, 59.0)})
    mean = mean_summary(agg)
    assert mean["variants"]["vanilla"]["asr"]["completingattack"] == 50.0
    assert mean["variants"]["derta"]["refusal_position"]["median"] == 16.0
    assert mean["variants"]["derta"]["split"] == "eval"
    text = markdown(agg)
    assert "## What the mean over seeds [0, 1, 2] reproduces of the paper on the `eval` split" in text
    assert "- completingattack: reproduced: vanilla 50.0%, DeRTa 2.0%" in text
    assert "- codeattack: **not reproduced**: the attack does not bite" in text
    assert "- Helpfulness (miniworld): reproduced: vanilla 66.0%, DeRTa 61.0%" in text
    assert "- Figure 4, refusal position: reproduced" in text


def test_a_kept_seed_is_reused_only_from_the_same_commit_and_params(tmp_path, capsys):
    here = {"commit": "a" * 40, "params_sha256": "b" * 64}
    kept = tmp_path / "seed-1.json"
    assert reusable(kept, here) is None  # nothing kept
    kept.write_text(json.dumps({"provenance": here, "variants": {}}))
    assert reusable(kept, here) == {"provenance": here, "variants": {}}  # an interrupted run resumes
    assert reusable(kept, {**here, "params_sha256": "c" * 64}) is None  # params changed: run it again
    assert "running that seed again" in capsys.readouterr().out
    kept.write_text(json.dumps({"variants": {}}))  # written before provenance was kept
    assert reusable(kept, here) is None


def test_the_root_pipeline_queues_seed_experiments_on_the_base_seeds():
    root = Pipeline()
    assert root.name(2) == "seed-2"
    assert root.path("reports/summary.json") == "reports/summary.json"
    assert root.exp_run(2) == ["exp", "run", "--queue", "--name", "seed-2", "-S", "data.seed=2", "-S", "synthesize.seed=2",
                               "-S", "train.seed=2"]


def test_a_profile_queues_its_own_pipeline_and_reads_its_own_reports():
    fmt = Pipeline("miniworld-formats")
    assert fmt.name(1) == "miniworld-formats-seed-1"  # beside the root's seed-1, not over it
    assert fmt.path("reports/summary.json") == "reports/miniworld-formats/summary.json"
    assert fmt.path("reports/seeds") == "reports/miniworld-formats/seeds"
    args = fmt.exp_run(1)
    assert args[-1] == "runs/miniworld-formats/dvc.yaml"
    assert args[:5] == ["exp", "run", "--queue", "--name", "miniworld-formats-seed-1"]
    assert "train.seed=1" in args


def test_a_profile_is_checked_before_anything_is_queued(tmp_path, monkeypatch):
    params = tmp_path / "params.yaml"
    params.write_text("profiles:\n  own-seed:\n    train: {seed: 3}\n  fine: {}\n")
    with pytest.raises(SystemExit, match="no profile 'nope'"):
        Pipeline("nope").check(params)
    with pytest.raises(SystemExit, match="sets train.seed itself"):
        Pipeline("own-seed").check(params)
    monkeypatch.chdir(tmp_path)  # runs/fine/dvc.yaml is not there
    with pytest.raises(SystemExit, match="missing or stale: run `python -m derta.cli profile-stages fine`"):
        Pipeline("fine").check(params)
    Pipeline().check(params)  # the root pipeline needs no check


@pytest.mark.parametrize("profile", ["miniworld-formats", "miniworld-formats-dev"])
def test_the_committed_formats_profiles_pass_the_check(profile):
    Pipeline(profile).check()


def test_dvc_queues_a_profile_seed_on_the_profile_pipeline(tmp_path, monkeypatch, capsys):
    """What `make seeds --profile` hands DVC is accepted, and queues that pipeline (nothing runs); an earlier
    attempt is forgotten, and none is not an error."""
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(ws)
    e = env()
    run = lambda *a: subprocess.run(list(a), cwd=ws, env=e, check=True, capture_output=True, text=True)  # noqa: E731
    run(sys.executable, "-m", "derta.cli", "profile-stages", "tiny")
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "tiny's pipeline")
    run(str(VENV_BIN / "dvc"), *Pipeline("tiny").exp_run(4))
    changed = Pipeline("tiny", ("eval.split=dev", "+profiles.tiny.synthesize.short_answer_repeats=3"))
    run(str(VENV_BIN / "dvc"), *changed.exp_run(4))
    queued = run(str(VENV_BIN / "dvc"), "queue", "status").stdout
    assert "tiny-seed-4" in queued and changed.name(4) in queued and "Queued" in queued
    shown = run(str(VENV_BIN / "dvc"), "exp", "show", "--json").stdout
    assert '"split": "dev"' in shown and '"short_answer_repeats": 3' in shown, shown[:2000]
    assert forget(str(VENV_BIN / "dvc"), changed.name(4)) is True
    assert forget(str(VENV_BIN / "dvc"), changed.name(4)) is False
    assert "ERROR" not in capsys.readouterr().out
    queued = run(str(VENV_BIN / "dvc"), "queue", "status").stdout
    assert changed.name(4) not in queued and "tiny-seed-4" in queued
    run(str(VENV_BIN / "dvc"), "queue", "remove", "--all")


def test_overrides_reach_every_seed_under_their_own_names_and_provenance(monkeypatch):
    plain, changed = Pipeline("miniworld-formats"), Pipeline("miniworld-formats", ("eval.split=dev",))
    assert changed.name(1).startswith("miniworld-formats-seed-1-") and changed.name(1) != plain.name(1)
    assert changed.name(1) == Pipeline("miniworld-formats", ("eval.split=dev",)).name(1)
    assert changed.name(1) != Pipeline("miniworld-formats", ("eval.split=eval",)).name(1)
    args = changed.exp_run(1)
    assert args[args.index("eval.split=dev") - 1] == "-S" and "train.seed=1" in args
    for bad in (("train.seed=3",), ("+data.seed=3",), ("eval.split",)):
        with pytest.raises(SystemExit, match="--set takes KEY=VALUE"):
            Pipeline(None, bad)
    with pytest.raises(SystemExit, match="--set needs --out"):
        seeds_main(["--set", "eval.split=dev"])
    monkeypatch.setattr("steps.seeds._git", lambda *a: "c" * 40)
    assert provenance(("eval.split=dev",))["sets"] == ["eval.split=dev"]
    assert "sets" not in provenance()  # the committed seeds' provenance, unchanged
    agg = aggregate({0: {"provenance": {"sets": ["eval.split=dev"]}, **_summary(10.0, 50.0, 1.0)}})
    assert agg["sets"] == ["eval.split=dev"] and "overrides `eval.split=dev`" in markdown(agg)


def test_an_override_that_would_not_take_stops_before_anything_is_queued(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("eval: {split: eval}\nprofiles:\n  a: &a\n    data: {n: 1}\n  b:\n    <<: *a\n  c:\n    data: {n: 1}\n")
    check_overrides(("eval.split=dev", "+profiles.c.data.m=2", "profiles.c.data.n=3"), params)  # they take
    with pytest.raises(SystemExit, match=r"profiles.b.data.m = None, not 2; is that section merged"):
        check_overrides(("+profiles.b.data.m=2",), params)  # DVC writes it nowhere
    with pytest.raises(SystemExit, match="DVC refuses it"):
        check_overrides(("profiles.c.data.m=2",), params)  # a new key needs +
    assert params.read_text().count("m") == 0  # the file itself is never touched


def _fake_queue(*states):
    """A queue whose status walks through ``states`` (the last one repeats), counting worker starts."""
    seen = {"starts": 0, "polls": 0, "workers": []}

    def status(names):
        i = min(seen["polls"], len(states) - 1)
        seen["polls"] += 1
        return dict(states[i])

    def start(n):
        seen["starts"] += 1
        seen["workers"].append(n)

    return seen, start, status


# Every folder of make seeds' results under reports/: a profile's seeds (reports/**/seeds/) and measurements with
# overrides (--out), e.g. reports/miniworld-formats-dev/firmer-pretraining/.
COMMITTED_SEEDS = sorted(p.parent for p in REPO.glob("reports/**/summary.json") if any(p.parent.glob("seed-*.json")))


def test_the_committed_seed_folders_are_all_found():
    assert REPO / "reports" / "miniworld-formats" / "seeds" in COMMITTED_SEEDS
    assert REPO / "reports" / "miniworld-formats" / "seeds-f9fd546" in COMMITTED_SEEDS
    assert REPO / "reports" / "miniworld-formats-dev" / "firmer-pretraining" in COMMITTED_SEEDS
    assert REPO / "reports" / "miniworld-formats-dev" / "roleplay" in COMMITTED_SEEDS
    assert REPO / "reports" / "miniworld-formats-dev" / "roleplay-t100" in COMMITTED_SEEDS
    assert REPO / "reports" / "miniworld-formats-dev" / "code-string-t100" in COMMITTED_SEEDS
    assert REPO / "reports" / "miniworld-formats-dev" / "roleplay-t100-search" in COMMITTED_SEEDS
    assert REPO / "reports" / "miniworld-formats-dev" / "roleplay-t100-whole512" in COMMITTED_SEEDS
    assert REPO / "reports" / "miniworld-formats-dev" / "roleplay-t100-whole512-seed0" in COMMITTED_SEEDS
    assert REPO / "reports" / "miniworld-formats-dev" / "roleplay-t100-whole512-code-string" in COMMITTED_SEEDS
    assert REPO / "reports" / "miniworld-formats-dev" / "cheap-pre3-ft1" in COMMITTED_SEEDS
    assert REPO / "reports" / "miniworld-formats-dev" / "cheap-pre3" in COMMITTED_SEEDS
    assert REPO / "reports" / "miniworld-formats-dev" / "fast-bf16" in COMMITTED_SEEDS
    assert REPO / "reports" / "miniworld-formats-dev" / "fast-bf16-hf-grouped" in COMMITTED_SEEDS
    assert REPO / "reports" / "miniworld-formats-dev" / "fast-bf16-grouped" in COMMITTED_SEEDS
    assert REPO / "reports" / "miniworld-formats-dev" / "fast-bf16-grouped-seed0" in COMMITTED_SEEDS
    assert REPO / "reports" / "miniworld-formats-dev" / "fast-bf16-grouped-seed1" in COMMITTED_SEEDS
    assert REPO / "reports" / "miniworld-formats-dev" / "fast-bf16-grouped-fit-longest-first" in COMMITTED_SEEDS
    assert REPO / "reports" / "miniworld-formats-dev" / "fast-bf16-grouped-fit" in COMMITTED_SEEDS


@pytest.mark.parametrize("folder", COMMITTED_SEEDS, ids=lambda p: str(p.relative_to(REPO)))
def test_a_committed_mean_is_the_mean_of_its_committed_seeds(folder):
    """Each folder's summary.json and summary.md are what steps.seeds makes of the seed-S.json beside them, and
    every seed was run from one commit and params (no hand edit, no seed from another code). A profile's seeds
    (a folder named seeds, read against issue 10's bar) are at least three."""
    per_seed = {int(f.stem.split("-")[1]): json.loads(f.read_text()) for f in folder.glob("seed-*.json")}
    assert len(per_seed) >= (3 if folder.name == "seeds" else 1), f"{folder}: {sorted(per_seed)}"
    assert len({json.dumps(s["provenance"], sort_keys=True) for s in per_seed.values()}) == 1, folder
    agg = aggregate(dict(sorted(per_seed.items())))
    assert json.loads((folder / "summary.json").read_text()) == json.loads(json.dumps(agg)), folder
    assert (folder / "summary.md").read_text() == markdown(agg), folder


def test_experiments_at_once_share_the_cores_unless_the_threads_are_set():
    environ = {}
    assert share_cores(2, environ, cpus=2) == 1 and environ["DERTA_THREADS"] == "1"
    assert share_cores(1, {}, cpus=8) == 8
    assert share_cores(3, {}, cpus=8) == 2
    assert share_cores(4, {}, cpus=2) == 1  # never 0: at least one thread each
    assert share_cores(2, {"DERTA_THREADS": "4"}, cpus=2) == 4  # the caller's choice stands


def test_supervise_returns_when_every_experiment_has_ended():
    seen, start, status = _fake_queue({"seed-0": "Queued", "seed-1": "Queued"}, {"seed-0": "Running", "seed-1": "Running"},
                                      {"seed-0": "Success", "seed-1": "Failed"})
    assert supervise({"seed-0", "seed-1"}, start, status, timeout_s=60, poll_s=0) == {"seed-0": "Success", "seed-1": "Failed"}
    assert seen["starts"] == 1


def test_supervise_restarts_workers_that_left_experiments_queued():
    """treeverse/dvc#10562: the workers exit with experiments still queued; starting them again picks those up."""
    seen, start, status = _fake_queue({"seed-0": "Success", "seed-1": "Queued"}, {"seed-0": "Success", "seed-1": "Queued"},
                                      {"seed-0": "Success", "seed-1": "Running"}, {"seed-0": "Success", "seed-1": "Success"})
    assert supervise({"seed-0", "seed-1"}, start, status, timeout_s=60, poll_s=0, idle_s=0)["seed-1"] == "Success"
    assert seen["starts"] >= 2


def test_supervise_does_not_restart_while_an_experiment_runs():
    seen, start, status = _fake_queue(*[{"seed-0": "Running", "seed-1": "Queued"}] * 5, {"seed-0": "Success", "seed-1": "Success"})
    supervise({"seed-0", "seed-1"}, start, status, timeout_s=60, poll_s=0, idle_s=0)
    assert seen["starts"] == 1


def test_supervise_starts_the_missing_workers_when_fewer_than_jobs_run():
    """Seen here (2026-12-05): with --jobs 2, one worker left after the first seed, so the third seed waited
    queued while the second ran alone. Only the missing worker is started, so no more than ``jobs`` run."""
    seen, start, status = _fake_queue({"s0": "Running", "s1": "Queued", "s2": "Queued"},
                                      {"s0": "Running", "s1": "Running", "s2": "Queued"},
                                      {"s0": "Success", "s1": "Running", "s2": "Running"},
                                      {"s0": "Success", "s1": "Success", "s2": "Success"})
    supervise({"s0", "s1", "s2"}, start, status, jobs=2, timeout_s=60, poll_s=0, idle_s=0)
    assert seen["workers"][:2] == [2, 1]


def test_supervise_gives_up_after_its_timeout_naming_each_status():
    seen, start, status = _fake_queue({"seed-0": "Running"})
    with pytest.raises(SystemExit, match=r"within 0 s: \{'seed-0': 'Running'\}"):
        supervise({"seed-0"}, start, status, timeout_s=0, poll_s=0)


def test_supervise_hands_over_each_experiment_once_as_soon_as_it_has_succeeded():
    seen, start, status = _fake_queue({"seed-0": "Running", "seed-1": "Running"}, {"seed-0": "Success", "seed-1": "Running"},
                                      {"seed-0": "Success", "seed-1": "Running"}, {"seed-0": "Success", "seed-1": "Success"})
    handed = []
    supervise({"seed-0", "seed-1"}, start, status, timeout_s=60, poll_s=0,
              on_success=lambda name: handed.append((name, seen["polls"])))
    assert handed == [("seed-0", 2), ("seed-1", 4)]  # seed-0 at the poll that first saw it done, not at the end


def test_supervise_polls_less_often_the_longer_the_run_goes(monkeypatch):
    """Each poll opens the repository (about half a second of CPU): every 5 s for three hours took 9% of a core."""
    clock, sleeps = {"t": 0.0}, []
    monkeypatch.setattr("steps.seeds.time.monotonic", lambda: clock["t"])
    monkeypatch.setattr("steps.seeds.time.sleep", lambda s: sleeps.append(s) or clock.update(t=clock["t"] + s))
    seen, start, status = _fake_queue(*[{"s0": "Running"}] * 300, {"s0": "Success"})
    supervise({"s0"}, start, status, timeout_s=10**6, poll_s=5, max_poll_s=60)
    assert sleeps[:30] == [5] * 30  # a short run is seen finishing within seconds
    assert sleeps == sorted(sleeps) and sleeps[-1] == 60 and sum(s < 60 for s in sleeps) < 120


def _fake_dvc(tmp_path, monkeypatch, *states):
    """`make seeds` in ``tmp_path`` against a DVC queue whose status walks through ``states`` (the last one
    repeats); returns the dvc commands it ran and the experiments it read."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("data: {seed: 0}\n")
    walk, last, seen = iter(states), {}, {"ran": [], "read": []}
    monkeypatch.setattr("steps.seeds.queue_status", lambda names: last.update(next(walk, last)) or dict(last))
    monkeypatch.setattr("steps.seeds._git", lambda *a: "c" * 40)
    monkeypatch.setattr("steps.seeds._run", lambda *a, **k: seen["ran"].append(a[1:]))
    monkeypatch.setattr("steps.seeds.forget", lambda dvc, name: False)
    monkeypatch.setattr("steps.seeds._print_logs", lambda dvc, names: None)
    monkeypatch.setattr("steps.seeds.create_store", lambda uri: None)
    monkeypatch.setattr("steps.seeds.time.sleep", lambda s: None)
    monkeypatch.setattr("steps.seeds.read_experiment",
                        lambda name, p: seen["read"].append(name) or _summary(40.0, 70.0, 1.0))
    return seen


def test_a_seed_that_fails_loses_none_of_the_seeds_that_finished(tmp_path, monkeypatch, capsys):
    """Seed 0 succeeds while seed 1 is still running, then seed 1 fails: seed 0's file is written, with its
    provenance, so a second `make seeds` runs seed 1 only."""
    monkeypatch.setenv("DERTA_THREADS", "1")
    seen = _fake_dvc(tmp_path, monkeypatch, {"seed-0": "Running", "seed-1": "Running"},
                     {"seed-0": "Success", "seed-1": "Running"}, {"seed-0": "Success", "seed-1": "Failed"})
    read = seen["read"]
    with pytest.raises(SystemExit, match=r"seeds failed: \['seed-1'\] \(kept: seeds \[0\]\)"):
        seeds_main(["--seeds", "0", "1"])
    assert read == ["seed-0"]
    kept = json.loads((tmp_path / "reports" / "seeds" / "seed-0.json").read_text())
    assert kept["provenance"] == provenance() and kept["variants"]["derta"]["asr"]["completingattack"] == 40.0
    assert not (tmp_path / "reports" / "seeds" / "seed-1.json").exists()
    assert reusable(tmp_path / "reports" / "seeds" / "seed-0.json", provenance()) == kept
    assert "seed 0 done" in capsys.readouterr().out


def test_the_seeds_left_to_run_share_the_cores_not_the_jobs_asked_for(tmp_path, monkeypatch):
    """`--jobs 3` with one seed left to run (the others kept) starts one worker and gives it every core."""
    monkeypatch.delenv("DERTA_THREADS", raising=False)
    monkeypatch.setattr("steps.seeds.os.cpu_count", lambda: 4)
    seen = _fake_dvc(tmp_path, monkeypatch, {"seed-0": "Running"}, {"seed-0": "Success"})
    assert seeds_main(["--seeds", "0", "--jobs", "3"]) == 0
    assert ("queue", "start", "--jobs", "1") in seen["ran"]
    assert os.environ["DERTA_THREADS"] == "4"
    monkeypatch.delenv("DERTA_THREADS")


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_make_seeds_queues_experiments_and_leaves_the_workspace_alone(tmp_path):
    """Two seeds of a profile's own pipeline (runs/tiny/dvc.yaml), two at once. The root pipeline differs
    only in the target and the paths (test_the_root_pipeline_queues_seed_experiments_on_the_base_seeds)."""
    ws = make_workspace(tmp_path / "ws")
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # not created here: make seeds creates it before two stages race to
    e = env(MLFLOW_TRACKING_URI=uri, DERTA_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ws))
    for cmd in ([sys.executable, "-m", "derta.cli", "profile-stages", "tiny"], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", "tiny's own pipeline"]):
        subprocess.run(cmd, cwd=ws, env=e, check=True, capture_output=True)
    before = (ws / "params.yaml").read_text()
    root_seeds = {f.name: f.read_bytes() for f in (ws / "reports" / "seeds").glob("*")}  # the committed ones
    cmd = [sys.executable, "-m", "steps.seeds", "--profile", "tiny", "--seeds", "0", "1", "--jobs", "2", "--timeout", "1200"]
    try:
        proc = subprocess.run(cmd, cwd=ws, env=e, capture_output=True, text=True, timeout=1500)
    except subprocess.TimeoutExpired as exc:  # its output is bytes whatever text= says
        pytest.fail(f"make seeds still running after 1500 s:\n{(exc.stdout or b'')[-3000:].decode(errors='replace')}\n"
                    f"{(exc.stderr or b'')[-3000:].decode(errors='replace')}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "] seed 0 done: " in proc.stdout and "] seed 1 done: " in proc.stdout  # each kept as it finished
    seeds = ws / "reports" / "tiny" / "seeds"
    agg = json.loads((seeds / "summary.json").read_text())
    assert agg["seeds"] == [0, 1]
    row = agg["variants"]["derta"]
    assert all(len(v["values"]) == 2 for v in row.values())
    assert {"helpfulness_by_kind.capital", "helpfulness_by_kind.first"} <= set(row)  # read from DVC's cache
    seed0, seed1 = (json.loads((seeds / f"seed-{s}.json").read_text()) for s in (0, 1))
    assert seed0 != seed1  # two seeds, two worlds
    assert (ws / "params.yaml").read_text() == before  # queued experiments leave the user's params alone
    names = subprocess.run([str(sys.executable).rsplit("/", 1)[0] + "/dvc", "exp", "list", "--name-only"], cwd=ws, env=e,
                           capture_output=True, text=True, check=True).stdout.split()
    assert {"tiny-seed-0", "tiny-seed-1"} <= set(names)
    assert {f.name: f.read_bytes() for f in (ws / "reports" / "seeds").glob("*")} == root_seeds  # the root's: untouched


def _kill_everything_under(path):
    """What the end of a session does to a run: every process working in ``path`` is killed, no clean-up."""
    import psutil

    for proc in psutil.process_iter(["pid", "cwd"]):
        if proc.pid != os.getpid() and str(proc.info["cwd"] or "").startswith(str(path)):
            proc.kill()


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_an_experiment_left_running_by_a_killed_run_is_marked_failed_and_removed(tmp_path, monkeypatch, capsys):
    """Seen here (2026-12-06): a session's end killed the queue's workers and their experiments; DVC still showed
    them "Running" with no worker, `dvc exp remove` could not remove them, and `make seeds` queued a second
    attempt of the same name beside each. Now an attempt whose process is gone is marked failed and removed,
    and one whose process runs stops `make seeds` (two runs of one experiment would race)."""
    from steps.seeds import clear_stale, queue_status

    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    e = env()
    dvc = str(VENV_BIN / "dvc")
    run = lambda *a: subprocess.run(list(a), cwd=ws, env=e, check=True, capture_output=True, text=True)  # noqa: E731
    run("git", "init", "-q")
    run(dvc, "init", "-q")
    (ws / "params.yaml").write_text("seed: 0\n")
    (ws / "dvc.yaml").write_text("stages:\n  slow:\n    cmd: python -c \"import time; time.sleep(600)\" > out.txt\n"
                                 "    params: [seed]\n    outs: [out.txt]\n")
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "a stage that runs for ten minutes")
    run(dvc, "exp", "run", "--queue", "--name", "s-1", "-S", "seed=1")
    # not captured: the worker it starts holds the pipes, and reading them would wait for the worker to end
    subprocess.run([dvc, "queue", "start", "--jobs", "1"], cwd=ws, env=e, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):  # queue_status, not `dvc queue status`: asking for the workers takes 20 s when none answer
            if queue_status({"s-1"}) == {"s-1": "Running"}:
                break
            time.sleep(1)
        else:
            pytest.fail(f"never ran: {queue_status({'s-1'})}")
        with pytest.raises(SystemExit, match=r"s-1 is running \(process \d+\)"):
            forget(dvc, "s-1")
    finally:
        _kill_everything_under(ws)
    assert queue_status({"s-1"}) == {"s-1": "Running"}  # what DVC shows after the kill, with no worker left
    assert forget(dvc, "s-1") is True
    assert "s-1 was left running by a run that stopped" in capsys.readouterr().out
    assert queue_status({"s-1"}) == {}
    assert clear_stale("s-1") == 0 and forget(dvc, "s-1") is False
