"""Every stage's deps hold the code it runs, so that `dvc repro` re-runs a stage when a module it imports changes.

The code a stage runs is read from the source, not listed by hand: the stage's script (``steps/X.py``, from its
``cmd``) and every project module it imports, directly or through another project module, at module level or
inside a function. Two rules keep that set to the code that can change the stage's outputs:

* ``from package import module`` imports that module, not every module the package's ``__init__`` registers
  (``from derta.attacks import codeattack`` runs codeattack, not the other five attacks);
* another stage's script (``steps/synthesize.py`` read by the gate for its config) is a dep for what it
  defines, but what it imports is that stage's code, not this one's. ``steps/_common.py`` is shared, and followed.
"""

from __future__ import annotations

import ast
import functools
import re

import pytest
import yaml

from derta.config import load_params
from derta.stages import render
from tests.pipeline_helpers import REPO

PROJECT = ("derta", "steps")
SHARED_STEPS = {"steps/_common.py"}


def module_file(name: str) -> str | None:
    """``derta.io`` -> ``derta/io.py`` (a package: its ``__init__.py``); None for a name that is not a file."""
    for rel in (name.replace(".", "/") + ".py", name.replace(".", "/") + "/__init__.py"):
        if (REPO / rel).is_file():
            return rel
    return None


def _is_module(name: str) -> bool:
    path = module_file(name)
    return path is not None and not path.endswith("__init__.py")


@functools.cache  # each file is read once, however many stages and profiles reach it
def imports(rel: str) -> frozenset[str]:
    """The project modules the file ``rel`` imports anywhere in it (absolute imports: the project uses no other)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse((REPO / rel).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules = [f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}")]
            out.update(modules)
            if len(modules) < len(node.names):  # a name the package itself defines: its __init__ runs it
                out.add(node.module)
    return frozenset(m for m in out if m.split(".")[0] in PROJECT)


def code_of(script: str) -> set[str]:
    """The files of the stage script ``script`` (``steps.train``) and of every project module it reaches."""
    own = module_file(script)
    seen: set[str] = set()
    todo = [script]
    while todo:
        rel = module_file(todo.pop())
        if rel is None or rel in seen:
            continue
        seen.add(rel)
        if rel.startswith("steps/") and rel != own and rel not in SHARED_STEPS:
            continue  # another stage's script: a dep itself, its imports are its own stage's
        todo.extend(imports(rel))
    return {rel for rel in seen if (REPO / rel).stat().st_size > 0}


def stages(doc: dict) -> dict[str, dict]:
    return {name: stage.get("do", stage) for name, stage in doc["stages"].items()}


def missing_deps(stage: dict) -> list[str]:
    script = re.search(r"\bsteps\.\w+", stage["cmd"])
    assert script, f"no steps.<module> in the command {stage['cmd']!r}"
    deps = [str(d) for d in stage.get("deps", [])]
    covered = lambda rel: any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)  # noqa: E731
    return sorted(rel for rel in code_of(script.group(0)) if not covered(rel))


ROOT = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
PARAMS = load_params(REPO / "params.yaml")


@pytest.mark.parametrize("profile", [None, *sorted(PARAMS["profiles"])])
def test_every_stage_depends_on_the_code_it_runs(profile):
    """The root dvc.yaml, and each profile's pipeline as `derta profile-stages` renders it (its self_answer stage too)."""
    doc = ROOT if profile is None else render(ROOT, PARAMS, profile)
    missing = {name: m for name, stage in stages(doc).items() if (m := missing_deps(stage))}
    assert not missing, f"{'dvc.yaml' if profile is None else profile}: stages whose deps lack code they import: {missing}"


def test_the_import_reader_follows_what_a_stage_runs_and_no_more():
    train = code_of("steps.train")
    assert {"steps/train.py", "derta/train.py", "derta/modeling.py", "derta/io.py", "steps/_common.py"} <= train
    assert "derta/judges/guideline.py" not in train
    source = code_of("steps.source")
    assert {"derta/miniworld.py", "derta/attacks/codeattack.py", "derta/attacks/base.py"} <= source
    assert "derta/attacks/pair.py" not in source  # `from derta.attacks import codeattack` is not every attack
    gate = code_of("steps.gate")
    assert "steps/synthesize.py" in gate
    assert missing_deps({"cmd": "python -m steps.train", "deps": ["steps/train.py"]})  # a short list is caught
