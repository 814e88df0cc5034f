"""DPO baseline (paper Figure 5): one extra epoch of DPO from the trained ``vanilla`` model.

Pairs come from ``data/variants/dpo_pairs.jsonl`` ({id, prompt, chosen,
rejected}; chosen = the safe response, rejected = the harmful one; see
derta/variants.py). Training is TRL's ``DPOTrainer`` (sigmoid loss, paper
beta 0.1) with a frozen reference copy of the starting model. Output layout
matches :func:`derta.train.train` (``<out>/model`` + ``<out>/train_log.json``)
so ``steps.evaluate --model <out>`` works unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from derta import live
from derta.config import StepConfig


class DPOTrainConfig(StepConfig):
    """DPO hyper-parameters (paper: lr 5e-7 for 8B models, 2e-6 for 70B; beta 0.1; one epoch)."""

    seed: int = Field(0, description="Seed of data order.")
    learning_rate: float = Field(5e-7, description="Peak learning rate (paper 5e-7 for 8B, 2e-6 for 70B; the tiny profile uses a larger one).")
    beta: float = Field(0.1, description="DPO beta: strength of the pull towards the reference model.")
    epochs: float = Field(1.0, description="Epochs over the pairs (paper: one extra epoch).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1 = epochs decide).")
    total_batch_size: int = Field(32, description="Pairs per optimizer step over all ranks.")
    per_device_batch_size: int = Field(32, description="Pairs per forward pass per rank; accumulation = total / (per_device x ranks).")
    max_length: int = Field(192, description="Truncate prompt + response to this many tokens.")
    lr_scheduler: str = Field("cosine", description="Learning-rate schedule (HF name).")
    warmup_ratio: float = Field(0.1, description="Warm-up share of the steps.")
    weight_decay: float = Field(0.0, description="AdamW weight decay.")
    bf16: bool = Field(False, description="bf16 mixed precision (GPU profiles; on a CPU without bf16 instructions "
                       "it is emulated and far slower, and training warns: derta.train.cpu_bf16_warning).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass.")
    deepspeed: str = Field("", description="Path of a DeepSpeed config; empty = no DeepSpeed.")
    logging_steps: int = Field(5, description="Log every N optimizer steps.")
    report_to: list[str] = Field([], description="Live Trainer integrations (e.g. ['mlflow']).")


def dpo_arguments(cfg: DPOTrainConfig, out_dir: str | Path):
    from trl import DPOConfig

    from derta.train import _has_gpu, accumulation_steps, warn_cpu_bf16, world_size

    warn_cpu_bf16(cfg.bf16, "dpo")
    gpu = _has_gpu()
    return DPOConfig(
        output_dir=str(Path(out_dir) / "checkpoints"),
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=accumulation_steps(cfg),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        beta=cfg.beta,
        max_length=cfg.max_length,
        bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        deepspeed=cfg.deepspeed or None,
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=cfg.report_to or "none",
        disable_tqdm=True,
        use_cpu=not gpu,
        ddp_backend="gloo" if not gpu and (bool(cfg.deepspeed) or world_size() > 1) else None,
    )


def train_dpo(cfg: DPOTrainConfig, model_path: str | Path, pairs: list[dict[str, Any]], out_dir: str | Path,
              trust_remote_code: bool = False) -> dict[str, Any]:
    """DPO from the model at ``model_path`` on ``pairs``; writes ``out_dir/model`` and ``out_dir/train_log.json``.

    Returns the same summary keys as :func:`derta.train.train` plus
    ``reward_margins`` (the logged ``rewards/margins`` per step).
    """
    from datasets import Dataset
    from trl import DPOTrainer

    from derta.modeling import load_model
    from derta.train import check_world_size, finish_training, prepare_distributed_env

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prepare_distributed_env(cfg)
    model, tok = load_model(model_path, trust_remote_code)
    ref, _ = load_model(model_path, trust_remote_code)  # frozen reference: the starting (vanilla) model
    tok.padding_side = "right"
    args = dpo_arguments(cfg, out_dir)
    check_world_size(args)
    ds = Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs])
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok,
                         callbacks=[live.trainer_callback()])
    result = trainer.train()
    hist = trainer.state.log_history
    summary = {
        "log_history": hist,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "train_loss": result.metrics.get("train_loss"),
        "global_step": trainer.state.global_step,
        "n_examples": len(pairs),
        "world_size": trainer.args.world_size,
        "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
        "effective_batch": trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps * trainer.args.world_size,
        "reward_margins": [e["rewards/margins"] for e in hist if "rewards/margins" in e],
        "base_model": str(model_path),
        "beta": cfg.beta,
        "resumed_from": None,
    }
    tok.padding_side = "left"  # generation (steps.evaluate) pads on the left
    return finish_training(trainer, cfg, tok, out_dir, summary)
