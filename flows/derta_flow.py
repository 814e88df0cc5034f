"""Prefect 3 flow ``derta`` (deployment ``full``): the DVC pipeline, stage by stage.

Each task runs one ``dvc.yaml`` stage with ``dvc repro --single-item``, so
Prefect and DVC call the same step code (one implementation per stage) and
DVC's cache decides what is already done: a retried or re-run flow does not
recompute finished stages. Stages run one at a time (parallel ``dvc repro``
in one workspace fails on DVC's lock).

Deployment parameters (profile, variants, attacks, judge) are applied to
``params.yaml`` the way ``dvc exp run -S`` does, before the first stage, so the
change shows in ``dvc params diff``.

Usage (README "Prefect"; docs/operations.md for work pools)::

    prefect server start                      # terminal 1
    python -m flows.derta_flow serve          # terminal 2: serves derta/full
    prefect deployment run derta/full         # terminal 3

or, through a work pool (``prefect.yaml``)::

    prefect work-pool create derta-process --type process
    prefect --no-prompt deploy --name full    # from the checkout: the run's working dir
    prefect worker start --pool derta-process

A run killed with its worker is resumed by running the deployment again: the
stages DVC finished are "cached" (the flow's result and its ``derta-stages``
table artifact say which), and what a killed ``dvc repro`` left in
``.dvc/tmp`` is cleared first (:func:`clear_stale_locks`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task

from derta.io import write_text

ENV = {"DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false"}


def stage_names(workdir: Path, params: dict[str, Any]) -> list[str]:
    """dvc.yaml's stages in order, each foreach stage expanded over its params list.

    ``train_dpo`` is left out unless ``dpo`` is among the evaluated variants
    (it needs the ``vanilla`` model and nothing else reads its output).
    """
    stages = yaml.safe_load((workdir / "dvc.yaml").read_text())["stages"]
    evaluated = (params.get("eval") or {}).get("variants") or []
    out: list[str] = []
    for name, spec in stages.items():
        if "foreach" in spec:
            node: Any = params
            for key in str(spec["foreach"]).strip("${} ").split("."):
                node = node[key]
            out.extend(f"{name}@{v}" for v in node)
        elif name != "train_dpo" or "dpo" in evaluated:
            out.append(name)
    return out


def apply_overrides(workdir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in params.yaml (like ``dvc exp run -S key=value``); atomic write.

    The file is edited round-trip (ruamel.yaml, which DVC itself uses): the
    user's comments, key order, anchors and merge keys (``<<: *full``) survive;
    only the overridden values change. Returns the resulting params as plain data.
    """
    from io import StringIO

    from ruamel.yaml import YAML

    path = workdir / "params.yaml"
    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    rt.width = 4096  # never re-wrap the user's lines
    params = rt.load(path.read_text()) or {}
    _keep_anchors(params)
    changed = False
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        if node.get(leaf) != value:
            node[leaf] = _like(node.get(leaf), value)
            changed = True
    if changed:
        buf = StringIO()
        rt.dump(params, buf)
        write_text(path, buf.getvalue())
    return yaml.safe_load(path.read_text()) or {}


def _keep_anchors(node: Any) -> None:
    """Dump every anchor the user wrote, referenced or not (ruamel drops unreferenced ones)."""
    anchor = getattr(node, "anchor", None)
    if anchor is not None and anchor.value:
        node.yaml_set_anchor(anchor.value, always_dump=True)
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        _keep_anchors(child)


def _like(old: Any, value: Any) -> Any:
    """A new list/mapping value in the flow style (``[a, b]``) of the value it replaces."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(value, list) or isinstance(value, dict):
        new = CommentedSeq(value) if isinstance(value, list) else CommentedMap(value)
        flow = getattr(getattr(old, "fa", None), "flow_style", lambda: None)()
        if flow:
            new.fa.set_flow_style()
        return new
    return value


def check_tracking(uri: str | None) -> None:
    """Fail fast, before any training, when an MLflow server is unreachable."""
    if not uri or not uri.startswith(("http://", "https://")):
        return
    import httpx

    try:
        httpx.get(uri.rstrip("/") + "/health", timeout=5.0)
    except httpx.HTTPError as err:
        raise RuntimeError(f"MLflow tracking server {uri} is unreachable: {err}") from None


def clear_stale_locks(workdir: Path) -> list[str]:
    """Remove what a killed ``dvc repro`` left in ``.dvc/tmp``; return what was removed.

    DVC drops an rwlock entry whose pid is dead by itself (dvc/rwlock.py), and
    its repo lock (``.dvc/tmp/lock``, an fcntl lock) dies with the process.
    Two leftovers it does not handle: an entry whose pid now belongs to another
    process (containers restart pids from 1) and an rwlock file cut short by a
    kill during DVC's in-place rewrite (every later run then fails with
    "RWLock-file ... corrupted"). Touches nothing while the repo lock is held,
    i.e. while a dvc command runs in this workspace.
    """
    import psutil
    import zc.lockfile

    tmp = workdir / ".dvc" / "tmp"
    path = tmp / "rwlock"
    if not path.exists():
        return []
    try:
        guard = zc.lockfile.LockFile(str(tmp / "lock"))
    except zc.lockfile.LockError:
        return []
    try:
        try:
            lock = json.loads(path.read_text(encoding="utf-8") or "{}")
        except (ValueError, UnicodeDecodeError):
            path.unlink()
            return [f"{path} (corrupted)"]

        def live_dvc(info: dict[str, Any]) -> bool:
            try:
                return any("dvc" in part for part in psutil.Process(int(info["pid"])).cmdline())
            except (psutil.Error, KeyError, TypeError, ValueError):
                return False

        removed: list[str] = []
        for mode in ("read", "write"):
            for out, infos in list((lock.get(mode) or {}).items()):
                many = isinstance(infos, list)
                keep = [i for i in (infos if many else [infos]) if live_dvc(i)]
                removed += [f"{mode} {out} (pid {i.get('pid')}: {i.get('cmd')})" for i in (infos if many else [infos]) if i not in keep]
                if not keep:
                    del lock[mode][out]
                else:
                    lock[mode][out] = keep if many else keep[0]
        if removed:
            write_text(path, json.dumps(lock))
        return removed
    finally:
        guard.close()


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
    logger = get_run_logger()
    for item in clear_stale_locks(wd):
        logger.warning("cleared stale DVC lock: %s", item)
    # `variants` names the models to train and evaluate; "dpo" among them adds the DPO baseline.
    trained = [v for v in variants if v != "dpo"] if variants is not None else None
    params = apply_overrides(wd, {"profile": profile, "synthesize.variants": trained, "eval.variants": variants,
                                  "eval.attacks": attacks, "eval.judge": judge})
    done: dict[str, str] = {}
    for stage in stage_names(wd, params):
        done[stage] = run_stage(stage, str(wd))
    from prefect.artifacts import create_table_artifact

    create_table_artifact(key="derta-stages", table=[{"stage": k, "status": v} for k, v in done.items()],
                          description="ran = computed by this run; cached = DVC found it done")
    return done


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        derta_flow.serve(name="full")
    else:
        print(derta_flow())


if __name__ == "__main__":
    main()
