"""Stage `register`: log the pipeline run to MLflow and register the DeRTa model.

One parent run per pipeline run, a nested run per variant (params, per-step
losses incl. the MLE and RTO parts, metrics, validation results, reports).
The ``derta`` variant's model (with tokenizer) is registered as
``derta-<profile>``; the promotion gate (derta/tracking.py) gives the new
version the alias ``champion`` only if its mean ASR is not higher than the
current champion's and its helpfulness drop is within
``register.max_helpfulness_drop`` points, else ``candidate``. ASR is compared
only on one scale: a champion scored by other judges is re-scored from its
stored responses (``eval/responses.jsonl`` of its run) with the new version's
judges, or, when that is impossible, the new version is ``incomparable``
(alias ``candidate``). The decision, its numbers and the version's
``scoring.*`` tags are version tags, and a model card (summary table, lineage)
is the version's description and the run's ``model_card.md``. Every run
carries lineage tags: git commit, per-output md5s from ``dvc.lock``, profile.
Tracking URI: ``MLFLOW_TRACKING_URI`` (default ``sqlite:///mlflow.db``).
Secrets never reach MLflow: only params from params.yaml are logged, and
params.yaml holds names of environment variables, never keys.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field

from derta import live, tracking
from derta.config import StepConfig, load_params, step_config
from derta.io import read_jsonl, write_json, write_jsonl
from steps._common import entry, parser

RESPONSES = "responses.jsonl"  # eval/<variant>/ file logged as the run's eval/ artifact; re-scoring reads it
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


def _champion(client: Any, model_name: str, alias: str) -> Any:
    """The current champion's ModelVersion, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def run(cfg: RegisterConfig, params: dict[str, Any], profile: str, variants: list[str], models_root: str | Path,
        eval_root: str | Path, reports_dir: str | Path, out_file: str | Path,
        source_dir: str | Path | None = None, lock: str | Path = "dvc.lock") -> dict[str, Any]:
    """Log the pipeline run (parent + one nested run per variant) and register ``cfg.register_variant``.

    ``source_dir`` (the validated source) lets the stored responses carry their
    question text, which re-scoring a champion needs (derta/tracking.py).
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    experiment = mlflow.set_experiment(cfg.experiment)
    # The pipeline's parent run: the flow's, or the one this `dvc repro`'s first stage opened (derta/live.py).
    parent_id = live.parent_run_id(mlflow.MlflowClient(), experiment.experiment_id, profile)
    reports = Path(reports_dir)
    summary = json.loads((reports / "summary.json").read_text())
    lineage = tracking.lineage_tags(profile, lock=lock)
    run_params = _flatten(profile_params(params, profile))
    result: dict[str, Any] = {"tracking_uri": tracking_uri(), "variants": {}}
    with mlflow.start_run(run_id=parent_id) as parent:
        _log_parent(reports, lineage, run_params)
        for name in variants:
            row = summary["variants"].get(name, {})
            with mlflow.start_run(run_name=name, nested=True) as child:
                _log_variant(name, row, lineage, run_params, Path(models_root) / name, Path(eval_root) / name, source_dir)
                result["variants"][name] = child.info.run_id
                if name == cfg.register_variant:
                    result.update(_register(cfg, params, profile, name, row, summary, lineage, Path(models_root)))
                    result["run_id"] = child.info.run_id
        result["parent_run_id"] = parent.info.run_id
    write_json(out_file, result)
    return result


def profile_params(params: dict[str, Any], profile: str) -> dict[str, Any]:
    """Every params.yaml section as ``profile`` resolves it (what its stages ran with), ``profiles`` left out."""
    from derta.config import resolve

    return {k: resolve(params, k, profile or None) if isinstance(v, dict) else v for k, v in params.items() if k != "profiles"}


def _log_parent(reports: Path, lineage: dict[str, str], run_params: dict[str, str]) -> None:
    """Parent run: lineage, params, the reports and one success metric per validation report."""
    import mlflow

    mlflow.set_tags(lineage)
    mlflow.log_params(run_params)
    for f in ("summary.json", "ablation.md", "refusal_position.png"):
        if (reports / f).exists():
            mlflow.log_artifact(str(reports / f), artifact_path="reports")
    for p in sorted((reports / "validation").glob("*.json")) if (reports / "validation").exists() else []:
        mlflow.log_artifact(str(p), artifact_path="validation")
        ok = all(e.get("success") for e in json.loads(p.read_text()).values())
        mlflow.log_metric(f"validation.{p.stem}.success", float(ok))


def _log_variant(name: str, row: dict[str, Any], lineage: dict[str, str], run_params: dict[str, str], model_dir: Path,
                 eval_dir: Path, source_dir: str | Path | None) -> None:
    """One variant's nested run: tags (lineage, scoring), params, training losses, scores, eval artifacts."""
    import mlflow

    mlflow.set_tags({"derta.variant": name, **lineage, **tracking.scoring_tags(row.get("scoring"))})
    mlflow.log_params(run_params)
    _log_training(model_dir / "train_log.json")
    _log_scores(row)
    _log_eval(eval_dir, source_dir, row.get("split"))


def _log_training(log_path: Path) -> None:
    """Per-step losses (incl. the MLE and RTO parts) and run totals from ``train_log.json``."""
    import mlflow

    if not log_path.exists():
        return
    tlog = json.loads(log_path.read_text())
    for e in (e for e in tlog.get("log_history", []) if "loss" in e and "step" in e):
        mlflow.log_metrics({k: float(e[k]) for k in ("loss", "loss_mle", "loss_rto", "learning_rate") if k in e}, step=int(e["step"]))
    mlflow.log_metrics({k: float(tlog[k]) for k in ("train_loss", "train_runtime_s", "effective_batch") if tlog.get(k) is not None})


