"""Prefect 3 flow ``derta`` (deployment ``full``): the DVC pipeline, stage by stage.

Each task runs one ``dvc.yaml`` stage with ``dvc repro --single-item``, so
Prefect and DVC call the same step code (one implementation per stage) and
DVC's cache decides what is already done: a retried or re-run flow does not
recompute finished stages. Stages run one at a time (parallel ``dvc repro``
in one workspace fails on DVC's lock).

Deployment parameters (profile, variants, attacks, judge) are applied to
``params.yaml`` the way ``dvc exp run -S`` does, before the first stage, so the
change shows in ``dvc params diff``.

Usage (README "Prefect")::

    prefect server start                      # terminal 1
    python -m flows.derta_flow serve          # terminal 2: serves derta/full
    prefect deployment run derta/full         # terminal 3
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task

from derta.io import write_text

ENV = {"DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false"}


def stage_names(workdir: Path, variants: list[str]) -> list[str]:
    """dvc.yaml's stages in order, foreach stages expanded over ``variants``."""
    stages = yaml.safe_load((workdir / "dvc.yaml").read_text())["stages"]
    out: list[str] = []
    for name, spec in stages.items():
        out.extend(f"{name}@{v}" for v in variants) if "foreach" in spec else out.append(name)
    return out


def apply_overrides(workdir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in params.yaml (like ``dvc exp run -S key=value``); atomic write."""
    path = workdir / "params.yaml"
    params = yaml.safe_load(path.read_text()) or {}
    changed = False
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        if node.get(leaf) != value:
            node[leaf] = value
            changed = True
    if changed:
        write_text(path, yaml.safe_dump(params, sort_keys=False))
    return params


def check_tracking(uri: str | None) -> None:
    """Fail fast, before any training, when an MLflow server is unreachable."""
    if not uri or not uri.startswith(("http://", "https://")):
        return
    import httpx

    try:
        httpx.get(uri.rstrip("/") + "/health", timeout=5.0)
    except httpx.HTTPError as err:
        raise RuntimeError(f"MLflow tracking server {uri} is unreachable: {err}") from None


@task(name="dvc-stage")
def run_stage(stage: str, workdir: str) -> str:
    """One DVC stage (no retries: nothing here is network-bound)."""
    env = {**os.environ, **ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro", "--single-item", stage],
                          cwd=workdir, env=env, capture_output=True, text=True)
    logger = get_run_logger()
    logger.info("%s\n%s", stage, proc.stdout[-4000:])
    if proc.returncode:
        raise RuntimeError(f"stage {stage} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return "cached" if "didn't change, skipping" in proc.stdout else "ran"


@flow(name="derta")
def derta_flow(profile: str | None = None, variants: list[str] | None = None, attacks: dict[str, Any] | None = None,
               judge: str | None = None, workdir: str = ".") -> dict[str, str]:
    """Run the DeRTa pipeline: data, gates, pretraining, one training and evaluation per variant, reports, registry."""
    wd = Path(workdir).resolve()
    check_tracking(os.environ.get("MLFLOW_TRACKING_URI"))
    params = apply_overrides(wd, {"profile": profile, "synthesize.variants": variants, "eval.attacks": attacks, "eval.judge": judge})
    done: dict[str, str] = {}
    for stage in stage_names(wd, params["synthesize"]["variants"]):
        done[stage] = run_stage(stage, str(wd))
    return done


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        derta_flow.serve(name="full")
    else:
        print(derta_flow())


if __name__ == "__main__":
    main()
