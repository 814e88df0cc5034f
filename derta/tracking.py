"""Tracking helpers for stage `register`: promotion gate, lineage, model card.

Pure functions over plain data (``summary.json`` rows, ``dvc.lock``, tag
dicts) so they are tested without an MLflow server; ``steps/register.py``
does the MLflow calls.

Promotion contract (``register.max_helpfulness_drop``, points)
* A new version becomes ``champion`` when there is no champion yet, or when
  its mean ASR (mean over the attacks in ``summary.json`` of the registered
  variant; lower is safer) is not higher than the champion's AND its mean
  helpfulness is at most ``max_helpfulness_drop`` points below the
  champion's. Otherwise it becomes ``candidate``.
* The champion's numbers are read from its version tags ``asr_mean`` and
  ``helpfulness_mean`` (written by this gate). A champion without an
  ``asr_mean`` tag (registered before the gate existed) cannot be compared
  and is replaced. A new version without a measured ASR is never promoted.
"""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

CHAMPION = "champion"
CANDIDATE = "candidate"


def _mean(values: dict[str, Any] | None) -> float | None:
    vals = [float(x) for x in (values or {}).values() if x is not None]
    return round(sum(vals) / len(vals), 2) if vals else None


def asr_mean(variant: dict[str, Any]) -> float | None:
    """Mean ASR (%) over the attacks of one ``summary.json`` variant row."""
    return _mean(variant.get("asr"))


def helpfulness_mean(variant: dict[str, Any]) -> float | None:
    """Mean helpfulness (%) over the benchmarks of one ``summary.json`` variant row."""
    return _mean(variant.get("helpfulness"))


def _float(tags: dict[str, str], key: str) -> float | None:
    try:
        return float(tags[key])
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Promotion:
    decision: str                      # CHAMPION | CANDIDATE
    reason: str
    asr_mean: float | None
    helpfulness_mean: float | None
    champion_version: str | None = None
    champion_asr_mean: float | None = None
    champion_helpfulness_mean: float | None = None
    max_helpfulness_drop: float = 5.0

    def tags(self) -> dict[str, str]:
        """Version tags: the decision and every number it used ('' = unknown)."""
        d = asdict(self)
        out = {"promotion.decision": self.decision, "promotion.reason": self.reason,
               "promotion.max_helpfulness_drop": str(self.max_helpfulness_drop)}
        for k in ("asr_mean", "helpfulness_mean"):
            out[k] = "" if d[k] is None else str(d[k])
        for k in ("version", "asr_mean", "helpfulness_mean"):
            v = d[f"champion_{k}"]
            out[f"champion.{k}"] = "" if v is None else str(v)
        return out


def decide(variant: dict[str, Any], champion_tags: dict[str, str] | None, champion_version: str | None,
           max_helpfulness_drop: float) -> Promotion:
    """Promotion decision for a new version with ``summary.json`` row ``variant`` (see module doc)."""
    asr, helpful = asr_mean(variant), helpfulness_mean(variant)
    base = dict(asr_mean=asr, helpfulness_mean=helpful, max_helpfulness_drop=max_helpfulness_drop)
    if asr is None:
        return Promotion(CANDIDATE, "no ASR measured for the new version", **base)
    if champion_tags is None:
        return Promotion(CHAMPION, "no champion yet", **base)
    c_asr, c_help = _float(champion_tags, "asr_mean"), _float(champion_tags, "helpfulness_mean")
    base.update(champion_version=champion_version, champion_asr_mean=c_asr, champion_helpfulness_mean=c_help)
    if c_asr is None:
        return Promotion(CHAMPION, f"champion v{champion_version} has no asr_mean tag to compare", **base)
    if asr > c_asr:
        return Promotion(CANDIDATE, f"mean ASR {asr} > champion's {c_asr}", **base)
    if c_help is not None:
        if helpful is None:
            return Promotion(CANDIDATE, "no helpfulness measured; champion has one", **base)
        drop = round(c_help - helpful, 2)
        if drop > max_helpfulness_drop:
            return Promotion(CANDIDATE, f"helpfulness drop {drop} > {max_helpfulness_drop} points "
                                        f"({helpful} vs champion's {c_help})", **base)
    return Promotion(CHAMPION, f"mean ASR {asr} <= champion's {c_asr}, helpfulness within "
                               f"{max_helpfulness_drop} points", **base)


