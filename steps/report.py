"""Stage `report`: paper-style reports from every variant's metrics.

Inputs: ``eval/<variant>/metrics.json`` per variant. Outputs:
``summary.json`` (the schema in README "Reports"; each variant row also has
``asr_detail`` (n, unsafe, errors, 95% Wilson interval per attack),
``scoring`` (judge fingerprints, attack-config hashes), ``over_refusal`` (%),
``over_refusal_detail``, ``helpfulness_detail`` (n, correct, 95% Wilson
interval per benchmark; AlpacaEval: win-rate counts) and ``skipped``
(benchmark -> why it was not measured)), ``ablation.md`` (Table 4 / Table 2 style, ASR as
``pct [lo–hi]``, the paper's numbers beside the measured ones, and which of the
paper's effects the run reproduces, derta/findings.py) and
``refusal_position.png`` (Figure 4 style CDF of the first refusal position,
one line per variant; plus one panel per attack).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from derta import live
from derta.config import load_params
from derta.findings import findings
from derta.io import atomic_path, write_json, write_text
from steps._common import entry, parser
from derta.attacks.replay import PREFIX as RELEASE_PREFIX
from steps.evaluate import BLACK_BOX, WHITE_BOX

# Paper Table 4 (LLaMA3-70B ablation; black-box avg / white-box avg ASR %).
PAPER_TABLE4 = {
    "vanilla": (63.6, 84.5),
    "vanilla_half": (66.1, 85.3),
    "harmful_prefix": (55.8, 30.5),
    "rto": (17.6, 8.5),
    "derta": (11.8, 3.0),
}
# Paper Table 2 rows used for reference (LLaMA3-70B, ASR % / helpfulness %).
PAPER_TABLE2 = {
    "vanilla": {"codeattack": 86.0, "pair": 76.0, "jailbreakchat": 41.0, "selfcipher": 51.5, "completingattack": 95.0, "autodan": 74.0, "gsm8k": 78.6, "mmlu": 70.2, "alpacaeval": 97.0},
    "derta": {"codeattack": 21.5, "pair": 24.0, "jailbreakchat": 1.5, "selfcipher": 0.0, "completingattack": 4.0, "autodan": 2.0, "gsm8k": 77.6, "mmlu": 70.4, "alpacaeval": 96.3},
}


def _avg(vals: list[float | None]) -> float | None:
    vals = [v for v in vals if v is not None]
    return round(sum(vals) / len(vals), 2) if vals else None


def summarize(profile: str, metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``summary.json``: one row per variant. ``asr_detail``/``scoring``/``over_refusal*``/
    ``helpfulness_detail``/``helpfulness_by_kind``/``skipped`` are empty or None for metrics written before they existed."""
    out: dict[str, Any] = {"profile": profile, "variants": {}}
    for name, m in metrics.items():
        asr = m["asr"]
        orf = m.get("over_refusal") or None
        out["variants"][name] = {
            "asr": asr,
            "asr_black_box_avg": _avg([asr.get(a) for a in BLACK_BOX if a in asr]),
            "asr_white_box_avg": _avg([asr.get(a) for a in WHITE_BOX if a in asr]),
            # The paper's own rendered prompts replayed verbatim (attack release:<set>): their mean.
            "asr_release_avg": _avg([v for a, v in asr.items() if a.startswith(RELEASE_PREFIX)]),
            "helpfulness": m["helpfulness"],
            "refusal_position": {k: m["refusal_position"][k] for k in ("share_at_0", "median", "share_after_30")},
            "n": m["n"],
            "halt": m.get("halt", {}),
            "split": m.get("split"),
            "asr_detail": m.get("asr_detail", {}),
            "scoring": m.get("scoring", {}),
            "over_refusal": orf["rate"] if orf else None,
            "over_refusal_detail": orf,
            "helpfulness_detail": m.get("helpfulness_detail", {}),
            "helpfulness_by_kind": m.get("helpfulness_by_kind", {}),
            "skipped": m.get("skipped", {}),
        }
    return out


def _fmt(v: Any) -> str:
    return "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))


def _fmt_ci(value: Any, detail: dict[str, Any] | None) -> str:
    """``12.5 [7.7–19.6]`` (95% Wilson interval) when the detail has one, else the bare value."""
    ci = (detail or {}).get("ci95")
    return _fmt(value) if value is None or not ci else f"{value:.1f} [{ci[0]:.1f}–{ci[1]:.1f}]"


