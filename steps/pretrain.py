"""Stage `pretrain`: train the tiny base model on the mini-world web text.

Inputs: source dir (web.jsonl), tokenizer dir. Output: a base model dir
(model/ with safetensors + tokenizer, train_log.json). This "base model" is
where every variant starts. With ``model.path`` set (a real base model) the
stage copies nothing and just records the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from derta.config import StepConfig, load_params, step_config
from derta.io import read_jsonl, write_json
from derta.modeling import ModelConfig, build_model, set_threads
from derta.train import TrainConfig, pack_documents, train
from steps._common import entry, parser


class PretrainConfig(StepConfig):
    """Pretraining of the tiny base model."""

    block_size: int = Field(128, description="Tokens per packed training block.")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields for pretraining.")


def run(cfg: PretrainConfig, model_cfg: ModelConfig, src_dir: str | Path, tokenizer_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    set_threads()
    out_dir = Path(out_dir)
    tcfg = TrainConfig.from_dict(cfg.train, where="params.yaml:pretrain.train")
    if model_cfg.path:  # a real base model: nothing to pretrain
        write_json(out_dir / "train_log.json", {"base_model": model_cfg.path, "pretrained": False})
        return {"base_model": model_cfg.path}
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    docs = [r["text"] for r in read_jsonl(Path(src_dir) / "web.jsonl", {"text": str}, non_empty=["text"])]
    examples = pack_documents(docs, tok, cfg.block_size)
    model = build_model(model_cfg, tok, seed=tcfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    summary = train(tcfg, model, tok, examples, out_dir)
    summary["n_params"] = n_params
    write_json(out_dir / "train_log.json", summary)
    return summary


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--source", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    params = load_params(a.params)
    s = run(step_config(PretrainConfig, params, "pretrain", a.profile), step_config(ModelConfig, params, "model", a.profile), a.source, a.tokenizer, a.out)
    print({k: s.get(k) for k in ("n_params", "global_step", "train_loss", "train_runtime_s", "train_tokens")})


if __name__ == "__main__":
    entry(main)
