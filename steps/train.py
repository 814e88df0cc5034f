"""Stage `train@<variant>`: fine-tune the base model on one variant's data.

Inputs: the variant's JSON lines (release format, derta/variants.py), the
base model dir. Output: ``<out>/model`` (safetensors + tokenizer) and
``<out>/train_log.json`` (per-step losses incl. the MLE and RTO parts).
Every variant starts from the same base model and seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from derta.config import load_params, step_config
from derta.io import read_jsonl
from derta.modeling import ModelConfig, load_model, set_threads
from derta.train import TrainConfig, encode_instances, train
from steps._common import entry, parser

INSTANCE_SCHEMA = {"id": str, "kind": str, "prefix": str, "text": str, "safe": str}


def base_model_path(base_dir: str | Path, model_cfg: ModelConfig) -> str:
    return model_cfg.path or str(Path(base_dir) / "model")


def run(cfg: TrainConfig, model_cfg: ModelConfig, data_file: str | Path, base_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    set_threads()
    records = read_jsonl(data_file, INSTANCE_SCHEMA, non_empty=["prefix", "text"], unique_key="id")
    model, tok = load_model(base_model_path(base_dir, model_cfg), model_cfg.trust_remote_code)
    examples = encode_instances(records, tok, cfg.max_length)
    return train(cfg, model, tok, examples, out_dir)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data", required=True, help="variant JSON lines")
    p.add_argument("--base", required=True, help="base model dir (pretrain output)")
    p.add_argument("--out", required=True)
    p.add_argument("--section", default="train", help="params section of the TrainConfig (e.g. train, dpo)")
    a = p.parse_args()
    params = load_params(a.params)
    s = run(step_config(TrainConfig, params, a.section, a.profile), step_config(ModelConfig, params, "model", a.profile), a.data, a.base, a.out)
    print({k: s.get(k) for k in ("global_step", "train_loss", "train_runtime_s", "effective_batch")})


if __name__ == "__main__":
    entry(main)
