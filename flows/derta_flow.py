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
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from derta import live, node
from derta.node import ENV, clear_stale_locks  # noqa: F401 - clear_stale_locks: the flow's, kept importable here
from derta.io import write_text



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
               judge: str | None = None, workdir: str = ".", nodes: str | None = None, max_parallel: int = 2,
               remote: str | None = None, attempts: int = 3) -> dict[str, str]:
    """Run the DeRTa pipeline: data, gates, pretraining, one training and evaluation per variant, reports, registry.

    ``nodes`` (a deployment, ``derta-stage/stage``) fans the stages out to the
    workers of its pool, at most ``max_parallel`` at once, through the DVC
    ``remote`` (default: the checkout's default remote); a stage whose node
    dies is sent again, up to ``attempts`` times. Without ``nodes`` every stage
    runs here, one after another.
    """
    wd = Path(workdir).resolve()
    check_tracking(os.environ.get("MLFLOW_TRACKING_URI"))
    logger = get_run_logger()
    if nodes:
        logger.info("DVC remote: %s", node.check_remote(wd, remote))  # before anything runs
    for item in clear_stale_locks(wd):
        logger.warning("cleared stale DVC lock: %s", item)
    # `variants` names the models to train and evaluate; "dpo" among them adds the DPO baseline.
    trained = [v for v in variants if v != "dpo"] if variants is not None else None
    params = apply_overrides(wd, {"profile": profile, "synthesize.variants": trained, "eval.variants": variants,
                                  "eval.attacks": attacks, "eval.judge": judge})
    names = stage_names(wd, params)
    parent = live.open_parent(params)  # every stage's live MLflow run is its child (env, here and on the nodes)
    ok = False
    try:
        if nodes:
            env = {**HEARTBEAT_ENV, **{k: os.environ[k] for k in (live.PARENT_ENV, live.EXPERIMENT_ENV) if k in os.environ}}
            done = fan_out.with_options(task_runner=ThreadPoolTaskRunner(max_workers=max(1, max_parallel)))(
                str(wd), names, nodes, remote, attempts, env)
        else:
            done = {stage: run_stage(stage, str(wd)) for stage in names}
        ok = True
    finally:
        live.close_parent(parent, ok)
    from prefect.artifacts import create_table_artifact

    create_table_artifact(key="derta-stages", table=[{"stage": k, "status": v} for k, v in done.items()],
                          description="ran = computed by this run; cached = DVC found it done")
    return done


# ---------------------------------------------------------------- fan-out across nodes

@flow(name="derta-stage")
def derta_stage(stage: str, files: dict[str, str], uncached: dict[str, dict[str, str]] | None = None,
                commit: str | None = None, remote: str | None = None) -> str:
    """One DVC stage on the node whose worker runs this (its checkout: ``derta.node.enter_checkout``).

    The stage's ``dvc.lock`` entry and uncached outputs go back to the
    calling flow as this run's ``derta-stage-result`` artifact.
    """
    from prefect.artifacts import create_table_artifact

    result = node.run_stage(Path.cwd(), stage, files, uncached or {}, commit=commit, remote=remote)
    get_run_logger().info("%s on %s: %s\n%s", stage, Path.cwd(), result["status"], result.pop("log"))
    create_table_artifact(key=RESULT_KEY, table=[{"stage": stage, "status": result["status"], "checkout": str(Path.cwd()),
                                                  "result": json.dumps(result)}],
                          description="the stage's dvc.lock entry and uncached outputs (read by the derta flow)")
    return result["status"]


RESULT_KEY = "derta-stage-result"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED", "CANCELLING")


def _stage_result(flow_run_id: Any) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                                                                    key=ArtifactFilterKey(any_=[RESULT_KEY])))
    if not arts:
        raise RuntimeError(f"flow run {flow_run_id} completed without its {RESULT_KEY} artifact")
    data = arts[0].data
    rows = json.loads(data) if isinstance(data, str) else data
    return json.loads(rows[0]["result"])


@task(name="node-stage", cache_policy=NO_CACHE)
def node_stage(stage: str, run: dict[str, Any], upstream: list[dict[str, Any]]) -> dict[str, Any]:
    """Send one stage to a node (deployment ``run["nodes"]``); again when its node dies (run state CRASHED).

    Returns what this stage and every stage before it produced: lock entries, uncached outputs, statuses.
    """
    from prefect.deployments import run_deployment

    acc: dict[str, Any] = {"entries": {}, "uncached": {}, "status": {}}
    for up in upstream:
        for key in acc:
            acc[key].update(up[key])
    files = {**run["files"], "dvc.lock": node.lock_text({**run["lock"], **acc["entries"]})}
    params = {"stage": stage, "files": files, "uncached": {**run["uncached"], **acc["uncached"]}, "commit": run["commit"],
              "remote": run["remote"]}
    logger = get_run_logger()
    for attempt in range(1, run["attempts"] + 1):
        fr = follow(run_deployment(run["nodes"], parameters=params, timeout=0, job_variables={"env": run["env"]},
                                   flow_run_name=f"{stage} (attempt {attempt})").id)
        state = fr.state.type.value if fr.state else "UNKNOWN"
        if state == "COMPLETED":
            result = _stage_result(fr.id)
            acc["entries"][stage], acc["status"][stage] = result["entry"], result["status"]
            acc["uncached"].update(result["uncached"])
            return acc
        if state != "CRASHED":
            raise RuntimeError(f"stage {stage}: flow run {fr.name} ({fr.id}) ended {state}: {fr.state.message if fr.state else ''}")
        logger.warning("stage %s: its node died (flow run %s crashed); sending it again (attempt %d of %d)",
                       stage, fr.id, attempt + 1, run["attempts"])
    raise RuntimeError(f"stage {stage}: every one of {run['attempts']} attempts crashed")


