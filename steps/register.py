"""Stage `register`: register the DeRTa model from the pipeline's MLflow runs, through the promotion gate.

It writes no run of its own. Training and evaluation logged their runs while
they ran (derta/live.py): each a child of the pipeline's parent run, the
evaluation's with the model's DVC hash (``derta.model_md5``) and its
responses. ``register`` finds the ``register_variant``'s training and
evaluation runs (:func:`stage_runs`), logs its model (with tokenizer) into
the training run and registers it as ``derta-<profile>``; the promotion gate
(derta/tracking.py) gives the new version the alias ``champion`` only if its
mean ASR is not higher than the current champion's and its helpfulness drop
is within ``register.max_helpfulness_drop`` points, else ``candidate``. ASR
is compared only on one scale: a champion scored by other judges is re-scored
from its stored responses (``eval/responses.jsonl`` of its evaluation run)
with the new version's judges, or, when that is impossible, the new version
is ``incomparable`` (alias ``candidate``). The decision, its numbers, the
version's ``scoring.*`` tags, its runs and its lineage (git commit,
per-output md5s from ``dvc.lock``, profile) are version tags; a model card
is the version's description. The parent run gets the lineage tags and the
profile's params, and is closed. Tracking URI: ``MLFLOW_TRACKING_URI``
(default ``sqlite:///mlflow.db``, derta.live.tracking_uri). Secrets never
reach MLflow: only params from params.yaml are logged, and params.yaml holds
names of environment variables, never keys.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field

from derta import live, tracking
from derta.config import StepConfig, load_params, step_config
from derta.errors import ConfigError
from derta.io import read_jsonl, write_json
from steps._common import entry, parser

RESPONSES = live.RESPONSES
EVAL_RUN_TAG = "eval_run_id"  # version tag: the evaluation run whose responses re-scoring reads
PIP_REQUIREMENTS = ["torch==2.13.0", "transformers==5.24.0", "tokenizers==0.23.3", "safetensors"]


class RegisterConfig(StepConfig):
    """MLflow experiment, registry and promotion-gate settings."""

    experiment: str = Field("derta", description="MLflow experiment name.")
    register_variant: str = Field("derta", description="Variant whose model is registered.")
    model_name: str = Field("derta-{profile}", description="Registered model name; {profile} is filled in.")
    alias: str = Field("champion", description="Alias of the version that passed the promotion gate.")
    candidate_alias: str = Field("candidate", description="Alias of a new version the gate did not promote.")
    max_helpfulness_drop: float = Field(
        5.0, ge=0, description="Promotion gate: max drop in mean helpfulness (points) vs the champion; "
                               "mean ASR must also not be higher (derta/tracking.py).")
    reference_variant: str = Field(
        "base", description="Promotion gate: the run's untouched model, if evaluated; a version that over-refuses or "
                            "loses helpfulness against it stays candidate (derta.tracking.against_reference).")
    max_over_refusal_rise: float = Field(
        20.0, ge=0, description="Promotion gate: max over-refusal rise (points) vs reference_variant.")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = str(v)[:500]
    return out


def _champion(client: Any, model_name: str, alias: str) -> Any:
    """The current champion's ModelVersion, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def run(cfg: RegisterConfig, params: dict[str, Any], profile: str, variants: list[str], models_root: str | Path,
        reports_dir: str | Path, out_file: str | Path, lock: str | Path = "dvc.lock") -> dict[str, Any]:
    """Register ``cfg.register_variant`` from its pipeline runs; tag and close the parent run. Writes ``out_file``."""
    import mlflow
    from mlflow.entities import Param, RunTag

    mlflow.set_tracking_uri(live.tracking_uri())
    client = mlflow.MlflowClient()
    experiment = mlflow.set_experiment(cfg.experiment)
    # The pipeline's parent run: the flow's, or the one this `dvc repro`'s first stage opened (derta/live.py).
    parent_id = live.parent_run_id(client, experiment.experiment_id, profile)
    summary = json.loads((Path(reports_dir) / "summary.json").read_text())
    lineage = tracking.lineage_tags(profile, lock=lock)
    runs = {name: stage_runs(client, experiment.experiment_id, profile, name, Path(models_root) / name, parent_id)
            for name in variants}
    result: dict[str, Any] = {"tracking_uri": live.tracking_uri(), "parent_run_id": parent_id,
                              "variants": {n: {k: (r.info.run_id if r else None) for k, r in rs.items()} for n, rs in runs.items()}}
    name = cfg.register_variant
    if name in runs:
        if runs[name]["evaluate"] is None:
            raise ConfigError(f"register: no finished MLflow run of evaluate@{name} (profile {profile or '-'}) evaluated "
                              f"{Path(models_root) / name} as dvc.lock records it, in experiment {cfg.experiment} at "
                              f"{live.tracking_uri()}: run `dvc repro -f evaluate@{name}` against this store")
        row = summary["variants"].get(name, {})
        result.update(_register(cfg, params, profile, name, row, summary, lineage, Path(models_root), runs[name]))
    client.log_batch(parent_id, params=[Param(k, x) for k, x in _flatten(profile_params(params, profile)).items()],
                     tags=[RunTag(k, x) for k, x in lineage.items()])
    client.set_terminated(parent_id, "FINISHED")
    write_json(out_file, result)
    return result


