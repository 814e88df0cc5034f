"""Training: pretraining of the tiny base model and DeRTa fine-tuning.

Both use the Hugging Face ``Trainer``. The DeRTa objective lives in data
collation (RTO relabelling, :func:`derta.loss.rto_labels`) plus one loss
(:func:`derta.loss.derta_loss`) plugged in through a ~10-line
``compute_loss``; the model's ``forward`` is never copied.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from derta import live
from derta.config import StepConfig
from derta.errors import ConfigError


class LoraConfig(StepConfig):
    """LoRA via PEFT (paper Appendix A: r 96, alpha 16, dropout 0.05 on attention and MLP)."""

    enabled: bool = Field(False, description="Train LoRA adapters instead of all parameters.")
    r: int = Field(96, description="LoRA rank.")
    alpha: int = Field(16, description="LoRA alpha.")
    dropout: float = Field(0.05, description="LoRA dropout.")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Modules that get adapters (attention and MLP projections).",
    )
    target_parameters: list[str] = Field(
        [],
        description="nn.Parameters that get adapters, for fused MoE experts (transformers 5 Mixtral: "
        "experts.gate_up_proj = w1+w3, experts.down_proj = w2); PEFT target_parameters.",
    )
    merge: bool = Field(True, description="Merge adapters into the base weights when saving.")


class TrainConfig(StepConfig):
    """Hyper-parameters of one training run (paper Appendix A for the paper profiles)."""

    seed: int = Field(0, description="Seed of init, data order and RTO keep draws.")
    learning_rate: float = Field(1e-3, description="Peak learning rate.")
    epochs: float = Field(2.0, description="Epochs over the training file (paper 2).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1 = epochs decide; instruct LoRA profile: 100).")
    total_batch_size: int = Field(32, description="Examples per optimizer step over all ranks (paper 128).")
    per_device_batch_size: int = Field(32, description="Examples per forward pass per rank; accumulation = total / (per_device x ranks).")
    max_length: int = Field(192, description="Truncate instances to this many tokens (paper 1024 full / 512 LoRA).")
    sampling: Literal["random", "group_by_length"] = Field(
        "random",
        description="Batch order: random, or group_by_length: batches of like lengths in random order "
        "(LengthBatchSampler), much less padding where short and long instances mix. Its loss is a batch's summed target loss over the "
        "mean targets of an optimizer step (token_norm), so a target weighs the same in a batch of short instances "
        "as in one of long ones, as it does on average in random batches.",
    )
    lr_scheduler: str = Field("cosine", description="Learning-rate schedule (HF name).")
    warmup_ratio: float = Field(0.03, description="Warm-up share of the steps.")
    weight_decay: float = Field(0.0, description="AdamW weight decay (paper 2e-5 full parameter).")
    rto_keep_ratio: float = Field(1.0, description="Share of RTO positions kept as targets (paper: 0.05 full parameter, 1.0 LoRA).")
    refusal_word: str = Field("Sorry", description="The RTO target; must be a single token.")
    bf16: bool = Field(False, description="bf16 mixed precision (GPU profiles; on a CPU with bf16 instructions, "
                       "autocast: a pretraining step of the formats world 0.95 -> 0.63 s at two threads; on a CPU "
                       "without them 1.05 -> 30.8 s, and training warns: see cpu_bf16_warning).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass.")
    deepspeed: str = Field("", description="Path of a DeepSpeed config (ZeRO-2/3); empty = no DeepSpeed.")
    loss_impl: Literal["logits", "chunked"] = Field("logits", description="logits: CE on the model's logits; chunked: memory-lean loss from hidden states and the LM head.")
    loss_chunk_size: int = Field(1024, description="Rows per chunk of the chunked loss.")
    logging_steps: int = Field(5, description="Log every N optimizer steps.")
    save_steps: int = Field(0, description="Checkpoint every N steps (0 = only at the end).")
    save_total_limit: int = Field(2, description="Checkpoints kept.")
    resume: bool = Field(True, description="Resume from the newest checkpoint in the output's checkpoint dir, if any.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings.")
    report_to: list[str] = Field([], description="Live Trainer integrations (e.g. ['mlflow']); the pipeline logs to MLflow after training by default.")
    dataloader_num_workers: int = Field(0, description="DataLoader workers.")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def accumulation_steps(cfg: TrainConfig, ranks: int | None = None) -> int:
    """total = per_device x accumulation x ranks (computed, never hand-entered)."""
    ranks = ranks or world_size()
    per_step = cfg.per_device_batch_size * ranks
    if cfg.total_batch_size % per_step:
        raise ConfigError(
            f"train: total_batch_size {cfg.total_batch_size} is not a multiple of "
            f"per_device_batch_size {cfg.per_device_batch_size} x {ranks} rank(s)"
        )
    return cfg.total_batch_size // per_step


# --- data ---------------------------------------------------------------------

def encode_instances(records: list[dict[str, Any]], tokenizer, max_length: int) -> list[dict[str, Any]]:
    """Tokenize release-format instances: loss only on ``text`` (labels -100 on ``prefix``).

    ``prefix`` and ``text`` are tokenized separately so the label boundary is
    exact, as in the release.
    """
    pre = tokenizer([r["prefix"] for r in records], add_special_tokens=False)["input_ids"]
    txt = tokenizer([r["text"] for r in records], add_special_tokens=False)["input_ids"]
    out = []
    for r, p, t in zip(records, pre, txt):
        ids = (p + t)[:max_length]
        labels = ([-100] * len(p) + t)[:max_length]
        out.append({"input_ids": ids, "labels": labels, "is_rto": r["safe"] == "true"})
    return out


def token_norm(examples: list[dict[str, Any]], cfg: TrainConfig, ranks: int = 1) -> float:
    """Mean loss targets of one rank's share of an optimizer step over an epoch: every shifted label that is
    not -100, an RTO row's at ``cfg.rto_keep_ratio`` (the collator's expected draw)."""
    targets = 0.0
    for e in examples:
        n = sum(1 for t in e["labels"][1:] if t != -100)
        targets += n * cfg.rto_keep_ratio if e["is_rto"] else n
    steps = math.ceil(len(examples) / cfg.total_batch_size)
    return max(targets / (steps * ranks), 1.0)


class LengthBatchSampler:
    """Training order whose consecutive ``batch_size`` slices are instances of like lengths, the slices in random
    order: each epoch sorts the instances by length (ties in random order), cuts them into batches and shuffles
    the batches. Seeded from (seed, epoch); the Trainer sets the epoch (``set_epoch``), so a resumed run draws
    the same order. HF's LengthGroupedSampler instead runs each of its mega-batches from its longest batch
    to its shortest, an order that repeats in every epoch."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        import torch

        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = sorted(torch.randperm(len(self.lengths), generator=gen).tolist(), key=self.lengths.__getitem__)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return iter([i for b in torch.randperm(len(batches), generator=gen).tolist() for i in batches[b]])


