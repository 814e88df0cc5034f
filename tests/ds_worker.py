"""Tiny world + model for the training-infrastructure tests, and a worker entry point.

``build_world(root)`` writes a small mini-world, its tokenizer and the
``derta`` variant + DPO pairs under ``root`` (cached: a second call reads
them back). ``python -m tests.ds_worker --root R --out O [...]`` trains the
tiny model on ``R/derta.jsonl`` with :func:`derta.train.train`; launched by
``deepspeed``/``torchrun`` it runs as one rank and writes the example ids it
collated to ``O/ids-rank<r>.json`` (tests/test_deepspeed.py checks sharding).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

TINY_WORLD = dict(n_safety_train=60, n_helpful_train=50, n_eval_harmful=20, n_eval_helpful=20, n_dev_harmful=10,
                  n_dev_helpful=10, web_harmful_docs=40, web_chatter_docs=20, web_faq_docs=40, n_entities=40)
TINY_MODEL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)


def build_world(root: str | Path) -> Path:
    """Source, tokenizer (refusal word " Sorry" one token), derta variant and DPO pairs under ``root``."""
    from derta.io import read_jsonl, write_jsonl

    root = Path(root)
    if (root / "derta.jsonl").is_file() and (root / "tok" / "tokenizer.json").is_file():
        return root
    from derta.modeling import TokenizerConfig
    from derta.variants import SynthesizeConfig, synthesize
    from steps import source, tokenizer

    source.run(source.SourceConfig(miniworld=TINY_WORLD), root / "src")
    tokenizer.run(TokenizerConfig(vocab_size=500, refusal_word=" Sorry"), root / "src", root / "tok")
    data = synthesize(SynthesizeConfig(n_triples=20, n_helpful=40, variants=["vanilla", "derta"]),
                      read_jsonl(root / "src" / "safety_train.jsonl"), read_jsonl(root / "src" / "helpful_train.jsonl"))
    for name in ("vanilla", "derta", "dpo_pairs"):
        write_jsonl(root / f"{name}.jsonl", data[name])
    return root


def tokenizer(root: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(root) / "tok"))


def tiny_model(tok, seed: int = 0):
    from derta.modeling import ModelConfig, build_model

    return build_model(ModelConfig(**TINY_MODEL), tok, seed=seed)


def examples(root: str | Path, tok, max_length: int = 192, variant: str = "derta") -> list[dict[str, Any]]:
    """Encoded instances, each with its dataset row index as ``id`` (an int column)."""
    from derta.io import read_jsonl
    from derta.train import encode_instances

    recs = read_jsonl(Path(root) / f"{variant}.jsonl")
    out = encode_instances(recs, tok, max_length)
    for i, e in enumerate(out):
        e["id"] = i
    return out


def record_ids(sink: list[int]) -> None:
    """Make every DeRTaCollator append the ``id`` of each example it collates to ``sink``."""
    import derta.train as T

    call = T.DeRTaCollator.__call__

    def recording(self, feats):
        sink.extend(int(f["id"]) for f in feats)
        return call(self, feats)

    T.DeRTaCollator.__call__ = recording


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--config", default="{}", help="TrainConfig fields as JSON")
    p.add_argument("--step-sleep", type=float, default=0.0, help="sleep after each optimizer step (resume test: time to kill)")
    p.add_argument("--local_rank", type=int, default=None, help="(set by the deepspeed launcher)")
    a = p.parse_args()

    import torch

    from derta.train import TrainConfig, train
    from steps._common import end_distributed

    torch.set_num_threads(1)
    cfg = TrainConfig(**{"refusal_word": " Sorry", "logging_steps": 1, **json.loads(a.config)})
    tok = tokenizer(a.root)
    seen: list[int] = []
    record_ids(seen)
    callbacks = []
    if a.step_sleep:
        import time

        from transformers import TrainerCallback

        class Sleep(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                time.sleep(a.step_sleep)

        callbacks.append(Sleep())
    summary = train(cfg, tiny_model(tok), tok, examples(a.root, tok, cfg.max_length), a.out, callbacks=callbacks)
    rank = int(os.environ.get("RANK", "0"))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / f"ids-rank{rank}.json").write_text(json.dumps({
        "ids": seen, "world_size": summary["world_size"], "effective_batch": summary["effective_batch"],
        "gradient_accumulation_steps": summary["gradient_accumulation_steps"], "global_step": summary["global_step"],
        "deepspeed_enabled": summary["deepspeed_enabled"],
    }))
    end_distributed()


if __name__ == "__main__":
    main()