def stage_runs(client: Any, experiment_id: str, profile: str, variant: str, model_dir: Path, parent: str) -> dict[str, Any]:
    """The variant's training run and the evaluation run of its model as ``dvc.lock`` records it (None where absent).

    The evaluation is matched by the model's DVC hash; the training run is the newest that started before it.
    """
    md5 = live.dvc_hash(model_dir)
    evaluation = live.find_stage_run(client, experiment_id, profile, [f"evaluate@{variant}"],
                                     {"derta.model_md5": md5} if md5 else None, parent)
    training = live.find_stage_run(client, experiment_id, profile, [f"train@{variant}", f"train_dpo@{variant}"],
                                   parent=evaluation.data.tags.get("mlflow.parentRunId") if evaluation else parent)
    if training and evaluation and training.info.start_time > evaluation.info.start_time:
        training = None  # trained after this evaluation: another model
    return {"train": training, "evaluate": evaluation}


def profile_params(params: dict[str, Any], profile: str) -> dict[str, Any]:
    """Every params.yaml section as ``profile`` resolves it (what its stages ran with), ``profiles`` left out."""
    from derta.config import resolve

    return {k: resolve(params, k, profile or None) if isinstance(v, dict) else v for k, v in params.items() if k != "profiles"}


def _register(cfg: RegisterConfig, params: dict[str, Any], profile: str, variant: str, row: dict[str, Any],
              summary: dict[str, Any], lineage: dict[str, str], models_root: Path, runs: dict[str, Any]) -> dict[str, Any]:
    """Log the variant's model into its training run (else its evaluation run) and register it; the gate picks its alias."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    model_name = cfg.model_name.format(profile=profile)
    decision = tracking.against_reference(promotion_gate(client, cfg, params, profile, model_name, row), row,
                                          summary["variants"].get(cfg.reference_variant), cfg.reference_variant,
                                          cfg.max_over_refusal_rise)
    source = runs["train"] or runs["evaluate"]
    with mlflow.start_run(run_id=source.info.run_id):
        version = _log_model(models_root / variant / "model", model_name)
        alias = cfg.alias if decision.decision == tracking.CHAMPION else cfg.candidate_alias
        card = tracking.model_card(model_name, version, variant, summary, decision, lineage)
        mlflow.log_text(card, "model_card.md")
        mlflow.set_tags({"promotion.decision": decision.decision, "registered_model": f"{model_name}/{version}"})
    client.set_terminated(source.info.run_id, source.info.status, end_time=source.info.end_time)  # the run's own end
    client.set_registered_model_alias(model_name, alias, version)
    tags = {"variant": variant, "profile": profile, **{k.removeprefix("derta."): x for k, x in lineage.items()},
            **tracking.scoring_tags(row.get("scoring")), **decision.tags(),
            EVAL_RUN_TAG: runs["evaluate"].info.run_id}
    for k, x in tags.items():
        client.set_model_version_tag(model_name, version, k, str(x))
    client.update_model_version(model_name, version, description=card)
    return {"model_name": model_name, "version": version, "alias": alias, "promotion": decision.tags(),
            "run_id": source.info.run_id}


def _log_model(model_dir: Path, model_name: str) -> str:
    """Log the model + tokenizer (transformers flavour, artifact ``model``) and register it; the new version."""
    import mlflow

    from derta.modeling import load_model

    model, tok = load_model(model_dir)
    info = mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tok}, name="model", task="text-generation",
        pip_requirements=PIP_REQUIREMENTS, registered_model_name=model_name,
    )
    return str(info.registered_model_version)


def download_model(uri: str, dst: Path) -> Path:
    """A registered version (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) as one Hugging Face dir under ``dst``.

    :func:`_log_model` (transformers flavour) stores the weights under
    ``model/`` and the tokenizer under ``components/tokenizer/``; both are
    linked into ``dst/hf``. Raises ConfigError for an unknown model, alias or
    version, or an artifact without saved weights.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from derta.errors import ConfigError

    try:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst / "artifact"),
                                                        tracking_uri=live.tracking_uri(), registry_uri=live.tracking_uri()))
    except MlflowException as err:
        raise ConfigError(f"{uri}: {err.message.splitlines()[0]} "
                          "(registry: MLFLOW_TRACKING_URI, default sqlite:///mlflow.db)") from None
    weights, tokenizer = root / "model", root / "components" / "tokenizer"
    if not (weights / "config.json").is_file():
        raise ConfigError(f"{uri}: no saved transformers weights (model/config.json) in the registered artifact")
    hf = dst / "hf"
    hf.mkdir(parents=True)
    for f in [*weights.iterdir(), *(tokenizer.iterdir() if tokenizer.is_dir() else [])]:
        if not (hf / f.name).exists():
            (hf / f.name).symlink_to(f.resolve())
    return hf


