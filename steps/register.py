"""Stage `register`: log the pipeline run to MLflow and register the DeRTa model.

One parent run per pipeline run, a nested run per variant (params, per-step
losses incl. the MLE and RTO parts, metrics, validation results, reports).
The ``derta`` variant's model (with tokenizer) is registered as
``derta-<profile>``; the new version gets the alias ``champion``.
Tracking URI: ``MLFLOW_TRACKING_URI`` (default ``sqlite:///mlflow.db``).
Secrets never reach MLflow: only params from params.yaml are logged, and
params.yaml holds names of environment variables, never keys.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from pydantic import Field

from derta.config import StepConfig, load_params, step_config
from derta.io import write_json
from steps._common import entry, parser

PIP_REQUIREMENTS = ["torch==2.13.0", "transformers==5.24.0", "tokenizers==0.23.3", "safetensors"]


class RegisterConfig(StepConfig):
    """MLflow experiment and registry settings."""

    experiment: str = Field("derta", description="MLflow experiment name.")
    register_variant: str = Field("derta", description="Variant whose model is registered.")
    model_name: str = Field("derta-{profile}", description="Registered model name; {profile} is filled in.")
    alias: str = Field("champion", description="Alias given to the new version.")


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


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(cfg: RegisterConfig, params: dict[str, Any], profile: str, variants: list[str], models_root: str | Path,
        eval_root: str | Path, reports_dir: str | Path, out_file: str | Path) -> dict[str, Any]:
    import mlflow
    from mlflow import MlflowClient

    from derta.modeling import load_model

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(cfg.experiment)
    reports = Path(reports_dir)
    summary = json.loads((reports / "summary.json").read_text())
    lineage = {"git_commit": _git_commit(), "profile": profile}
    if Path("dvc.lock").exists():
        lineage["dvc_lock_sha256"] = __import__("hashlib").sha256(Path("dvc.lock").read_bytes()).hexdigest()
    result: dict[str, Any] = {"tracking_uri": tracking_uri(), "variants": {}}
    with mlflow.start_run(run_name=f"pipeline-{profile}") as parent:
        mlflow.set_tags({f"derta.{k}": v for k, v in lineage.items()})
        mlflow.log_params({k: v for k, v in _flatten(params).items() if not k.startswith("profiles.")})
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
                mlflow.set_tags({"derta.variant": name, **{f"derta.{k}": x for k, x in lineage.items()}})
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
                    model, tok = load_model(Path(models_root) / name / "model")
                    model_name = cfg.model_name.format(profile=profile)
                    info = mlflow.transformers.log_model(
                        transformers_model={"model": model, "tokenizer": tok}, name="model", task="text-generation",
                        pip_requirements=PIP_REQUIREMENTS, registered_model_name=model_name,
                    )
                    client = MlflowClient()
                    version = info.registered_model_version
                    client.set_registered_model_alias(model_name, cfg.alias, version)
                    for k, x in {"variant": name, "profile": profile, **lineage,
                                 "asr_mean": _mean_asr(v)}.items():
                        client.set_model_version_tag(model_name, version, k, str(x))
                    result.update(model_name=model_name, version=str(version), alias=cfg.alias, run_id=child.info.run_id)
        result["parent_run_id"] = parent.info.run_id
    write_json(out_file, result)
    return result


def _mean_asr(v: dict[str, Any]) -> float | None:
    vals = [x for x in (v.get("asr") or {}).values() if x is not None]
    return round(sum(vals) / len(vals), 2) if vals else None


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--models-root", required=True)
    p.add_argument("--eval-root", required=True)
    p.add_argument("--reports", required=True)
    p.add_argument("--variants", nargs="+", default=None, help="default: params synthesize.variants")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    params = load_params(a.params)
    profile = a.profile or params.get("profile", "")
    from derta.config import resolve

    variants = a.variants or list(resolve(params, "synthesize", a.profile).get("variants") or [])
    r = run(step_config(RegisterConfig, params, "register", a.profile), params, profile, variants, a.models_root, a.eval_root, a.reports, a.out)
    print({k: r.get(k) for k in ("model_name", "version", "alias", "parent_run_id")})


if __name__ == "__main__":
    entry(main)
