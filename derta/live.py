"""Live MLflow tracking from inside a training or evaluation stage.

While a stage runs it logs to its own MLflow run, a child of the pipeline's
parent run: per-step losses (a Trainer callback), system metrics, its
datasets as MLflow inputs (digest = their DVC hash) and its run times. The
parent run is opened by the flow (``DERTA_MLFLOW_PARENT_RUN_ID``, passed to
every node) or, under a plain ``dvc repro``, by the first stage that logs
and reused by the later ones of the same ``dvc repro`` process
(``.dvc/tmp/derta-mlflow-parent.json``).

Nothing here writes into a stage's outputs: run times and hosts go to
MLflow only, so two runs of a stage hash alike (:func:`split_timings`).
The store is ``MLFLOW_TRACKING_URI``, by default ``sqlite:///mlflow.db`` in the
working directory (:func:`tracking_uri`, the one place for that default).
The ``register`` stage registers from these runs (:func:`find_stage_run`): it
writes no run of its own.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
PARENT_ENV = "DERTA_MLFLOW_PARENT_RUN_ID"
EXPERIMENT_ENV = "DERTA_MLFLOW_EXPERIMENT"
STATE = Path(".dvc") / "tmp" / "derta-mlflow-parent.json"
# What the HF Trainer logs that differs run to run: kept out of train_log.json.
RUNTIME_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second")
RESPONSES = "responses.jsonl"  # eval/<variant>/ file, logged as the evaluate run's eval/ artifact; re-scoring reads it


def split_timings(summary: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """(``summary`` without run times, the run times): the first goes into DVC-hashed outputs, the second to MLflow."""
    timings: dict[str, float] = {}
    history = []
    for entry in summary.get("log_history") or []:
        timings.update({k: float(entry[k]) for k in RUNTIME_KEYS if entry.get(k) is not None})
        history.append({k: v for k, v in entry.items() if k not in RUNTIME_KEYS})
    clean = {k: v for k, v in summary.items() if k != "train_runtime_s"}
    if "log_history" in summary:
        clean["log_history"] = history
    if summary.get("train_runtime_s") is not None:
        timings["train_runtime_s"] = float(summary["train_runtime_s"])
    return clean, timings


def experiment_name() -> str:
    """The flow's experiment (env), else params.yaml's ``register.experiment``, else ``derta``."""
    if os.environ.get(EXPERIMENT_ENV):
        return os.environ[EXPERIMENT_ENV]
    import yaml

    try:
        return yaml.safe_load(Path("params.yaml").read_text())["register"]["experiment"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return "derta"


DEFAULT_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    """The MLflow store every stage logs to: ``MLFLOW_TRACKING_URI``, else a SQLite file in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _dvc_repro_pid() -> tuple[int, float] | None:
    """The ``dvc repro`` process this stage runs under (pid, start time), if any."""
    import psutil

    try:
        for proc in psutil.Process().parents():
            cmd = " ".join(proc.cmdline())
            if "dvc" in cmd and " repro" in cmd:
                return proc.pid, proc.create_time()
    except psutil.Error:
        return None
    return None


def parent_run_id(client: Any, experiment_id: str, profile: str) -> str:
    """The pipeline's parent run: the flow's, this ``dvc repro``'s, or a new one (remembered for the next stages)."""
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    owner = _dvc_repro_pid()
    if owner and STATE.is_file():
        try:
            state = json.loads(STATE.read_text())
            if tuple(state["owner"]) == owner:
                return state["run_id"]
        except (ValueError, KeyError, TypeError):
            pass
    run = client.create_run(experiment_id, run_name=f"pipeline-{profile}", tags={"derta.opened_by": "first stage"})
    if owner:
        from derta.io import write_text

        write_text(STATE, json.dumps({"owner": list(owner), "run_id": run.info.run_id}))
    return run.info.run_id


def _inputs(datasets: dict[str, str]) -> list[tuple[str, Any]]:
    """MLflow dataset inputs, each digest the DVC hash of the path (an output's md5 in ``dvc.lock``, a file's md5)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    out = []
    for name, path in datasets.items():
        p = Path(path)
        if not p.exists():
            continue
        with warnings.catch_warnings():  # a local path reads as two kinds of source; both are local files
            warnings.simplefilter("ignore")
            out.append((name, MetaDataset(source=resolve_dataset_source(str(p.resolve())), name=name, digest=dvc_hash(p))))
    return out


def dvc_hash(path: Path) -> str | None:
    """DVC's hash of ``path``: the md5 a ``dvc.lock`` (the default pipeline's or a profile's, ``runs/*/dvc.lock``)
    records for it as an output, else a file's md5 (as DVC computes it)."""
    import hashlib

    import yaml

    locks = [lock for lock in (Path("dvc.lock"), *sorted(Path("runs").glob("*/dvc.lock"))) if lock.is_file()]
    stages = [e for lock in locks for e in ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}).values()]
    for entry in stages:
        for out in entry.get("outs") or []:
            if out.get("path") == path.as_posix() and out.get("md5"):
                return out["md5"]
    if path.is_file():
        h = hashlib.md5()  # noqa: S324 - DVC's content hash, not a security use
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    return None