@flow(name="derta-fan-out")
def fan_out(workdir: str, names: list[str], nodes: str, remote: str | None, attempts: int,
            env: dict[str, str]) -> dict[str, str]:
    """The stages on the nodes, each as soon as the stages it reads are done; the results merged here."""
    wd = Path(workdir)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *CODE], cwd=wd, capture_output=True, text=True).stdout
    if dirty.strip():
        raise RuntimeError(f"{wd}: uncommitted code ({dirty.split()[1]} ...): nodes run the committed code; commit first")
    run = {"nodes": nodes, "remote": remote, "attempts": attempts, "env": env, "commit": node.head_commit(wd), "lock": node.read_lock(wd),
           "files": {f: (wd / f).read_text() for f in ("dvc.yaml", "params.yaml")},
           # the uncached outputs this checkout has (from an earlier run): an unchanged stage finds its own and skips
           "uncached": node.pack(wd, node.uncached_outs(wd, *names))}
    upstream = node.plan(wd, names)
    futures: dict[str, Any] = {}
    for stage in names:  # dvc.yaml's order is a topological one (plan() checks every upstream came first)
        if any(u not in futures for u in upstream[stage]):
            raise RuntimeError(f"dvc.yaml: stage {stage} comes before a stage it reads ({upstream[stage]})")
        futures[stage] = node_stage.submit(stage, run, [futures[u] for u in upstream[stage]])
    results = [f.result() for f in futures.values()]
    merged: dict[str, Any] = {"entries": {}, "uncached": {}, "status": {}}
    for r in results:
        for key in merged:
            merged[key].update(r[key])
    node.write_lock(wd, merged["entries"])
    node.unpack(wd, merged["uncached"])
    node.dvc(wd, "pull", *(["--remote", remote] if remote else []), *names)  # the run's outputs, into this checkout
    return {stage: merged["status"][stage] for stage in names}


# Code every stage runs; a node checks out the run's commit, so these must be committed.
CODE = ("steps", "derta", "flows", "dvc.yaml")
# A stage run sends a heartbeat event every 30 s; one that sent none for 90 s while RUNNING lost its node.
HEARTBEAT_ENV = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
ZOMBIE_AFTER_S = 90.0
PENDING_AFTER_S = 900.0  # a GPU node may pull a large image first


def follow(flow_run_id: Any, poll_s: float = 5.0, zombie_after_s: float = ZOMBIE_AFTER_S,
           pending_after_s: float = PENDING_AFTER_S) -> Any:
    """Wait for a stage run to end; one whose node died is set CRASHED: RUNNING with no heartbeat for
    ``zombie_after_s``, or PENDING (taken by a worker, never started) for ``pending_after_s``.

    Only the runs this flow started are watched, so nothing else in the
    workspace is touched (a blanket automation would crash any quiet run).
    """
    import time
    from datetime import datetime, timezone

    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        while True:
            fr = client.read_flow_run(flow_run_id)
            if fr.state and fr.state.is_final():
                return fr
            # RUNNING: its heartbeats; PENDING (a worker took it, its process never started): how long it has waited.
            limit = zombie_after_s if fr.state and fr.state.is_running() else pending_after_s
            if fr.state and (fr.state.is_running() or fr.state.is_pending()):
                since = (last_heartbeat(client, flow_run_id) if fr.state.is_running() else None) or fr.state.timestamp
                quiet = (datetime.now(timezone.utc) - since).total_seconds() if since else 0.0
                if quiet > limit:
                    client.set_flow_run_state(flow_run_id, Crashed(message=f"no sign of life for {quiet:.0f} s "
                                                                           f"({fr.state.type.value}): its node died"), force=True)
                    continue
            time.sleep(poll_s)


def last_heartbeat(client: Any, flow_run_id: Any) -> Any:
    """When the flow run last sent a heartbeat event (None if never)."""
    from datetime import datetime

    r = client.request("POST", "/events/filter", json={
        "filter": {"event": {"name": ["prefect.flow-run.heartbeat"]}, "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}},
        "limit": 5})
    times = [datetime.fromisoformat(e["occurred"].replace("Z", "+00:00")) for e in r.json().get("events", [])]
    return max(times) if times else None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        derta_flow.serve(name="full")
    else:
        print(derta_flow())


if __name__ == "__main__":
    main()