def _judge_name(fp: dict[str, str]) -> str:
    return f"`{fp['judge']}` v{fp['judge_version']} (config {fp['judge_config_sha256']})"


def _n_label(ns: dict[str, int | None]) -> tuple[str, bool]:
    """``" (n=120)"`` when every variant has the same n, else ``("", True)``: n goes in a footnote."""
    vals = set(ns.values())
    if vals <= {None}:  # not recorded (older metrics.json)
        return "", False
    return (f" (n={vals.pop()})", False) if len(vals) == 1 and None not in vals else ("", True)


def scoring_notes(variants: dict[str, dict[str, Any]]) -> list[str]:
    """Lines naming the judge(s) once, and a warning when variants were scored differently."""
    fps = {json.dumps(fp, sort_keys=True): fp for v in variants.values() for fp in (v.get("scoring") or {}).get("judges", {}).values()}
    fps.update({json.dumps(v["over_refusal_detail"]["judge"], sort_keys=True): v["over_refusal_detail"]["judge"]
                for v in variants.values() if (v.get("over_refusal_detail") or {}).get("judge")})
    if not fps:
        return ["Judge: not recorded (metrics written before judge fingerprints)."]
    if len(fps) == 1:
        lines = [f"Judge: {_judge_name(next(iter(fps.values())))}, for every attack and variant"
                 + (" and the over-refusal prompts." if any(v.get("over_refusal_detail") for v in variants.values()) else ".")]
    else:
        lines = ["Judges (they differ between attacks or variants):"]
        for name, v in variants.items():
            per = dict(sorted((v.get("scoring") or {}).get("judges", {}).items()))
            if (v.get("over_refusal_detail") or {}).get("judge"):
                per["over-refusal"] = v["over_refusal_detail"]["judge"]
            lines.append(f"- {name}: " + ", ".join(f"{a} {_judge_name(fp)}" for a, fp in per.items()))
    sets = {(v.get("scoring") or {}).get("attack_set_sha256") for v in variants.values()}
    if len(sets) == 1 and None not in sets:
        lines.append(f"Attack set: `{sets.pop()}` (hash of every attack's config, seed, split and question caps).")
    else:
        lines.append("**Warning: the variants were attacked with different attack configs (attack_set_sha256 "
                     + ", ".join(f"{n} {(v.get('scoring') or {}).get('attack_set_sha256')}" for n, v in variants.items())
                     + "); their ASRs are not comparable.**")
    prompt_sets = {(v.get("over_refusal_detail") or {}).get("prompts_sha256") for v in variants.values()} - {None}
    if len(prompt_sets) > 1:
        lines.append("**Warning: the variants' over-refusal prompts differ (prompts_sha256); their over-refusal rates are not comparable.**")
    return lines