@contextmanager
def stage_run(stage: str, profile: str, params: dict[str, Any] | None = None,
              datasets: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> Iterator[Any]:
    """The stage's MLflow run while it runs (``None`` on ranks other than 0); a child of the pipeline's parent run.

    Tagged ``derta.stage``, ``derta.profile``, ``derta.host``, ``derta.variant`` (the part of ``stage`` after
    ``@``) and ``tags``.
    """
    if int(os.environ.get("RANK", "0")) != 0:  # one run per stage: rank 0's
        yield None
        return
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    experiment = mlflow.set_experiment(experiment_name())
    client = mlflow.MlflowClient()
    parent = parent_run_id(client, experiment.experiment_id, profile)
    with mlflow.start_run(run_name=stage, nested=False, log_system_metrics=True,
                          tags={"mlflow.parentRunId": parent, "derta.stage": stage, "derta.profile": profile,
                                "derta.host": os.uname().nodename, "derta.variant": stage.partition("@")[2],
                                **(tags or {})}) as run:
        try:
            if params:
                mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            for name, dataset in _inputs(datasets or {}):
                mlflow.log_input(dataset, context=name)
        except mlflow.exceptions.MlflowException as err:  # the stage's work matters more than its record
            log.warning("MLflow: params/inputs of %s not logged: %s", stage, err)
        yield run


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log to the active stage run, if there is one (rank 0 inside :func:`stage_run`)."""
    import mlflow

    if mlflow.active_run() is not None and metrics:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def trainer_callback() -> Any:
    """A Trainer callback logging every logged loss (MLE and RTO parts included) to the active run, per step."""
    from transformers import TrainerCallback

    class LiveLosses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - the Trainer's signature
            if state.is_world_process_zero and logs:
                log_metrics({k: v for k, v in logs.items() if isinstance(v, (int, float)) and k not in RUNTIME_KEYS},
                            step=state.global_step)

    return LiveLosses()


def open_parent(params: dict[str, Any]) -> str:
    """The flow's parent run for this pipeline run; its id goes to every stage."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    experiment = (params.get("register") or {}).get("experiment") or "derta"
    os.environ[EXPERIMENT_ENV] = experiment
    exp = mlflow.set_experiment(experiment)
    run = mlflow.MlflowClient().create_run(exp.experiment_id, run_name=f"pipeline-{params.get('profile', '')}",
                                           tags={"derta.opened_by": "flow"})
    os.environ[PARENT_ENV] = run.info.run_id
    return run.info.run_id


def close_parent(run_id: str | None, ok: bool) -> None:
    if run_id:
        import mlflow

        mlflow.MlflowClient().set_terminated(run_id, "FINISHED" if ok else "FAILED")


def find_stage_run(client: Any, experiment_id: str, profile: str, stages: list[str], tags: dict[str, str] | None = None,
                   parent: str | None = None) -> Any:
    """The newest finished run of one of ``stages`` for ``profile`` with ``tags``, or None.

    A run under ``parent`` (this pipeline run's) wins over an older pipeline run's, which is what a stage that
    DVC skipped as unchanged left.
    """
    conds = [f"tags.`derta.profile` = '{profile}'", "attributes.status = 'FINISHED'"]
    conds += [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
    found = [r for stage in stages
             for r in client.search_runs([experiment_id], " and ".join([*conds, f"tags.`derta.stage` = '{stage}'"]),
                                         order_by=["attributes.start_time DESC"], max_results=50)]
    found.sort(key=lambda r: (r.data.tags.get("mlflow.parentRunId") == parent, r.info.start_time), reverse=True)
    return found[0] if found else None


def log_eval(eval_dir: Path, source_dir: str | Path | None, split: str) -> None:
    """An evaluation's ``metrics.json`` and responses (with question text, which re-scoring needs) as ``eval/`` artifacts
    of the active run."""
    import tempfile

    import mlflow

    from derta.io import read_jsonl, write_jsonl

    if mlflow.active_run() is None:
        return
    if (eval_dir / "metrics.json").exists():
        mlflow.log_artifact(str(eval_dir / "metrics.json"), artifact_path="eval")
    if (eval_dir / RESPONSES).exists():
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / RESPONSES
            write_jsonl(out, with_questions(read_jsonl(eval_dir / RESPONSES), source_dir, split))
            mlflow.log_artifact(str(out), artifact_path="eval")


def with_questions(records: list[dict[str, Any]], source_dir: str | Path | None, split: str) -> list[dict[str, Any]]:
    """Response records with ``question`` joined from ``<source>/<split>_harmful.jsonl`` by ``question_id``."""
    from derta.io import read_jsonl

    qfile = Path(source_dir) / f"{split}_harmful.jsonl" if source_dir else None
    if qfile is None or not qfile.exists():
        return records
    text = {r["id"]: r["question"] for r in read_jsonl(qfile, {"id": str, "question": str}, unique_key="id")}
    return [r if "question" in r or r.get("question_id") not in text else {**r, "question": text[r["question_id"]]}
            for r in records]


REPORTS = ("summary.json", "ablation.md", "refusal_position.png")


def log_reports(profile: str, reports: Path) -> str:
    """The report stage's files (``reports/``) and one success metric per validation report, on the parent run."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.MlflowClient()
    parent = parent_run_id(client, mlflow.set_experiment(experiment_name()).experiment_id, profile)
    for f in REPORTS:
        if (reports / f).exists():
            client.log_artifact(parent, str(reports / f), artifact_path="reports")
    for p in sorted((reports / "validation").glob("*.json")) if (reports / "validation").exists() else []:
        client.log_artifact(parent, str(p), artifact_path="validation")
        ok = all(e.get("success") for e in json.loads(p.read_text()).values())  # every suite of the gate report passed
        client.log_metric(parent, f"validation.{p.stem}.success", float(ok))
    return parent

