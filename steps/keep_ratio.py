"""RTO keep-ratio ablation: `make keep-ratio` (after `make run`).

The paper keeps the RTO loss on 5% of a response's positions in its
full-parameter runs and on all of them with LoRA (Appendix A). This trains the
DeRTa variant once per ratio (``--ratios``, default 0.05 0.25 1.0) from the
pipeline's base model and DeRTa data, with every other setting of
``params.yaml`` unchanged, and evaluates each model, and the pipeline's vanilla
model for reference, on the ``dev`` split (never the reported one: the ratio is
chosen on it). Each run goes through the stages' own entry points
(``steps.train``, ``steps.evaluate``) with a params file that differs from
``params.yaml`` only in ``train.rto_keep_ratio`` and ``eval.split``; models and
evaluations go under ``--work`` (a ratio already evaluated there is not rerun).

Writes ``<out>/keep_ratio.json`` (the report stage's row per model) and
``<out>/keep_ratio.md`` (one table). One seed: read a gap with the intervals.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from derta.config import load_params
from derta.io import write_json, write_text
from steps.report import summarize

ATTACK_ORDER = ("codeattack", "pair", "jailbreakchat", "selfcipher", "completingattack", "autodan", "prefill", "direct")


def with_overrides(params: dict[str, Any], ratio: float, split: str) -> dict[str, Any]:
    """params with ``train.rto_keep_ratio`` and ``eval.split`` set, in the active profile too (a profile wins)."""
    out = json.loads(json.dumps(params))
    targets = [out]
    profile = out.get("profile")
    if profile:
        out.setdefault("profiles", {})[profile] = out["profiles"].get(profile) or {}
        targets.append(out["profiles"][profile])
    for t in targets:
        t.setdefault("train", {})["rto_keep_ratio"] = ratio
        t.setdefault("eval", {})["split"] = split
    return out


def _step(module: str, params_file: Path, *args: str) -> None:
    cmd = [sys.executable, "-m", module, "--params", str(params_file), *args]
    t0 = time.monotonic()
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    print(f"  {module} done in {time.monotonic() - t0:.0f}s", flush=True)


def run_one(name: str, params: dict[str, Any], work: Path, model: Path | None, a: argparse.Namespace) -> Path:
    """Train (unless ``model`` is given) and evaluate one model; returns its eval dir."""
    eval_dir = work / "eval" / name
    if (eval_dir / "metrics.json").exists():
        print(f"{name}: {eval_dir / 'metrics.json'} exists, kept", flush=True)
        return eval_dir
    params_file = work / f"params-{name}.yaml"
    params_file.parent.mkdir(parents=True, exist_ok=True)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    if model is None:
        model = work / "models" / name
        _step("steps.train", params_file, "--data", a.data, "--base", a.base, "--out", str(model))
    _step("steps.evaluate", params_file, "--model", str(model), "--source", a.source, "--out", str(eval_dir))
    return eval_dir


def _cell(v: dict[str, Any], a: str) -> str:
    x, d = v["asr"].get(a), (v.get("asr_detail") or {}).get(a) or {}
    if x is None:
        return "-"
    ci = d.get("ci95")
    return f"{x:.1f} [{ci[0]:.1f}–{ci[1]:.1f}]" if ci else f"{x:.1f}"


def markdown(summary: dict[str, Any], ratios: list[float], split: str) -> str:
    variants = summary["variants"]
    attacks = [a for a in ATTACK_ORDER if any(a in v["asr"] for v in variants.values())]
    helps = sorted({h for v in variants.values() for h in v["helpfulness"]})
    head = ["model", "RTO keep", *[f"{a} ASR" for a in attacks], "black-box avg", "white-box avg",
            *[f"{h} help" for h in helps], "over-refusal %", "refusal at 0 %", "refusal median pos"]
    lines = ["# RTO keep-ratio ablation", "",
             f"DeRTa trained once per keep ratio from one base model and one data set, every other setting as in "
             f"params.yaml (`make keep-ratio`); scored on the `{split}` split, one seed, ASR % with its 95% Wilson interval.",
             "The paper keeps 5% of the positions in full-parameter training and 100% with LoRA.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keep = {"vanilla": "-", **{f"derta-keep{r:g}": f"{r:g}" for r in ratios}}
    for name, v in variants.items():
        pos = v["refusal_position"]
        row = [name, keep.get(name, "-"), *[_cell(v, a) for a in attacks],
               *[("-" if v[k] is None else f"{v[k]:.1f}") for k in ("asr_black_box_avg", "asr_white_box_avg")],
               *[("-" if v["helpfulness"].get(h) is None else f"{v['helpfulness'][h]:.1f}") for h in helps],
               "-" if v.get("over_refusal") is None else f"{v['over_refusal']:.1f}",
               "-" if pos["share_at_0"] is None else f"{pos['share_at_0']:.1f}", str(pos["median"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.25, 1.0])
    p.add_argument("--split", default="dev", help="held-out split to score on (default dev: the ratio is chosen on it)")
    p.add_argument("--base", default="models/base")
    p.add_argument("--data", default="data/variants/derta.jsonl")
    p.add_argument("--vanilla", default="models/vanilla", help="reference model ('' = none)")
    p.add_argument("--source", default="data/source")
    p.add_argument("--work", default="keep_ratio", help="models, params files and evaluations")
    p.add_argument("--out", default="reports")
    a = p.parse_args(argv)
    bad = [r for r in a.ratios if not 0 < r <= 1]
    if bad:
        p.error(f"--ratios must lie in (0, 1]: {bad}")
    for need in (a.base, a.data, a.source, *([a.vanilla] if a.vanilla else [])):
        if not Path(need).exists():
            p.error(f"{need} does not exist: run the pipeline first (make run)")
    params, work = load_params(a.params), Path(a.work)
    evals = {}
    if a.vanilla:
        evals["vanilla"] = run_one("vanilla", with_overrides(params, 1.0, a.split), work, Path(a.vanilla), a)
    for r in a.ratios:
        evals[f"derta-keep{r:g}"] = run_one(f"derta-keep{r:g}", with_overrides(params, r, a.split), work, None, a)
    metrics = {n: json.loads((d / "metrics.json").read_text()) for n, d in evals.items()}
    summary = summarize(params.get("profile", ""), metrics)
    write_json(Path(a.out) / "keep_ratio.json", {"split": a.split, "ratios": a.ratios, **summary})
    write_text(Path(a.out) / "keep_ratio.md", markdown(summary, a.ratios, a.split))
    print(f"wrote {Path(a.out) / 'keep_ratio.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