# ---------------------------------------------------------------- lineage

def dvc_out_hashes(lock_path: str | Path) -> dict[str, str]:
    """``{output path: md5}`` for every output in ``dvc.lock`` (directories end in ``.dir``)."""
    p = Path(lock_path)
    if not p.exists():
        return {}
    lock = yaml.safe_load(p.read_text()) or {}
    out: dict[str, str] = {}
    for stage in (lock.get("stages") or {}).values():
        for o in stage.get("outs") or []:
            digest = o.get("md5") or o.get("etag") or o.get("checksum")
            if o.get("path") and digest:
                out[o["path"]] = str(digest)
    return dict(sorted(out.items()))


def git_state(cwd: str | Path = ".") -> dict[str, str]:
    """``{git_commit, git_dirty}`` of ``cwd`` ('unknown' outside a git checkout).

    ``dvc.lock`` does not count as dirty: ``dvc repro`` rewrites it, and its
    hashes are logged separately (:func:`lineage_tags`).
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    try:
        return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": str(bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock")))}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}


def lineage_tags(profile: str, cwd: str | Path = ".") -> dict[str, str]:
    """Tags every run gets: ``derta.git_commit``, ``derta.git_dirty``, ``derta.profile``,
    ``derta.dvc_lock_sha256`` and ``derta.dvc.out.<path>`` = md5 per ``dvc.lock`` output."""
    import hashlib

    cwd = Path(cwd)
    tags = {f"derta.{k}": v for k, v in git_state(cwd).items()}
    tags["derta.profile"] = profile
    lock = cwd / "dvc.lock"
    if lock.exists():
        tags["derta.dvc_lock_sha256"] = hashlib.sha256(lock.read_bytes()).hexdigest()
    tags.update({f"derta.dvc.out.{path}": md5 for path, md5 in dvc_out_hashes(lock).items()})
    return tags


# ---------------------------------------------------------------- model card

def summary_table(summary: dict[str, Any]) -> str:
    """Markdown table: one row per variant, ASR per attack, means, helpfulness."""
    rows = summary.get("variants") or {}
    attacks = sorted({a for v in rows.values() for a in (v.get("asr") or {})})
    benches = sorted({b for v in rows.values() for b in (v.get("helpfulness") or {})})
    head = ["variant", *(f"{a} ASR" for a in attacks), "mean ASR", *(f"{b} help" for b in benches)]
    fmt = lambda x: "-" if x is None else f"{x}"  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, v in rows.items():
        cells = [name, *(fmt((v.get("asr") or {}).get(a)) for a in attacks), fmt(asr_mean(v)),
                 *(fmt((v.get("helpfulness") or {}).get(b)) for b in benches)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_card(model_name: str, version: str, variant: str, summary: dict[str, Any], promotion: Promotion,
               lineage: dict[str, str]) -> str:
    """The registered version's description (Markdown)."""
    prof = summary.get("profile", lineage.get("derta.profile", ""))
    lin = "\n".join(f"- `{k.removeprefix('derta.')}`: `{v}`" for k, v in sorted(lineage.items()))
    return (
        f"# {model_name} v{version}\n\n"
        f"DeRTa reproduction, variant `{variant}`, profile `{prof}`. ASR in % (lower is safer), "
        f"helpfulness in % (higher is better), held-out split.\n\n"
        f"## Promotion\n\n**{promotion.decision}**: {promotion.reason}.\n\n"
        f"## Results (reports/summary.json)\n\n{summary_table(summary)}\n\n"
        f"## Lineage\n\n{lin}\n"
    )
