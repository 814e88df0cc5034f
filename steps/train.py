"""Stage `train@<variant>`: fine-tune the base model on one variant's data.

Inputs: the variant's JSON lines (release format, derta/variants.py), the
base model dir. Output: ``<out>/model`` (safetensors + tokenizer) and
``<out>/train_log.json`` (per-step losses incl. the MLE and RTO parts).
Every variant starts from the same base model and seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from derta import live
from derta.chat import ChatConfig, ChatFormat, chat_config, inject
from derta.config import load_params, resolve, step_config
from derta.errors import ConfigError
from derta.io import read_jsonl
from derta.modeling import ModelConfig, load_model, refusal_token_id, set_threads
from derta.train import TrainConfig, encode_instances, train
from steps._common import entry, parser

INSTANCE_SCHEMA = {"id": str, "kind": str, "prefix": str, "text": str, "safe": str}


def base_model_path(base_dir: str | Path, model_cfg: ModelConfig) -> str:
    return model_cfg.path or str(Path(base_dir) / "model")


def run(cfg: TrainConfig, model_cfg: ModelConfig, data_file: str | Path, base_dir: str | Path, out_dir: str | Path,
        chat: ChatConfig | None = None) -> dict[str, Any]:
    """``chat`` (params.yaml ``chat``; default ChatConfig()) gives the refusal word; its token is checked where a
    safe response starts, against the base model's tokenizer, before training."""
    set_threads()
    records = read_jsonl(data_file, INSTANCE_SCHEMA, non_empty=["prefix", "text"], unique_key="id")
    model, tok = load_model(base_model_path(base_dir, model_cfg), model_cfg.trust_remote_code)
    fmt = ChatFormat.resolve(chat or ChatConfig(), tok)
    if fmt.refusal_token_id(tok) != refusal_token_id(tok, fmt.refusal_text):
        raise ConfigError(f"chat: {fmt.refusal_text!r} alone is not the token a safe response starts with")
    cfg = cfg.model_copy(update={"refusal_word": fmt.refusal_text})
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
    chat = chat_config(params, a.profile)
    tcfg = TrainConfig.from_dict(inject(resolve(params, a.section, a.profile), {"refusal_word": chat.refusal_word}, a.section),
                                 where=f"params.yaml:{a.section}")
    with live.stage_run(f"train@{Path(a.out).name}", a.profile or params.get("profile", ""), params=tcfg.model_dump(mode="json"),
                        datasets={"train": a.data, "base": a.base}):
        s = run(tcfg, step_config(ModelConfig, params, "model", a.profile), a.data, a.base, a.out, chat)
    print({k: s.get(k) for k in ("global_step", "train_loss", "train_runtime_s", "effective_batch")})


if __name__ == "__main__":
    entry(main)
