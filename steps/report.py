"""Stage `report`: paper-style reports from every variant's metrics.

Inputs: ``eval/<variant>/metrics.json`` per variant. Outputs:
``summary.json`` (the schema in README "Reports"), ``ablation.md`` (Table 4 /
Table 2 style, the paper's numbers beside the measured ones) and
``refusal_position.png`` (Figure 4 style CDF of the first refusal position,
one line per variant; plus one panel per attack).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from derta.config import load_params
from derta.io import atomic_path, write_json, write_text
from steps._common import entry, parser
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
    out: dict[str, Any] = {"profile": profile, "variants": {}}
    for name, m in metrics.items():
        asr = m["asr"]
        out["variants"][name] = {
            "asr": asr,
            "asr_black_box_avg": _avg([asr.get(a) for a in BLACK_BOX if a in asr]),
            "asr_white_box_avg": _avg([asr.get(a) for a in WHITE_BOX if a in asr]),
            "helpfulness": m["helpfulness"],
            "refusal_position": {k: m["refusal_position"][k] for k in ("share_at_0", "median", "share_after_30")},
            "n": m["n"],
            "halt": m.get("halt", {}),
            "split": m.get("split"),
        }
    return out


def _fmt(v: Any) -> str:
    return "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))


def ablation_markdown(summary: dict[str, Any]) -> str:
    variants = summary["variants"]
    attacks = sorted({a for v in variants.values() for a in v["asr"]})
    helps = sorted({h for v in variants.values() for h in v["helpfulness"]})
    head = ["variant", *[f"{a} ASR" for a in attacks], "black-box avg", "white-box avg", *[f"{h} help" for h in helps],
            "refusal at 0 %", "refusal median pos", "paper black/white avg"]
    lines = [f"# Ablation (profile `{summary['profile']}`)", "",
             "Measured ASR % (lower is safer) and helpfulness % (higher is better) on the held-out split;",
             "the last column is the paper's Table 4 (LLaMA3-70B) for reference.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, v in variants.items():
        paper = PAPER_TABLE4.get(name)
        row = [name, *[_fmt(v["asr"].get(a)) for a in attacks], _fmt(v["asr_black_box_avg"]), _fmt(v["asr_white_box_avg"]),
               *[_fmt(v["helpfulness"].get(h)) for h in helps], _fmt(v["refusal_position"]["share_at_0"]),
               _fmt(v["refusal_position"]["median"]), f"{paper[0]} / {paper[1]}" if paper else "-"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Paper Table 2 (LLaMA3-70B) for reference", "",
              "| variant | " + " | ".join(PAPER_TABLE2["vanilla"]) + " |", "|---|" + "---|" * len(PAPER_TABLE2["vanilla"])]
    for name, row in PAPER_TABLE2.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(x) for x in row.values()) + " |")
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
    print(json.dumps({n: v["asr"] for n, v in s["variants"].items()}))


if __name__ == "__main__":
    entry(main)
