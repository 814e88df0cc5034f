#!/usr/bin/env bash
# One-GPU smoke test of the paper-scale training path: builds the mini-world,
# its tokenizer and the tiny model (params.yaml, profile tiny) in a temp dir,
# trains one epoch of the derta variant under DeepSpeed ZeRO-2 in bf16, and
# prints ONE JSON line on stdout:
#   {"device", "zero_stage", "bf16", "global_step", "train_tokens", "train_runtime_s",
#    "tokens_per_s", "peak_gpu_memory_bytes", "final_loss"}
# Logs go to stderr. Exit 2 (with a clear message) when no CUDA device is visible.
#
#   scripts/gpu_check.sh                 # on a GPU node (docker run --gpus all ... scripts/gpu_check.sh)
#   scripts/gpu_check.sh --cpu-dry-run   # same path on CPU, fp32, smaller world (tests the script)
#   PYTHON=/opt/venv/bin/python scripts/gpu_check.sh
set -euo pipefail

DRY=0
for arg in "$@"; do
  case "$arg" in
    --cpu-dry-run) DRY=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $arg (valid: --cpu-dry-run)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
export PATH="$(dirname "$PYTHON"):$PATH"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 DERTA_GPU_CHECK_DRY="$DRY"
if [[ "$DRY" == 1 ]]; then export DS_ACCELERATOR=cpu; fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/derta-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"

"$PYTHON" - "$WORK" <<'PY'
import contextlib, json, os, sys
from pathlib import Path

import torch

dry = os.environ["DERTA_GPU_CHECK_DRY"] == "1"
if not dry and not torch.cuda.is_available():
    print("gpu_check: no CUDA device visible (torch.cuda.is_available() is False); "
          "run on a GPU node, or pass --cpu-dry-run to exercise the same path on CPU", file=sys.stderr)
    sys.exit(2)

from derta.config import load_params, resolve
from derta.io import read_jsonl
from derta.modeling import ModelConfig, TokenizerConfig, build_model
from derta.train import TrainConfig, encode_instances, train
from derta.variants import SynthesizeConfig, synthesize
from steps import source, tokenizer

work = Path(sys.argv[1])
params = load_params("params.yaml")
src_cfg = {k: v for k, v in resolve(params, "data", "tiny").items() if k in source.SourceConfig.model_fields}
model_cfg = resolve(params, "model", "tiny")
train_cfg = resolve(params, "train", "tiny")
synth = resolve(params, "synthesize", "tiny")
tok_cfg = resolve(params, "tokenizer", "tiny")
if dry:  # small enough for a CPU test: the world and model of tests/ds_worker.py
    src_cfg["miniworld"] = dict(n_safety_train=60, n_helpful_train=50, n_eval_harmful=20, n_eval_helpful=20, n_dev_harmful=10,
                                n_dev_helpful=10, web_harmful_docs=40, web_chatter_docs=20, web_faq_docs=40, n_entities=40)
    model_cfg.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
    synth.update(n_triples=20, n_helpful=40)
    tok_cfg.update(vocab_size=500)
    train_cfg.update(total_batch_size=8, per_device_batch_size=4)
    tok_cfg["refusal_word"] = " Sorry"

with contextlib.redirect_stdout(sys.stderr):
    source.run(source.SourceConfig(**src_cfg), work / "src")
    tok = tokenizer.run(TokenizerConfig(**tok_cfg), work / "src", work / "tok")
    data = synthesize(SynthesizeConfig(**{**synth, "variants": ["derta"]}),
                      read_jsonl(work / "src" / "safety_train.jsonl"), read_jsonl(work / "src" / "helpful_train.jsonl"))
    model = build_model(ModelConfig(**{k: v for k, v in model_cfg.items() if k in ModelConfig.model_fields}), tok)
    if not dry:
        model = model.cuda()
        torch.cuda.reset_peak_memory_stats()
    cfg = TrainConfig(**{**{k: v for k, v in train_cfg.items() if k in TrainConfig.model_fields},
                         "epochs": 1, "max_steps": -1, "deepspeed": "configs/deepspeed/zero2.json", "bf16": not dry,
                         "save_steps": 0, "resume": False, "report_to": []})
    examples = encode_instances(data["derta"], tok, cfg.max_length)
    s = train(cfg, model, tok, examples, work / "out")

tokens = sum(len(e["input_ids"]) for e in examples)  # one epoch
losses = [e["loss"] for e in s["log_history"] if "loss" in e]
print(json.dumps({
    "device": "cpu" if dry else torch.cuda.get_device_name(0),
    "zero_stage": s["deepspeed_zero_stage"],
    "bf16": cfg.bf16,
    "global_step": s["global_step"],
    "train_tokens": tokens,
    "train_runtime_s": s["train_runtime_s"],
    "tokens_per_s": round(tokens / s["train_runtime_s"], 1),
    "peak_gpu_memory_bytes": None if dry else torch.cuda.max_memory_allocated(),
    "final_loss": losses[-1] if losses else None,
}))
PY
