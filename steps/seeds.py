"""Multi-seed reproduction: `make seeds` (default seeds 0 1 2).

For each seed, ``dvc exp run -S data.seed=S -S synthesize.seed=S -S train.seed=S``
re-runs the pipeline as a DVC experiment; the seed's ``reports/summary.json``
is kept as ``reports/seeds/seed-S.json`` (a seed whose file exists is not
rerun, so an interrupted run resumes). Then the mean and spread (population
standard deviation) of every ASR and helpfulness figure go to
``reports/seeds/summary.json`` and ``reports/seeds/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from derta.io import write_json, write_text


def aggregate(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": sorted(per_seed), "variants": {}}
    first = next(iter(per_seed.values()))
    for variant in first["variants"]:
        rows: dict[str, list[float]] = {}
        for s in per_seed.values():
            v = s["variants"][variant]
            for group in ("asr", "helpfulness"):
                for k, x in v[group].items():
                    if x is not None:
                        rows.setdefault(f"{group}.{k}", []).append(float(x))
            for k in ("share_at_0", "share_after_30"):
                if v["refusal_position"].get(k) is not None:
                    rows.setdefault(f"refusal_position.{k}", []).append(float(v["refusal_position"][k]))
        out["variants"][variant] = {k: {"mean": round(statistics.fmean(x), 2), "std": round(statistics.pstdev(x), 2), "values": x} for k, x in rows.items()}
    return out


def markdown(agg: dict[str, Any]) -> str:
    keys = sorted({k for v in agg["variants"].values() for k in v})
    lines = [f"# Mean ± std over seeds {agg['seeds']}", "", "| variant | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, v in agg["variants"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v[k]['mean']:.1f} ± {v[k]['std']:.1f}" if k in v else "-" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="reports/seeds")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dvc = str(Path(sys.executable).parent / "dvc")
    per_seed: dict[int, dict[str, Any]] = {}
    for s in a.seeds:
        done = out / f"seed-{s}.json"
        if done.exists():  # resumable: a seed already summarised is not rerun
            per_seed[s] = json.loads(done.read_text())
            continue
        cmd = [dvc, "exp", "run", "-S", f"data.seed={s}", "-S", f"synthesize.seed={s}", "-S", f"train.seed={s}"]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        shutil.copy("reports/summary.json", out / f"seed-{s}.json")
        per_seed[s] = json.loads(Path("reports/summary.json").read_text())
    agg = aggregate(per_seed)
    write_json(out / "summary.json", agg)
    write_text(out / "summary.md", markdown(agg))
    print(markdown(agg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