def promotion_gate(client: Any, cfg: RegisterConfig, params: dict[str, Any], profile: str, model_name: str,
                   row: dict[str, Any]) -> tracking.Promotion:
    """The gate's decision for a new version with summary row ``row`` against the current champion."""
    mv = _champion(client, model_name, cfg.alias)
    if mv is None:
        return tracking.decide(row, None, None, cfg.max_helpfulness_drop)

    def rescorer() -> dict[str, float | None]:
        judges = version_judges((row.get("scoring") or {}).get("judges") or {}, params, profile)
        return tracking.rescore(champion_responses(client, (mv.tags or {}).get(EVAL_RUN_TAG) or mv.run_id), judges)

    return tracking.decide(row, dict(mv.tags or {}), str(mv.version), cfg.max_helpfulness_drop, rescorer)


def champion_responses(client: Any, run_id: str | None) -> list[dict[str, Any]]:
    """The response records stored with a champion's evaluation run (``eval/responses.jsonl``); Incomparable if none."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        raise tracking.Incomparable("the champion has no run with stored responses")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, f"eval/{RESPONSES}", tmp)
        except (MlflowException, OSError):
            raise tracking.Incomparable(f"the champion's run has no stored responses (eval/{RESPONSES})") from None
        return read_jsonl(path)


def version_judges(judges: dict[str, dict[str, str]], params: dict[str, Any], profile: str) -> dict[str, Any]:
    """attack -> the judge that scored this version, rebuilt from params ``eval`` and checked by fingerprint."""
    from derta.config import resolve
    from derta.errors import ConfigError
    from derta.judges import get_judge

    from derta.miniworld import data_slots

    ev = resolve(params, "eval", profile or None)
    slots = data_slots(resolve(params, "data", profile or None))  # evaluate gives them to judges that read them
    configs = [ev.get("judge_config") or {}, {}]  # the default judge's config; per-attack overrides get {}
    configs += [{**c, "slots": slots} for c in configs] if slots else []
    out = {}
    for attack, fp in judges.items():
        for c in configs:
            try:
                judge = get_judge(fp["judge"], c)
            except ConfigError:
                continue
            if judge.fingerprint() == fp:
                out[attack] = judge
                break
        else:
            raise tracking.Incomparable(f"this version's judge for {attack} ({fp['judge']}@{fp['judge_version']}, "
                                        f"config {fp['judge_config_sha256']}) cannot be rebuilt from params eval")
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--models-root", required=True)
    p.add_argument("--reports", required=True)
    p.add_argument("--variants", nargs="+", default=None, help="default: params eval.variants")
    p.add_argument("--out", required=True)
    p.add_argument("--lock", default="dvc.lock", help="the pipeline's dvc.lock (a profile's own: runs/<profile>/dvc.lock)")
    a = p.parse_args()
    params = load_params(a.params)
    profile = a.profile or params.get("profile", "")
    from derta.config import resolve

    variants = a.variants or list(resolve(params, "eval", a.profile).get("variants") or [])
    r = run(step_config(RegisterConfig, params, "register", a.profile), params, profile, variants, a.models_root,
            a.reports, a.out, a.lock)
    print({k: r.get(k) for k in ("model_name", "version", "alias", "parent_run_id")})
    print((r.get("promotion") or {}).get("promotion.reason", ""))


if __name__ == "__main__":
    entry(main)
