"""Stage `train_dpo`: the DPO baseline (paper Figure 5), one epoch of DPO from the trained vanilla model.

Inputs: the DPO pairs (``dpo_pairs.jsonl``: id, prompt, chosen, rejected) and
the vanilla model dir (``<dir>/model``). Output: ``<out>/model`` and
``<out>/train_log.json``, the layout of `train@<variant>`, so
``steps.evaluate --model <out>`` evaluates it like any variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from derta import live
from derta.config import load_params, step_config
from derta.dpo import DPOTrainConfig, train_dpo
from derta.io import read_jsonl
from derta.modeling import ModelConfig, set_threads
from steps._common import entry, parser

PAIR_SCHEMA = {"id": str, "prompt": str, "chosen": str, "rejected": str}


def run(cfg: DPOTrainConfig, model_cfg: ModelConfig, pairs_file: str | Path, start_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    set_threads()
    pairs = read_jsonl(pairs_file, PAIR_SCHEMA, non_empty=["prompt", "chosen", "rejected"], unique_key="id")
    return train_dpo(cfg, Path(start_dir) / "model", pairs, out_dir, trust_remote_code=model_cfg.trust_remote_code)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--pairs", required=True, help="DPO pairs (JSON lines)")
    p.add_argument("--start", required=True, help="trained model dir to start from (models/vanilla)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    params = load_params(a.params)
    cfg = step_config(DPOTrainConfig, params, "dpo", a.profile)
    with live.stage_run(f"train_dpo@{Path(a.out).name}", a.profile or params.get("profile", ""), params=cfg.model_dump(mode="json"),
                        datasets={"pairs": a.pairs, "start": a.start}):
        s = run(cfg, step_config(ModelConfig, params, "model", a.profile), a.pairs, a.start, a.out)
    print({k: s.get(k) for k in ("global_step", "train_loss", "train_runtime_s", "effective_batch")})


if __name__ == "__main__":
    entry(main)