def pack_documents(texts: list[str], tokenizer, block_size: int, whole: bool = False) -> list[dict[str, Any]]:
    """Documents, each ended with EOS, packed into training blocks of at most ``block_size`` tokens (pretraining).

    ``whole=False`` concatenates them and cuts every ``block_size`` tokens (a document can straddle two
    blocks; the remainder is dropped). ``whole=True`` never cuts a document that fits in a block: one that
    does not fit in the current block's room starts the next, so a document's beginning and its end are
    learned in one context (the blocks are then shorter, and the collator pads them); a document longer
    than a block is cut into whole blocks and its remainder starts the next one.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    docs = [chunk + [tokenizer.eos_token_id] for chunk in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    if whole:
        blocks = _whole_blocks(docs, block_size)
    else:
        ids = [t for d in docs for t in d]
        blocks = [ids[i * block_size : (i + 1) * block_size] for i in range(len(ids) // block_size)]
    return [{"input_ids": b, "labels": list(b), "is_rto": False} for b in blocks]


def _whole_blocks(docs: list[list[int]], block_size: int) -> list[list[int]]:
    blocks: list[list[int]] = []
    current: list[int] = []
    for doc in docs:
        if current and len(current) + len(doc) > block_size:
            blocks.append(current)
            current = []
        while len(doc) > block_size:
            blocks.append(doc[:block_size])
            doc = doc[block_size:]
        current = current + doc
    return blocks + ([current] if current else [])


@dataclass
class DeRTaCollator:
    """Right-pads a batch and rewrites RTO labels (paper Eq. 2, RTO term).

    Output: input_ids/attention_mask/labels (B, T) and is_rto (B,) bool.

    RTO keep draws (keep_ratio < 1) are a function of (seed, epoch, row):
    each RTO example is relabelled on its own, unpadded, with a generator
    seeded from the run seed, the epoch (set by
    :func:`collator_epoch_callback`) and its dataset ``row`` index (added by
    :func:`train`). So the draws do not depend on batch composition, padding,
    world size or call order, and a run resumed from a checkpoint draws what
    an uninterrupted run draws. Features without ``row`` (standalone use)
    fall back to one generator seeded once from ``seed``.
    """

    pad_id: int
    refusal_id: int
    keep_ratio: float = 1.0
    seed: int = 0

    def __post_init__(self):
        import torch

        self.epoch = 0
        self._gen = torch.Generator().manual_seed(self.seed)

    def _row_generator(self, row: int):
        import numpy as np
        import torch

        hi, lo = np.random.SeedSequence([self.seed, self.epoch, row]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed((int(hi) << 32 | int(lo)) & 0x7FFF_FFFF_FFFF_FFFF)

    def __call__(self, feats: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        from derta.loss import rto_labels

        width = max(len(f["input_ids"]) for f in feats)
        ids = torch.full((len(feats), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(feats), width), -100, dtype=torch.long)
        mask = torch.zeros((len(feats), width), dtype=torch.long)
        is_rto = torch.tensor([bool(f["is_rto"]) for f in feats])
        per_row = self.keep_ratio < 1.0 and all("row" in f for f in feats)
        yes = torch.ones(1, dtype=torch.bool)
        for i, f in enumerate(feats):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            row = torch.tensor(f["labels"])
            if per_row and f["is_rto"]:  # (1, n): the draw sees only this example
                row = rto_labels(row[None], yes, self.refusal_id, self.keep_ratio, generator=self._row_generator(int(f["row"])))[0]
            labels[i, :n] = row
            mask[i, :n] = 1
        if is_rto.any() and not per_row:
            labels = rto_labels(labels, is_rto, self.refusal_id, self.keep_ratio, generator=self._gen)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "is_rto": is_rto}


def collator_epoch_callback(collator: DeRTaCollator):
    """TrainerCallback that tells ``collator`` the epoch its next batches belong to.

    ``on_epoch_begin`` runs before the epoch's dataloader iterator is created
    (so before any of its batches is collated, prefetching included); on
    resume ``state.epoch`` is the checkpoint's fractional epoch.
    """
    from transformers import TrainerCallback

    class CollatorEpochCallback(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            collator.epoch = int(math.floor((state.epoch or 0.0) + 1e-6))

    return CollatorEpochCallback()


def make_trainer_class():
    from transformers import Trainer

    from derta.loss import derta_loss

    class DeRTaTrainer(Trainer):
        """Trainer whose loss is :func:`derta.loss.derta_loss`; logs its MLE and RTO parts."""

        loss_impl = "logits"
        loss_chunk_size = 1024
        loss_is_scaled_for_ga = True  # compute_loss normalises by the accumulated token count
        token_norm: float | None = None  # set: the loss is the summed target loss over this (see TrainConfig.sampling)
        grouped_sampler = None  # set: the training order (a LengthBatchSampler)

        def _get_train_sampler(self, train_dataset=None):
            if self.grouped_sampler is not None:
                return self.grouped_sampler
            return super()._get_train_sampler(train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels, is_rto = inputs.pop("labels"), inputs.pop("is_rto")
            if self.loss_impl == "chunked":
                base = model.get_base_model() if hasattr(model, "get_base_model") else model
                hidden = base.get_decoder()(**inputs).last_hidden_state
                out = derta_loss(hidden, labels, is_rto, lm_head_weight=base.get_output_embeddings().weight, chunk_size=self.loss_chunk_size)
                outputs = None
            else:
                outputs = model(**inputs)
                out = derta_loss(outputs.logits, labels, is_rto)
            acc = self.__dict__.setdefault("_parts", {"mle": 0.0, "n_mle": 0, "rto": 0.0, "n_rto": 0})
            acc["mle"] += float(out.mle_loss) * int(out.n_mle_tokens) if out.n_mle_tokens else 0.0
            acc["rto"] += float(out.rto_loss) * int(out.n_rto_tokens) if out.n_rto_tokens else 0.0
            acc["n_mle"] += int(out.n_mle_tokens)
            acc["n_rto"] += int(out.n_rto_tokens)
            loss = out.loss
            if self.token_norm:
                loss = loss * (out.n_mle_tokens + out.n_rto_tokens) / self.token_norm
            elif num_items_in_batch is not None and int(num_items_in_batch) > 0:
                # Token mean over the whole accumulated (and, across ranks, gathered) batch.
                loss = loss * (out.n_mle_tokens + out.n_rto_tokens) / num_items_in_batch
                if self.args.average_tokens_across_devices and self.args.world_size > 1:
                    loss = loss * self.args.world_size
            else:
                loss = loss / self.current_gradient_accumulation_steps
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            acc = self.__dict__.pop("_parts", None)
            if acc and "loss" in logs:
                if acc["n_mle"]:
                    logs["loss_mle"] = round(acc["mle"] / acc["n_mle"], 6)
                if acc["n_rto"]:
                    logs["loss_rto"] = round(acc["rto"] / acc["n_rto"], 6)
            elif acc:
                self._parts = acc
            return super().log(logs, *args, **kwargs)

    return DeRTaTrainer


def training_arguments(cfg: TrainConfig, out_dir: str | Path, n_examples: int):
    """HF TrainingArguments for ``cfg``; call :func:`prepare_distributed_env` first.

    On a machine without CUDA, ``use_cpu`` is set and, when distributed
    (DeepSpeed or WORLD_SIZE > 1), ``ddp_backend="gloo"``. ``use_cpu`` is what
    makes accelerate build a MULTI_CPU state from RANK/WORLD_SIZE: without it,
    a DeepSpeed run on CPU takes accelerate's DeepSpeed branch, which finds no
    CUDA backend and sets num_processes = 1 on every rank (see
    :func:`check_world_size`).
    """
    from transformers import TrainingArguments

    warn_cpu_bf16(cfg.bf16, "train")
    accum = accumulation_steps(cfg)
    gpu = _has_gpu()
    distributed = bool(cfg.deepspeed) or world_size() > 1
    return TrainingArguments(
        output_dir=str(Path(out_dir) / "checkpoints"),
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=accum,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        deepspeed=cfg.deepspeed or None,
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=cfg.report_to or "none",
        remove_unused_columns=False,
        dataloader_num_workers=cfg.dataloader_num_workers,
        disable_tqdm=True,
        use_cpu=not gpu,
        ddp_backend="gloo" if not gpu and distributed else None,
    )


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_distributed_env(cfg: TrainConfig) -> None:
    """Environment a DeepSpeed run needs, filled in only where missing.

    * No CUDA: ``DS_ACCELERATOR=cpu`` (DeepSpeed's CPU accelerator, gloo/shm comm).
    * A single process with DeepSpeed and no launcher: RANK 0, LOCAL_RANK 0,
      WORLD_SIZE 1, MASTER_ADDR 127.0.0.1 and a free MASTER_PORT, so
      ``python -m steps.train`` works with ``train.deepspeed`` set.
    Under ``deepspeed``/``torchrun`` these come from the launcher and are kept.
    """
    if not cfg.deepspeed:
        return
    if not _has_gpu():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
            os.environ.setdefault(k, v)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))


def check_world_size(args) -> None:
    """Fail fast when the Trainer's view of the job disagrees with the launcher's WORLD_SIZE.

    A mismatch means every rank trains on all data with its own optimizer
    state and its own MLflow run (the CPU/DeepSpeed trap documented in
    docs/paper-scale.md).
    """
    expected = world_size()
    if args.world_size != expected:
        raise ConfigError(
            f"train: the Trainer sees world_size {args.world_size} but WORLD_SIZE={expected}; "
            f"distributed state {args.distributed_state.distributed_type} (backend {args.distributed_state.backend})"
        )


def zero_stage(cfg: TrainConfig) -> int:
    """ZeRO stage of ``cfg.deepspeed`` (0 = no DeepSpeed)."""
    if not cfg.deepspeed:
        return 0
    conf = json.loads(Path(cfg.deepspeed).read_text())
    return int(conf.get("zero_optimization", {}).get("stage", 0))


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_bf16_warning(bf16: bool) -> str | None:
    """Why bf16 is a poor choice here, or None. On a CPU without bf16 instructions (AVX512-BF16 or AMX) PyTorch
    emulates bf16 autocast: one pretraining step of the formats world's model (8 x 512 tokens, two threads) took
    30.8 s against 1.05 s in fp32 on an AMD EPYC with AVX2 only, and 0.63 s against 0.95 s on a CPU with
    AVX512-BF16. The run is still correct, so this warns rather than refuses."""
    import torch

    if not bf16 or _has_gpu():
        return None
    native = [getattr(torch.cpu, f"_is_{isa}_supported", lambda: True)() for isa in ("avx512_bf16", "amx_tile")]
    if any(native):
        return None
    return ("bf16 is set, but this CPU has no bf16 instructions (AVX512-BF16 or AMX): bf16 autocast is emulated and "
            "about 30 times slower than fp32 here; set bf16: false for this machine")


def warn_cpu_bf16(bf16: bool, section: str) -> None:
    import logging

    if why := cpu_bf16_warning(bf16):
        logging.getLogger(__name__).warning("%s: %s", section, why)


def latest_checkpoint(out_dir: str | Path) -> str | None:
    """Newest complete checkpoint in ``out_dir/checkpoints`` (None if there is none).

    The Trainer writes ``trainer_state.json`` last, so a checkpoint without it
    was cut off mid-save (e.g. the job was killed) and is skipped.
    """
    ckpts = [p for p in Path(out_dir, "checkpoints").glob("checkpoint-*")
             if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    ckpts.sort(key=lambda p: int(p.name.split("-")[-1]))
    return str(ckpts[-1]) if ckpts else None


def train(cfg: TrainConfig, model, tokenizer, examples: list[dict[str, Any]], out_dir: str | Path,
          callbacks: list | None = None) -> dict[str, Any]:
    """Train ``model`` on encoded ``examples``; save model + tokenizer + log into ``out_dir``.

    Returns ``{"log_history", "train_runtime_s", "train_tokens", ...}``. The
    final model is saved atomically (temporary dir renamed at the end);
    checkpoints for resume live in ``out_dir/checkpoints``; ``callbacks`` are
    extra ``TrainerCallback``s.

    Distributed: run under ``deepspeed``/``torchrun`` (one process per rank);
    with ``cfg.deepspeed`` set and no launcher a single-process DeepSpeed run is
    set up (:func:`prepare_distributed_env`). The Trainer's world size is
    checked against WORLD_SIZE before training (:func:`check_world_size`).
    """
    from datasets import Dataset

    from derta.modeling import refusal_token_id

    # Only RTO instances need the refusal token (pretraining has none).
    refusal_id = refusal_token_id(tokenizer, cfg.refusal_word) if any(e["is_rto"] for e in examples) else -1
    if tokenizer.pad_token_id is None:  # LLaMA-3 / Mistral base tokenizers have none; padded positions are masked
        tokenizer.pad_token = tokenizer.eos_token
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prepare_distributed_env(cfg)
    stage = zero_stage(cfg)
    loss_impl = _loss_impl(cfg, stage)
    if cfg.lora.enabled:
        model = _wrap_lora(cfg.lora, model)
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
    args = training_arguments(cfg, out_dir, len(examples))
    check_world_size(args)
    ds = Dataset.from_list(examples)
    ds = ds.add_column("row", list(range(len(ds))))  # the RTO keep draw's key (DeRTaCollator)
    collator = DeRTaCollator(tokenizer.pad_token_id, refusal_id, cfg.rto_keep_ratio, seed=cfg.seed)
    trainer_cls = make_trainer_class()
    trainer = trainer_cls(model=model, args=args, train_dataset=ds, data_collator=collator,
                          callbacks=[collator_epoch_callback(collator), live.trainer_callback(), *(callbacks or [])])
    trainer.loss_impl, trainer.loss_chunk_size = loss_impl, cfg.loss_chunk_size
    if cfg.sampling == "group_by_length":
        trainer.token_norm = token_norm(examples, cfg, args.world_size)
        trainer.grouped_sampler = LengthBatchSampler([len(e["input_ids"]) for e in examples],
                                                     cfg.per_device_batch_size, cfg.seed)
    resume = latest_checkpoint(out_dir) if cfg.resume else None
    result = trainer.train(resume_from_checkpoint=resume)
    return finish_training(trainer, cfg, tokenizer, out_dir, _train_summary(trainer, result, examples, cfg, stage, resume))


def finish_training(trainer, cfg: TrainConfig, tokenizer, out_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Save the final model in ``out_dir/model`` and the run's log in ``out_dir/train_log.json``; return ``summary``.
    Run times go to MLflow (the stage's live run), not into the DVC-hashed log."""
    from derta.io import write_json

    save_final_model(trainer, cfg, tokenizer, out_dir / "model")
    hashed, timings = live.split_timings(summary)
    live.log_metrics(timings)
    if trainer.is_world_process_zero():
        write_json(out_dir / "train_log.json", hashed)
    return summary


def _loss_impl(cfg: TrainConfig, stage: int) -> str:
    """The configured loss path, except under ZeRO-3: it partitions lm_head.weight (a 0-size
    placeholder outside the module's forward), so the chunked loss cannot read it."""
    if cfg.loss_impl == "chunked" and stage == 3:
        import logging

        logging.getLogger(__name__).warning("train: loss_impl 'chunked' is not supported under ZeRO-3; using 'logits'")
        return "logits"
    return cfg.loss_impl


def _train_summary(trainer, result, examples: list[dict[str, Any]], cfg: TrainConfig, stage: int,
                   resume: str | None) -> dict[str, Any]:
    args = trainer.args
    return {
        "log_history": trainer.state.log_history,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "train_loss": result.metrics.get("train_loss"),
        "global_step": trainer.state.global_step,
        "n_examples": len(examples),
        "train_tokens": int(sum(len(e["input_ids"]) for e in examples) * cfg.epochs),
        "world_size": args.world_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "effective_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "deepspeed_zero_stage": stage,
        "deepspeed_enabled": bool(trainer.is_deepspeed_enabled),
        "resumed_from": resume,
    }


def save_final_model(trainer, cfg: TrainConfig, tokenizer, path: str | Path) -> None:
    """Save the complete final model (safetensors + tokenizer) at ``path``, atomically; call on every rank.

    * Without DeepSpeed or with ZeRO-1/2 every rank holds the full weights:
      rank 0 saves (LoRA adapters merged first when ``lora.merge``).
    * ZeRO-3 partitions the weights: ``trainer.save_model`` gathers them
      (a collective: every rank calls it; the config must set
      ``stage3_gather_16bit_weights_on_model_save``, checked here) and rank 0
      writes. LoRA under ZeRO-3: the gathered adapter is saved next to the
      model (``<path>.adapter``) and rank 0 merges it into the base model
      reloaded on CPU from ``name_or_path``.
    """
    import torch.distributed as dist

    from derta.io import atomic_path

    path = Path(path)
    stage = zero_stage(cfg)
    lora = getattr(cfg, "lora", None)
    merge = bool(lora is not None and lora.enabled and lora.merge)
    if stage == 3:
        conf = json.loads(Path(cfg.deepspeed).read_text())
        if not conf.get("zero_optimization", {}).get("stage3_gather_16bit_weights_on_model_save", False):
            raise ConfigError(f"train: {cfg.deepspeed} must set zero_optimization.stage3_gather_16bit_weights_on_model_save "
                              "true, or the saved ZeRO-3 model is empty")
        staging = path.parent / f".{path.name}.zero3"  # same name on every rank
        trainer.save_model(str(staging))
        if trainer.is_world_process_zero():
            with atomic_path(path) as tmp:
                if merge:
                    _merge_saved_adapter(trainer.model, staging, tmp)
                else:
                    staging.rename(tmp)
                tokenizer.save_pretrained(str(tmp))
            import shutil
            shutil.rmtree(staging, ignore_errors=True)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        return
    if trainer.is_world_process_zero():
        final = trainer.model
        if merge:
            final = final.merge_and_unload()
        with atomic_path(path) as tmp:
            final.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))


def _merge_saved_adapter(peft_model, adapter_dir: Path, out: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = peft_model.peft_config["default"].base_model_name_or_path
    if not base_path:
        raise ConfigError("train: LoRA under ZeRO-3 needs a base model loaded from a path (model.path) to merge into")
    base = AutoModelForCausalLM.from_pretrained(base_path, torch_dtype="auto", use_safetensors=True)
    PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().save_pretrained(str(out), safe_serialization=True)


def _wrap_lora(cfg: LoraConfig, model):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    return get_peft_model(
        model,
        PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
                       target_parameters=list(cfg.target_parameters) or None, task_type="CAUSAL_LM"),
    )


def losses_from_log(log_history: list[dict[str, Any]]) -> list[tuple[int, dict[str, float]]]:
    """(step, {loss, loss_mle, loss_rto, learning_rate}) entries of a Trainer log."""
    keys = ("loss", "loss_mle", "loss_rto", "learning_rate", "grad_norm")
    out = []
    for e in log_history:
        if "loss" in e and "step" in e:
            vals = {k: float(e[k]) for k in keys if k in e and e[k] is not None and not (isinstance(e[k], float) and math.isnan(e[k]))}
            out.append((int(e["step"]), vals))
    return out


def read_train_log(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