def _log_scores(row: dict[str, Any]) -> None:
    """A ``summary.json`` row as metrics: ASR per attack, helpfulness, box averages, refusal position."""
    import mlflow

    metrics: dict[str, float] = {}
    for prefix in ("asr", "helpfulness", "refusal_position"):
        metrics.update({f"{prefix}.{k}": float(x) for k, x in (row.get(prefix) or {}).items() if x is not None})
    metrics.update({k: row[k] for k in ("asr_black_box_avg", "asr_white_box_avg") if row.get(k) is not None})
    if metrics:
        mlflow.log_metrics(metrics)


def _log_eval(eval_dir: Path, source_dir: str | Path | None, split: str | None) -> None:
    """``eval/metrics.json`` and ``eval/responses.jsonl`` (with question text when ``source_dir`` is known)."""
    import mlflow

    metrics_file = eval_dir / "metrics.json"
    if metrics_file.exists():
        mlflow.log_artifact(str(metrics_file), artifact_path="eval")
        split = split or json.loads(metrics_file.read_text()).get("split")
    responses = eval_dir / RESPONSES
    if not responses.exists():
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / RESPONSES
        write_jsonl(out, with_questions(read_jsonl(responses), source_dir, split or "eval"))
        mlflow.log_artifact(str(out), artifact_path="eval")


def with_questions(records: list[dict[str, Any]], source_dir: str | Path | None, split: str) -> list[dict[str, Any]]:
    """Response records with ``question`` joined from ``<source>/<split>_harmful.jsonl`` by ``question_id``."""
    qfile = Path(source_dir) / f"{split}_harmful.jsonl" if source_dir else None
    if qfile is None or not qfile.exists():
        return records
    text = {r["id"]: r["question"] for r in read_jsonl(qfile, {"id": str, "question": str}, unique_key="id")}
    return [r if "question" in r or r.get("question_id") not in text else {**r, "question": text[r["question_id"]]}
            for r in records]


def _register(cfg: RegisterConfig, params: dict[str, Any], profile: str, variant: str, row: dict[str, Any],
              summary: dict[str, Any], lineage: dict[str, str], models_root: Path) -> dict[str, Any]:
    """Log + register the variant's model in the active run; the promotion gate picks its alias."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    model_name = cfg.model_name.format(profile=profile)
    decision = tracking.against_reference(promotion_gate(client, cfg, params, profile, model_name, row), row,
                                          summary["variants"].get(cfg.reference_variant), cfg.reference_variant,
                                          cfg.max_over_refusal_rise)
    version = _log_model(models_root / variant / "model", model_name)
    alias = cfg.alias if decision.decision == tracking.CHAMPION else cfg.candidate_alias
    client.set_registered_model_alias(model_name, alias, version)
    tags = {"variant": variant, "profile": profile, **{k.removeprefix("derta."): x for k, x in lineage.items()},
            **tracking.scoring_tags(row.get("scoring")), **decision.tags()}
    for k, x in tags.items():
        client.set_model_version_tag(model_name, version, k, str(x))
    card = tracking.model_card(model_name, version, variant, summary, decision, lineage)
    mlflow.log_text(card, "model_card.md")
    client.update_model_version(model_name, version, description=card)
    mlflow.set_tags({"promotion.decision": decision.decision, "registered_model": f"{model_name}/{version}"})
    return {"model_name": model_name, "version": version, "alias": alias, "promotion": decision.tags()}


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
                                                        tracking_uri=tracking_uri(), registry_uri=tracking_uri()))
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
        return tracking.rescore(champion_responses(client, mv.run_id), judges)

    return tracking.decide(row, dict(mv.tags or {}), str(mv.version), cfg.max_helpfulness_drop, rescorer)


def champion_responses(client: Any, run_id: str | None) -> list[dict[str, Any]]:
    """The response records stored with a champion's run (``eval/responses.jsonl``); Incomparable if none."""
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

    ev = resolve(params, "eval", profile or None)
    configs = [ev.get("judge_config") or {}, {}]  # the default judge's config; per-attack overrides get {}
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
    p.add_argument("--eval-root", required=True)
    p.add_argument("--reports", required=True)
    p.add_argument("--variants", nargs="+", default=None, help="default: params eval.variants")
    p.add_argument("--out", required=True)
    p.add_argument("--lock", default="dvc.lock", help="the pipeline's dvc.lock (a profile's own: runs/<profile>/dvc.lock)")
    p.add_argument("--source", default=None,
                   help="validated source dir: the stored responses get their question text, so a later version "
                        "scored by other judges can re-score this one")
    a = p.parse_args()
    params = load_params(a.params)
    profile = a.profile or params.get("profile", "")
    from derta.config import resolve

    variants = a.variants or list(resolve(params, "eval", a.profile).get("variants") or [])
    r = run(step_config(RegisterConfig, params, "register", a.profile), params, profile, variants, a.models_root, a.eval_root,
            a.reports, a.out, a.source, a.lock)
    print({k: r.get(k) for k in ("model_name", "version", "alias", "parent_run_id")})
    print((r.get("promotion") or {}).get("promotion.reason", ""))


if __name__ == "__main__":
    entry(main)
