"""derta.train: DeRTa collation, batch arithmetic, and a tiny pinned training run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from derta.errors import ConfigError
from derta.train import DeRTaCollator, TrainConfig, accumulation_steps

# Losses of the first 4 logged steps of the tiny run below (CPU, torch/transformers as pinned
# in constraints.txt). A change here means training changed: check why before re-pinning.
# Re-pinned 2026-12-02: the mini-world's capitals became 2-3 syllables (issue 10), so the world's text and the
# tokenizer trained on it changed; the run stayed deterministic (the two runs below agree).
PINNED_LOSSES = [6.222760200500488, 6.2382893562316895, 6.155540943145752, 6.158099174499512]


def _feat(ids, labels, rto):
    return {"input_ids": ids, "labels": labels, "is_rto": rto}


def test_collator_rewrites_rto_rows_only():
    col = DeRTaCollator(pad_id=0, refusal_id=7, keep_ratio=1.0, seed=0)
    feats = [
        _feat([5, 6, 8, 9], [-100, -100, 8, 9], True),
        _feat([5, 6, 8], [-100, 6, 8], False),
    ]
    b = col(feats)
    assert b["input_ids"].tolist() == [[5, 6, 8, 9], [5, 6, 8, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert b["labels"].tolist() == [[-100, -100, 7, 7], [-100, 6, 8, -100]]
    assert b["is_rto"].tolist() == [True, False]


def test_collator_no_rto_is_plain_padding():
    col = DeRTaCollator(pad_id=1, refusal_id=7)
    b = col([_feat([3], [3], False), _feat([3, 4], [-100, 4], False)])
    assert b["labels"].tolist() == [[3, -100], [-100, 4]]
    assert b["input_ids"].tolist() == [[3, 1], [3, 4]]


def test_collator_keep_ratio_seeded():
    feats = [_feat(list(range(2, 42)), list(range(2, 42)), True)]
    a = DeRTaCollator(0, 7, keep_ratio=0.5, seed=3)(feats)["labels"]
    b = DeRTaCollator(0, 7, keep_ratio=0.5, seed=3)(feats)["labels"]
    assert torch.equal(a, b)
    assert set(a.flatten().tolist()) <= {7, -100}
    assert 0 < int((a == 7).sum()) < 40


def test_accumulation_steps():
    cfg = TrainConfig(total_batch_size=128, per_device_batch_size=8)
    assert accumulation_steps(cfg, ranks=1) == 16
    assert accumulation_steps(cfg, ranks=4) == 4
    assert accumulation_steps(cfg, ranks=16) == 1
    with pytest.raises(ConfigError, match="not a multiple"):
        accumulation_steps(cfg, ranks=3)
    with pytest.raises(ConfigError):
        accumulation_steps(TrainConfig(total_batch_size=32, per_device_batch_size=5), ranks=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from derta.miniworld import MiniWorldConfig
    from derta.modeling import TokenizerConfig
    from derta.variants import SynthesizeConfig, synthesize
    from derta.io import read_jsonl
    from steps import source, tokenizer

    root = tmp_path_factory.mktemp("tiny")
    world = dict(n_safety_train=60, n_helpful_train=50, n_eval_harmful=20, n_eval_helpful=20, n_dev_harmful=10,
                 n_dev_helpful=10, web_harmful_docs=40, web_chatter_docs=20, web_faq_docs=40, n_entities=40)
    assert MiniWorldConfig(**world)
    source.run(source.SourceConfig(miniworld=world), root / "src")
    # vocab 400 cannot make the refusal word one token on this small world (see report); 500 can.
    tok = tokenizer.run(TokenizerConfig(vocab_size=500, refusal_word=" Sorry"), root / "src", root / "tok")
    data = synthesize(SynthesizeConfig(n_triples=20, n_helpful=40, variants=["derta"]),
                      read_jsonl(root / "src" / "safety_train.jsonl"), read_jsonl(root / "src" / "helpful_train.jsonl"))
    return root, tok, data["derta"]


def _tiny_model(tok):
    from derta.modeling import ModelConfig, build_model

    return build_model(ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2), tok, seed=0)


def _run(tiny, out: Path):
    from derta.train import encode_instances, train

    _, tok, recs = tiny
    torch.set_num_threads(1)
    model = _tiny_model(tok)
    cfg = TrainConfig(epochs=1, max_steps=4, total_batch_size=8, per_device_batch_size=8, logging_steps=1,
                      learning_rate=1e-3, refusal_word=" Sorry", seed=0)
    return train(cfg, model, tok, encode_instances(recs, tok, cfg.max_length), out)


def test_tiny_run_deterministic_and_pinned(tiny, tmp_path):
    from derta.train import losses_from_log

    a = _run(tiny, tmp_path / "a")
    b = _run(tiny, tmp_path / "b")
    la = losses_from_log(a["log_history"])
    lb = losses_from_log(b["log_history"])
    losses = [v["loss"] for _, v in la]
    assert [s for s, _ in la] == [1, 2, 3, 4]
    assert losses == [v["loss"] for _, v in lb]
    assert la == lb
    assert a["global_step"] == 4
    assert any("loss_mle" in v for _, v in la) and any("loss_rto" in v for _, v in la)
    assert losses == pytest.approx(PINNED_LOSSES, rel=1e-4)
    for out in (tmp_path / "a", tmp_path / "b"):
        assert (out / "model" / "model.safetensors").is_file()
        assert (out / "model" / "tokenizer.json").is_file()
        assert (out / "train_log.json").is_file()


class _WordTokenizer:
    """One token per word (its length), EOS 0: enough to see where pack_documents cuts."""

    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[len(w) for w in t.split()] for t in texts]}


def _pack(texts, block, whole):
    from derta.train import pack_documents

    return [b["input_ids"] for b in pack_documents(texts, _WordTokenizer(), block, whole=whole)]


def test_concat_packing_cuts_documents_at_every_block():
    # 4 + 1 EOS, 3 + 1, 2 + 1 = 12 tokens: three blocks of 4, the second document straddles two
    assert _pack(["a bb ccc dddd", "a bb ccc", "a bb"], 4, whole=False) == [[1, 2, 3, 4], [0, 1, 2, 3], [0, 1, 2, 0]]


def test_whole_packing_never_cuts_a_document_that_fits_a_block():
    blocks = _pack(["a bb ccc", "a bb ccc", "a", "a bb"], 6, whole=True)
    assert blocks == [[1, 2, 3, 0], [1, 2, 3, 0, 1, 0], [1, 2, 0]]
    assert all(len(b) <= 6 for b in blocks)


def test_whole_packing_cuts_a_longer_document_into_whole_blocks_and_keeps_every_token():
    texts = ["a", "a bb ccc dddd eeeee ffffff ggggggg"]  # 2 tokens, then 8: longer than a block of 3
    blocks = _pack(texts, 3, whole=True)
    assert blocks == [[1, 0], [1, 2, 3], [4, 5, 6], [7, 0]]
    assert sum(map(len, blocks)) == 10


def test_pretraining_blocks_longer_than_the_model_positions_are_an_error(tmp_path):
    from derta.modeling import ModelConfig
    from steps.pretrain import PretrainConfig, run

    with pytest.raises(ConfigError, match="pretrain.block_size 1024 is longer than the model's max_position_embeddings 512"):
        run(PretrainConfig(block_size=1024), ModelConfig(), tmp_path, tmp_path, tmp_path / "out")


def _padding_of_one_epoch(tiny, tmp_path, monkeypatch, **cfg):
    """(padded cells, real tokens, examples seen) of one epoch over the tiny data, from the collator's batches."""
    from derta.train import encode_instances, train

    _, tok, recs = tiny
    seen = []
    call = DeRTaCollator.__call__

    def record(self, feats):
        seen.append([len(f["input_ids"]) for f in feats])
        return call(self, feats)

    monkeypatch.setattr(DeRTaCollator, "__call__", record)
    torch.set_num_threads(1)
    model = _tiny_model(tok)
    examples = encode_instances(recs, tok, 192)
    train(TrainConfig(epochs=1, total_batch_size=4, per_device_batch_size=4, refusal_word=" Sorry", seed=0, **cfg),
          model, tok, examples, tmp_path)
    return sum(max(b) * len(b) for b in seen), sum(map(sum, seen)), sum(map(len, seen)), len(examples)


