"""derta.stages: a profile's pipeline is the root dvc.yaml under its own paths, params and lock."""

import copy
import json
import re
import shutil
import subprocess

import pytest
import yaml

from derta.config import load_params
from derta.errors import ConfigError
from derta.stages import render, render_text, stages_path
from tests.pipeline_helpers import REPO

PROFILE = "smollm2-135m"


@pytest.fixture(scope="module")
def root():
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml")


def _paths(doc):
    for stage in doc["stages"].values():
        body = stage.get("do", stage)
        for key in ("deps", "outs", "metrics", "plots"):
            for item in body.get(key, []):
                yield key, next(iter(item)) if isinstance(item, dict) else item


COMMITTED = sorted(p.parent.name for p in (REPO / "runs").glob("*/dvc.yaml"))


def test_the_real_model_profiles_have_their_pipelines():
    assert {"smollm2-135m", "smollm2-135m-ci"} <= set(COMMITTED)


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_profile_pipeline_is_current(name):
    path = REPO / stages_path(name)
    assert path.read_text(encoding="utf-8") == render_text(name, REPO / "dvc.yaml", REPO / "params.yaml"), (
        f"{path} is stale: run `derta profile-stages {name}`")


def test_profile_outputs_never_touch_the_default_profiles(root, params):
    doc = render(root, params, PROFILE)
    root_paths = {p for _, p in _paths(root)}
    outs = [p for key, p in _paths(doc) if key != "deps"]
    assert outs and all(p.startswith((f"runs/{PROFILE}/", f"reports/{PROFILE}")) for p in outs), outs
    for out in outs:  # no output is, holds or sits inside a path of the default pipeline
        assert not any(out == r or out.startswith(r.rstrip("/") + "/") or r.startswith(out + "/") for r in root_paths), out
    for name, stage in doc["stages"].items():  # no command names a path of the default pipeline
        cmd = stage.get("do", stage)["cmd"].replace(f"reports/{PROFILE}", "")
        assert not re.search(r"(?<![\w./-])(data|models|eval|reports)(?=$|[\s/])", cmd), (name, cmd)
    code = [p for key, p in _paths(doc) if key == "deps" and not p.startswith(("runs/", "reports/"))]
    assert code and all(p.startswith(("steps/", "derta/")) for p in code), code


