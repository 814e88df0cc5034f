"""`launch` (params.yaml) starts the training stages; docs/paper-scale.md names only keys that exist.

The stages are rendered by DVC itself (``Repo(...).index``) from copies of the
repo's dvc.yaml and params.yaml in a scratch DVC repo, so nothing is written here.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
# Keys of the DeepSpeed configs the doc explains (`stage3_gather_16bit_weights_on_model_save: true`): not params.
DS_KEYS = {k for f in (REPO / "configs" / "deepspeed").glob("*.json") for k in re.findall(r'"(\w+)"\s*:', f.read_text())}
TRAIN_STAGES = ("train@", "train_dpo")


def _commands(tmp_path: Path, launch: str | None = None) -> dict[str, str]:
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True).close()
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    params = dict(PARAMS) if launch is None else {**PARAMS, "launch": launch}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with Repo(str(tmp_path)) as repo:
        return {s.name: s.cmd for s in repo.index.stages}


def test_default_launch_renders_the_locked_commands(tmp_path):
    assert PARAMS["launch"] == "python -m"
    cmds = _commands(tmp_path)
    train = {k: v for k, v in cmds.items() if k.startswith(TRAIN_STAGES)}
    assert {f"train@{v}" for v in PARAMS["synthesize"]["variants"]} | {"train_dpo"} == set(train)
    assert cmds["train@derta"].startswith("python -m steps.train --data data/variants/derta.jsonl")
    assert cmds["train_dpo"].startswith("python -m steps.dpo --pairs")
    # Byte-identical to the committed lock: the default launch re-runs nothing.
    locked = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    for name, cmd in train.items():
        if name in locked:
            assert locked[name]["cmd"] == cmd, name


def test_launch_prefixes_only_the_training_stages(tmp_path):
    launch = "torchrun --nproc_per_node 8 -m"
    cmds = _commands(tmp_path, launch)
    for name, cmd in cmds.items():
        if name.startswith(TRAIN_STAGES):
            assert cmd.startswith(launch + " steps."), (name, cmd)
        else:
            assert cmd.startswith("python -m steps."), (name, cmd)
    assert cmds["train@derta"] == f"{launch} steps.train --data data/variants/derta.jsonl --base models/base --out models/derta"


def _has_key(dotted: str) -> bool:
    """``dotted`` exists in params.yaml, at the top level or inside some profile."""
    for root in [PARAMS, *(PARAMS.get("profiles") or {}).values()]:
        node = root
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return True
    return False


def _doc_keys(text: str) -> set[str]:
    keys = set(re.findall(r"-S '?([A-Za-z_][\w.]*)=", text))          # dvc exp run -S key=value
    keys |= set(re.findall(r"\$\{([A-Za-z_][\w.]*)\}", text))         # ${key} in stage commands
    keys |= set(re.findall(r"`([A-Za-z_]\w*): ", text)) - DS_KEYS    # `key: value`
    dotted = re.findall(r"`([a-z_]\w*(?:\.[a-z_]\w*)+)`", text)        # `section.key`
    keys |= {k for k in dotted if k.split(".")[0] in PARAMS and not k.endswith((".py", ".json", ".md"))}
    return keys


def test_paper_scale_doc_names_only_existing_params():
    keys = _doc_keys((REPO / "docs" / "paper-scale.md").read_text())
    assert {"launch", "profile", "model.path", "train.deepspeed"} <= keys  # the extraction still sees the doc
    assert sorted(k for k in keys if not _has_key(k)) == []


@pytest.mark.parametrize("doc, missing", [("dvc exp run -S 'launch=deepspeed --module'", "launch"),
                                          ("`${launch} steps.train`", "launch"),
                                          ("set `train.no_such_key`", "train.no_such_key")])
def test_doc_key_check_catches_a_missing_key(doc, missing, monkeypatch):
    monkeypatch.delitem(PARAMS, "launch", raising=False)  # params.yaml before the key existed
    assert missing in _doc_keys(doc) and not _has_key(missing)
