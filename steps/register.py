"""Stage `register`: log the pipeline run to MLflow and register the DeRTa model.

One parent run per pipeline run, a nested run per variant (params, per-step
losses incl. the MLE and RTO parts, metrics, validation results, reports).
The ``derta`` variant's model (with tokenizer) is registered as
``derta-<profile>``; the promotion gate (derta/tracking.py) gives the new
version the alias ``champion`` only if its mean ASR is not higher than the
current champion's and its helpfulness drop is within
``register.max_helpfulness_drop`` points, else ``candidate``; the decision
and its numbers are version tags, and a model card (summary table, lineage)
is the version's description and the run's ``model_card.md``. Every run
carries lineage tags: git commit, per-output md5s from ``dvc.lock``, profile.
Tracking URI: ``MLFLOW_TRACKING_URI`` (default ``sqlite:///mlflow.db``).
Secrets never reach MLflow: only params from params.yaml are logged, and
params.yaml holds names of environment variables, never keys.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import Field

from derta import tracking
from derta.config import StepConfig, load_params, step_config
from derta.io import write_json
from steps._common import entry, parser

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


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = str(v)[:500]
    return out


def _champion(client: Any, model_name: str, alias: str) -> tuple[dict[str, str] | None, str | None]:
    """The current champion's tags and version, or (None, None)."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None, None
    return dict(mv.tags or {}), str(mv.version)


def run(cfg: RegisterConfig, params: dict[str, Any], profile: str, variants: list[str], models_root: str | Path,
        eval_root: str | Path, reports_dir: str | Path, out_file: str | Path) -> dict[str, Any]:
    import mlflow

    from derta.modeling import load_model

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(cfg.experiment)
    reports = Path(reports_dir)
    summary = json.loads((reports / "summary.json").read_text())
    lineage = tracking.lineage_tags(profile)
    run_params = {k: v for k, v in _flatten(params).items() if not k.startswith("profiles.")}
    result: dict[str, Any] = {"tracking_uri": tracking_uri(), "variants": {}}
    with mlflow.start_run(run_name=f"pipeline-{profile}") as parent:
        mlflow.set_tags(lineage)
        mlflow.log_params(run_params)
        for f in ("summary.json", "ablation.md", "refusal_position.png"):
            if (reports / f).exists():
                mlflow.log_artifact(str(reports / f), artifact_path="reports")
        for p in sorted((reports / "validation").glob("*.json")) if (reports / "validation").exists() else []:
            mlflow.log_artifact(str(p), artifact_path="validation")
            ok = all(e.get("success") for e in json.loads(p.read_text()).values())
            mlflow.log_metric(f"validation.{p.stem}.success", float(ok))
        for name in variants:
            v = summary["variants"].get(name, {})
            with mlflow.start_run(run_name=name, nested=True) as child:
                mlflow.set_tags({"derta.variant": name, **lineage})
                mlflow.log_params(run_params)
                log_path = Path(models_root) / name / "train_log.json"
                if log_path.exists():
                    tlog = json.loads(log_path.read_text())
                    steps = [e for e in tlog.get("log_history", []) if "loss" in e and "step" in e]
                    for e in steps:
                        mlflow.log_metrics({k: float(e[k]) for k in ("loss", "loss_mle", "loss_rto", "learning_rate") if k in e}, step=int(e["step"]))
                    mlflow.log_metrics({k: float(tlog[k]) for k in ("train_loss", "train_runtime_s", "effective_batch") if tlog.get(k) is not None})
                for attack, val in (v.get("asr") or {}).items():
                    if val is not None:
                        mlflow.log_metric(f"asr.{attack}", val)
                for bench, val in (v.get("helpfulness") or {}).items():
                    if val is not None:
                        mlflow.log_metric(f"helpfulness.{bench}", val)
                for key in ("asr_black_box_avg", "asr_white_box_avg"):
                    if v.get(key) is not None:
                        mlflow.log_metric(key, v[key])
                for key, val in (v.get("refusal_position") or {}).items():
                    if val is not None:
                        mlflow.log_metric(f"refusal_position.{key}", float(val))
                metrics_file = Path(eval_root) / name / "metrics.json"
                if metrics_file.exists():
                    mlflow.log_artifact(str(metrics_file), artifact_path="eval")
                result["variants"][name] = child.info.run_id
                if name == cfg.register_variant:
                    result.update(_register(cfg, profile, name, v, summary, lineage, Path(models_root), load_model))
                    result["run_id"] = child.info.run_id
        result["parent_run_id"] = parent.info.run_id
    write_json(out_file, result)
    return result


def _register(cfg: RegisterConfig, profile: str, variant: str, row: dict[str, Any], summary: dict[str, Any],
              lineage: dict[str, str], models_root: Path, load_model: Any) -> dict[str, Any]:
    """Log + register the variant's model in the active run; the promotion gate picks its alias."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    model_name = cfg.model_name.format(profile=profile)
    champ_tags, champ_version = _champion(client, model_name, cfg.alias)
    decision = tracking.decide(row, champ_tags, champ_version, cfg.max_helpfulness_drop)
    model, tok = load_model(models_root / variant / "model")
    info = mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tok}, name="model", task="text-generation",
        pip_requirements=PIP_REQUIREMENTS, registered_model_name=model_name,
    )
    version = str(info.registered_model_version)
    alias = cfg.alias if decision.decision == tracking.CHAMPION else cfg.candidate_alias
    client.set_registered_model_alias(model_name, alias, version)
    tags = {"variant": variant, "profile": profile, **{k.removeprefix("derta."): x for k, x in lineage.items()},
            **decision.tags()}
    for k, x in tags.items():
        client.set_model_version_tag(model_name, version, k, str(x))
    card = tracking.model_card(model_name, version, variant, summary, decision, lineage)
    mlflow.log_text(card, "model_card.md")
    client.update_model_version(model_name, version, description=card)
    mlflow.set_tags({"promotion.decision": decision.decision, "registered_model": f"{model_name}/{version}"})
    return {"model_name": model_name, "version": version, "alias": alias, "promotion": decision.tags()}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--models-root", required=True)
    p.add_argument("--eval-root", required=True)
    p.add_argument("--reports", required=True)
    p.add_argument("--variants", nargs="+", default=None, help="default: params eval.variants")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    params = load_params(a.params)
    profile = a.profile or params.get("profile", "")
    from derta.config import resolve

    variants = a.variants or list(resolve(params, "eval", a.profile).get("variants") or [])
    r = run(step_config(RegisterConfig, params, "register", a.profile), params, profile, variants, a.models_root, a.eval_root, a.reports, a.out)
    print({k: r.get(k) for k in ("model_name", "version", "alias", "parent_run_id")})
    print((r.get("promotion") or {}).get("promotion.reason", ""))


if __name__ == "__main__":
    entry(main)