def test_commands_params_and_variants_are_the_profiles(root, params):
    doc = render(root, params, PROFILE)
    stages = doc["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        assert body["wdir"] == "../.." and body["cmd"].endswith(f"--profile {PROFILE}"), name
        keys = body.get("params", [])
        assert not {"profile", "profiles", f"profiles.{PROFILE}"} & set(keys), name
        for i, key in enumerate(keys):  # an override follows the base key it overrides
            if key.startswith("profiles."):
                assert keys[i - 1] == key.removeprefix(f"profiles.{PROFILE}."), (name, key)
    assert "profiles.smollm2-135m.train" in stages["train"]["do"]["params"]
    assert "profiles.smollm2-135m.train" not in stages["evaluate"]["do"]["params"]
    assert stages["train"]["foreach"] == ["vanilla", "derta"]
    assert stages["evaluate"]["foreach"] == ["base", "vanilla", "derta"]
    assert "train_dpo" not in stages  # dpo is not evaluated: nothing would read it
    # the release fallback's helpful data: the base model's own answers, fed to synthesis and its gate
    assert "self_answer" in stages and "--helpful runs/smollm2-135m/data/self_answer/helpful.jsonl" in stages["synthesize"]["cmd"]
    assert "runs/smollm2-135m/data/self_answer/helpful.jsonl" in stages["gate_variants"]["deps"]


def test_unknown_profile_and_foreach(root, params):
    with pytest.raises(ConfigError, match="unknown profile"):
        render(root, params, "nope")
    bad = copy.deepcopy(root)
    bad["stages"]["train"]["foreach"] = "${other.list}"
    with pytest.raises(ConfigError, match="foreach"):
        render(bad, params, PROFILE)


def _num(node):
    """dvc.lock writes 5e-05 (YAML 1.2), which PyYAML (1.1) reads back as a string: compare as numbers."""
    if isinstance(node, dict):
        return {k: _num(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_num(v) for v in node]
    if isinstance(node, str):
        try:
            return float(node)
        except ValueError:
            return node
    return node


def test_editing_one_profile_changes_no_param_of_another(params):
    """What `dvc status` compares for params: the values each stage's lock entry recorded. Editing the
    real-model profile leaves every value the default pipeline's dvc.lock recorded unchanged."""
    from derta.config import section

    lock = yaml.safe_load((REPO / "dvc.lock").read_text(encoding="utf-8"))
    edited = copy.deepcopy(params)
    edited["profiles"][PROFILE]["train"]["learning_rate"] = 1.0
    edited["profiles"][PROFILE]["eval"]["max_helpful"] = 7
    for name, entry in lock["stages"].items():
        for key, value in (entry.get("params") or {}).get("params.yaml", {}).items():
            parent, _, leaf = key.rpartition(".")
            now = section(edited, parent).get(leaf) if parent else edited.get(key)
            assert _num(now) == _num(value), f"stage {name}: params.yaml:{key} would change"


def _copy_repo(dest):
    """The repo's files and its committed locks, without outputs: a copy `dvc status` can read."""
    from tests.pipeline_helpers import env, repo_files

    for f in [*repo_files(), "dvc.lock"]:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)
    subprocess.run(["git", "init", "-q"], cwd=dest, env=env(), check=True)


def _changed_code_or_params(workdir, pipeline):
    """`dvc status --json PIPELINE`'s changes other than absent data: a changed param, or a changed dep that is
    code rather than another stage's output. Outputs are absent from a copy, so 'deleted' is all a current stage
    may report."""
    from tests.pipeline_helpers import VENV_BIN, env

    out = subprocess.run([str(VENV_BIN / "dvc"), "status", "--json", pipeline], cwd=workdir, env=env(), check=True,
                         capture_output=True, text=True).stdout
    status = json.loads(out)
    lock = yaml.safe_load((workdir / pipeline).with_name("dvc.lock").read_text())["stages"]
    data = {o["path"] for e in lock.values() for o in e.get("outs", [])}  # other stages' outputs: absent from the copy
    is_data = lambda path: any(path == d or path.startswith(d + "/") or d.startswith(path + "/") for d in data)  # noqa: E731
    changed = {}
    for stage, changes in status.items():
        for change in (c for c in changes if isinstance(c, dict)):
            for kind, what in change.items():
                if kind == "changed params":
                    changed.setdefault(stage, []).append(what)
                elif kind == "changed deps":
                    changed.setdefault(stage, []).extend(d for d in what if not is_data(d))
    assert status, f"dvc status {pipeline}: no stage reported, not even absent data"
    return {stage: what for stage, what in changed.items() if what}


def test_dvc_status_after_editing_a_profile_shows_no_default_stage_changed(tmp_path):
    """The real thing: the committed dvc.lock, `dvc status --json`, a profile's learning rate and eval edited (round-trip,
    as a user would). Every stage reports its absent data; none a param or code change."""
    from flows.derta_flow import apply_overrides

    _copy_repo(tmp_path)
    apply_overrides(tmp_path, {f"profiles.{PROFILE}.train.learning_rate": 1.0, f"profiles.{PROFILE}.eval.max_helpful": 7})
    assert "learning_rate: 1.0" in (tmp_path / "params.yaml").read_text()
    changed = _changed_code_or_params(tmp_path, "dvc.yaml")
    assert not changed, changed


# A profile whose committed results (reports/NAME/, runs/NAME/dvc.lock) are knowingly older than the code, and why.
LAGGING: dict[str, str] = {
    "miniworld-formats": "derta/train.py, which its pretrain and train stages read, gained train.sampling with its "
                         "LengthBatchSampler and token_norm (only under group_by_length; random by default: the "
                         "batches and every model unchanged, as make run showed for the root lock) and a longer bf16 description after the "
                         "run, then derta/findings.py the line on vanilla's plain refusals (its report's other lines unchanged) and "
                         "train.py a not-None check on the grouped sampler and, with dpo.py, a warning for bf16 on a CPU without bf16 "
                         "instructions (fp32 here: no output changes); its three eval seeds took 6 h 45 min on 2 "
                         "cores, so it is not re-run for that",
    "smollm2-135m": "code its stages read changed after its run without changing what they compute: derta/miniworld.py "
                    "gained the role-play grammar and code_encoding (a release source never reads them), "
                    "derta/validate.py was split into short functions (the root's validation reports byte-identical), "
                    "CodeAttack gained the list and string encodings (its stack prompts are byte-identical), PAIR the "
                    "judge: guideline option (off) and the "
                    "evaluation writes helpfulness_by_kind (empty for the release's benchmarks), and the source stage "
                    "now depends on derta/attacks/codeattack.py and selfcipher.py (the mini-world's renderers); "
                    "derta/loss.py, derta/train.py, derta/dpo.py and the guideline judge were split into short functions (the judge's "
                    "verdicts on judge-dev byte-identical), PAIR's modes typed as Literal, and pretraining gained "
                    "pretrain.packing (concat by default, blocks unchanged; a real base model is not pretrained), AutoDAN "
                    "the init option (autodan by default, its templates unchanged), and the log-likelihood that AutoDAN's "
                    "fitness reads puts the continuation after chat.response_sep (SmolLM2's is empty: its scores "
                    "unchanged), and the joins of a prompt and a response moved into derta.chat (response, "
                    "started_response; no output changes), and every stage's deps now list each module its script imports "
                    "(tests/test_dvc_deps.py), which this lock predates, and derta/train.py gained train.sampling (random by default), "
                    "and derta/findings.py the line on vanilla's plain refusals (a report line, no metric), and train.py "
                    "and dpo.py the warning for bf16 on a CPU without bf16 instructions (no output changes); make real "
                    "re-runs the pipeline (47 min on 2 cores)",
}
LOCKED = sorted(p.parent.name for p in (REPO / "runs").glob("*/dvc.lock"))


@pytest.mark.parametrize("name", LOCKED)
def test_committed_profile_results_were_made_by_this_code_and_params(name, tmp_path):
    """A profile's committed lock (and so the reports the README quotes) matches today's code and params, as the
    root dvc.lock does: `dvc status` shows no changed param or code dep."""
    if name in LAGGING:
        pytest.skip(f"profile {name}: {LAGGING[name]}")
    _copy_repo(tmp_path)
    changed = _changed_code_or_params(tmp_path, str(stages_path(name)))
    assert not changed, f"runs/{name}/dvc.lock is stale: run `dvc repro {stages_path(name)}` and commit its lock and reports: {changed}"


def test_every_lagging_profile_has_a_committed_lock():
    assert set(LAGGING) <= set(LOCKED)