def ablation_markdown(summary: dict[str, Any]) -> str:
    variants = summary["variants"]
    attacks = sorted({a for v in variants.values() for a in v["asr"]})
    helps = sorted({h for v in variants.values() for h in v["helpfulness"]})
    footnotes: list[str] = []
    asr_heads = []
    for a in attacks:
        label, varies = _n_label({n: (v.get("asr_detail", {}).get(a) or {}).get("n") for n, v in variants.items()})
        asr_heads.append(f"{a} ASR{label}")
        if varies:
            footnotes.append(f"{a}: n = " + ", ".join(f"{n} {(v.get('asr_detail', {}).get(a) or {}).get('n', '-')}" for n, v in variants.items()))
    or_label, or_varies = _n_label({n: (v.get("over_refusal_detail") or {}).get("n") for n, v in variants.items()})
    if or_varies:
        footnotes.append("over-refusal: n = " + ", ".join(f"{n} {(v.get('over_refusal_detail') or {}).get('n', '-')}" for n, v in variants.items()))
    errors = {f"{n}/{a}": d["errors"] for n, v in variants.items() for a, d in (v.get("asr_detail") or {}).items() if d.get("errors")}
    if errors:
        footnotes.append("undecided verdicts (judge errors, left out of n): " + ", ".join(f"{k} {c}" for k, c in errors.items()))
    release = any(v.get("asr_release_avg") is not None for v in variants.values())
    head = ["variant", *asr_heads, "black-box avg", "white-box avg", *(["release avg"] if release else []), *[f"{h} help" for h in helps],
            f"over-refusal %{or_label}", "refusal at 0 %", "refusal median pos", "paper black/white avg"]
    lines = [f"# Ablation (profile `{summary['profile']}`)", "", *scoring_notes(variants), "",
             "Measured ASR % (lower is safer) with its 95% Wilson interval `[lo–hi]` over n decided verdicts,",
             "helpfulness % (higher is better) and over-refusal % (safe prompts that look harmful, refused; lower is better)",
             "on the held-out split; the last column is the paper's Table 4 (LLaMA3-70B) for reference.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, v in variants.items():
        paper = PAPER_TABLE4.get(name)
        detail = v.get("asr_detail") or {}
        row = [name, *[_fmt_ci(v["asr"].get(a), detail.get(a)) for a in attacks], _fmt(v["asr_black_box_avg"]),
               _fmt(v["asr_white_box_avg"]), *([_fmt(v.get("asr_release_avg"))] if release else []),
               *[_fmt(v["helpfulness"].get(h)) for h in helps],
               _fmt_ci(v.get("over_refusal"), v.get("over_refusal_detail")), _fmt(v["refusal_position"]["share_at_0"]),
               _fmt(v["refusal_position"]["median"]), f"{paper[0]} / {paper[1]}" if paper else "-"]
        lines.append("| " + " | ".join(row) + " |")
    if footnotes:
        lines += ["", *[f"- {f}" for f in footnotes]]
    lines += ["", *findings(summary), "## Paper Table 2 (LLaMA3-70B) for reference", "",
              "| variant | " + " | ".join(PAPER_TABLE2["vanilla"]) + " |", "|---|" + "---|" * len(PAPER_TABLE2["vanilla"])]
    for name, row in PAPER_TABLE2.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(x) for x in row.values()) + " |")
    skipped = sorted({f"- {b}: {why}" for v in variants.values() for b, why in (v.get("skipped") or {}).items()})
    if skipped:
        lines += ["", "Not measured:", *skipped]
    halts = {n: sum(v.get("halt", {}).values()) for n, v in variants.items()}
    lines += ["", "Halts (responses that start harmful, then refuse): " + ", ".join(f"{n} {c}" for n, c in halts.items()), ""]
    return "\n".join(lines)


def plot_refusal_positions(metrics: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = sorted({a for m in metrics.values() for a in m["refusal_positions"]})
    panels = [("all attacks", None), *[(a, a) for a in attacks]]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False)
    flat = axes.ravel()
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, attack) in zip(flat, panels):
        for name, m in metrics.items():
            pos = sorted(p for a, ps in m["refusal_positions"].items() if attack in (None, a) for p in ps)
            if not pos:
                continue
            ax.step(pos, [(i + 1) / len(pos) for i in range(len(pos))], where="post", label=name)
        ax.set_title(title)
        ax.set_xlabel("first refusal token position")
        ax.set_ylim(0, 1.02)
    for row in axes:
        row[0].set_ylabel("cumulative share of refusals")
    flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(profile: str, eval_dirs: dict[str, str | Path], out_dir: str | Path) -> dict[str, Any]:
    metrics = {name: json.loads((Path(d) / "metrics.json").read_text()) for name, d in eval_dirs.items()}
    summary = summarize(profile, metrics)
    out = Path(out_dir)
    write_json(out / "summary.json", summary)
    write_text(out / "ablation.md", ablation_markdown(summary))
    with atomic_path(out / "refusal_position.png") as tmp:
        plot_refusal_positions(metrics, tmp.with_suffix(".png"))
    return summary


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--eval-root", required=True, help="dir holding eval/<variant>/")
    p.add_argument("--variants", nargs="+", default=None, help="default: params eval.variants")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    params = load_params(a.params)
    profile = a.profile or params.get("profile", "")
    from derta.config import resolve

    variants = a.variants or list(resolve(params, "eval", a.profile).get("variants") or [])
    s = run(profile, {v: Path(a.eval_root) / v for v in variants}, a.out)
    live.log_reports(profile, Path(a.out))
    print(json.dumps({n: v["asr"] for n, v in s["variants"].items()}))


if __name__ == "__main__":
    entry(main)