def test_group_by_length_batches_like_lengths_and_still_sees_every_example_once(tiny, tmp_path, monkeypatch):
    rand_cells, rand_tokens, rand_n, n = _padding_of_one_epoch(tiny, tmp_path / "r", monkeypatch)
    group_cells, group_tokens, group_n, _ = _padding_of_one_epoch(tiny, tmp_path / "g", monkeypatch, sampling="group_by_length")
    assert rand_n == group_n == n and rand_tokens == group_tokens
    assert group_cells < rand_cells
    assert group_cells - group_tokens < 0.5 * (rand_cells - rand_tokens)


def test_bf16_trains_on_cpu_and_saves_float32_weights(tiny, tmp_path):
    from safetensors import safe_open

    from derta.train import encode_instances, train

    _, tok, recs = tiny
    model = _tiny_model(tok)
    s = train(TrainConfig(max_steps=2, total_batch_size=4, per_device_batch_size=4, refusal_word=" Sorry", bf16=True),
              model, tok, encode_instances(recs, tok, 192), tmp_path)
    assert s["global_step"] == 2 and s["train_loss"] > 0
    with safe_open(str(tmp_path / "model" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}


@pytest.mark.parametrize(("avx512_bf16", "amx", "cuda", "warns"), [
    (False, False, False, True),   # an AVX2-only CPU (AMD EPYC, 2026-12-07): emulated, 30x slower than fp32
    (True, False, False, False),   # AVX512-BF16: native
    (False, True, False, False),   # AMX: native
    (False, False, True, False),   # a GPU trains in bf16 itself
])
def test_bf16_on_a_cpu_without_bf16_instructions_warns_before_training(monkeypatch, caplog, tmp_path, avx512_bf16, amx, cuda,
                                                                      warns):
    from derta.train import cpu_bf16_warning, training_arguments

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert (cpu_bf16_warning(True) is not None) is warns
    assert cpu_bf16_warning(False) is None  # fp32: nothing to say
    if not cuda:  # TrainingArguments(bf16=True) on a machine without CUDA is what this guards
        with caplog.at_level("WARNING", logger="derta.train"):
            training_arguments(TrainConfig(bf16=True, total_batch_size=4, per_device_batch_size=4), tmp_path, 8)
        assert ("no bf16 instructions" in caplog.text) is warns


def test_token_norm_is_the_mean_targets_of_an_optimizer_step():
    from derta.train import token_norm

    ex = [_feat([1, 2, 3, 4], [-100, 2, 3, 4], False),       # 3 targets once shifted
          _feat([1, 2, 3], [-100, -100, 3], False),           # 1
          _feat([1, 2, 3, 4, 5], [-100, 2, 3, 4, 5], True)]   # 4, kept at 0.5: 2 expected
    cfg = TrainConfig(total_batch_size=2, per_device_batch_size=2, rto_keep_ratio=0.5)
    assert token_norm(ex, cfg) == pytest.approx(6 / 2)         # two optimizer steps an epoch
    assert token_norm(ex, cfg, ranks=2) == pytest.approx(6 / 4)


def test_a_grouped_batch_loss_is_its_summed_target_loss_over_the_token_norm(tiny, tmp_path):
    from derta.train import encode_instances, make_trainer_class, training_arguments

    _, tok, recs = tiny
    model = _tiny_model(tok)
    cfg = TrainConfig(total_batch_size=4, per_device_batch_size=4, refusal_word=" Sorry")
    trainer = make_trainer_class()(model=model, args=training_arguments(cfg, tmp_path, 4))
    feats = [e for e in encode_instances(recs, tok, 192) if not e["is_rto"]][:4]
    batch = DeRTaCollator(tok.pad_token_id, 0)(feats)
    targets = int((batch["labels"][:, 1:] != -100).sum())
    mean = trainer.compute_loss(model, dict(batch), num_items_in_batch=targets)
    trainer.token_norm = 2.5 * targets
    assert float(trainer.compute_loss(model, dict(batch), num_items_in_batch=targets)) == pytest.approx(float(mean) / 2.5, rel=1e-5)


def test_length_batch_sampler_groups_like_lengths_in_random_batch_order_seeded_by_epoch():
    from derta.train import LengthBatchSampler

    lengths = [(i * 37) % 101 + 1 for i in range(400)]
    s = LengthBatchSampler(lengths, batch_size=8, seed=3)
    first = list(s)
    assert sorted(first) == list(range(400))
    batches = [first[i : i + 8] for i in range(0, 400, 8)]
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    assert all(hi <= lo2 for (_, hi), (lo2, _) in zip(spans, spans[1:]))  # each batch a slice of the sorted lengths
    maxima = [max(lengths[i] for i in b) for b in batches]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)  # batches in random order
    assert list(LengthBatchSampler(lengths, batch_size=8, seed=3)) == first
    s.set_epoch(1)
    assert list(s) != first and sorted(s) == list(range(400))
    assert list(LengthBatchSampler(lengths, batch_size=8, seed=4)) != first
