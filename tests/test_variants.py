"""derta.variants.synthesize: pins the paper's / release's data-synthesis rules."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from derta.errors import ConfigError
from derta.miniworld import MiniWorldConfig, generate, word_units
from derta.variants import VARIANTS, SynthesizeConfig, synthesize

WORLD_CFG = MiniWorldConfig(
    n_safety_train=60, n_helpful_train=50, n_eval_harmful=20, n_eval_helpful=20, n_dev_harmful=10,
    n_dev_helpful=10, web_harmful_docs=40, web_chatter_docs=20, web_faq_docs=40, n_entities=40,
)
N = 30  # n_triples: 2N == n_safety_train
N_HELP = 40


@pytest.fixture(scope="module")
def world():
    return generate(WORLD_CFG)


@pytest.fixture(scope="module")
def out(world):
    return synthesize(SynthesizeConfig(n_triples=N, n_helpful=N_HELP), world["safety_train"], world["helpful_train"])


@pytest.fixture(scope="module")
def by_id(world):
    return {r["id"]: r for r in world["safety_train"]}


def _kinds(recs):
    return Counter(r["kind"] for r in recs)


def test_counts(out):
    assert _kinds(out["vanilla"]) == {"helpful": N_HELP, "safe": 2 * N}
    assert _kinds(out["vanilla_half"]) == {"helpful": N_HELP, "safe": N}
    assert _kinds(out["harmful_prefix"]) == {"helpful": N_HELP, "harmful_prefix": N}
    assert _kinds(out["rto"]) == {"helpful": N_HELP, "safe": N, "rto": N}
    assert _kinds(out["derta"]) == {"helpful": N_HELP, "harmful_prefix": N, "rto": N}
    assert _kinds(out["recaug"]) == {"helpful": N_HELP, "harmful_prefix": 2 * N}
    assert "rto" not in _kinds(out["recaug"])
    assert len(out["dpo_pairs"]) == 2 * N
    assert set(out) == set(VARIANTS) | {"dpo_pairs"}


def _prefix_rows_in_order(cfg, world, variant):
    """harmful_prefix rows in their build order (the index i of the k rule)."""
    from derta.variants import Builder, prefix_length  # noqa: F401
    import random

    rng = random.Random(cfg.seed)
    order = list(range(len(world["safety_train"])))
    rng.shuffle(order)
    pool = [world["safety_train"][i] for i in order[: 2 * cfg.n_triples]]
    rows = pool[: cfg.n_triples] if variant == "harmful_prefix" else pool
    return rows


def test_release_rule_k(out, world, by_id):
    cfg = SynthesizeConfig(n_triples=N, n_helpful=N_HELP)
    for variant in ("harmful_prefix", "derta", "recaug"):
        recs = [r for r in out[variant] if r["kind"] == "harmful_prefix"]
        rows = _prefix_rows_in_order(cfg, world, "recaug" if variant == "recaug" else "harmful_prefix")
        k_by_src = {r["source_id"]: r["k"] for r in recs}
        assert len(k_by_src) == len(rows)
        zero = [i for i, row in enumerate(rows) if k_by_src[row["id"]] == 0]
        assert zero == [i for i in range(len(rows)) if i % 3 == 0], variant
        assert sum(1 for r in recs if r["k"] == 0) / len(recs) == pytest.approx(1 / 3, abs=1 / len(recs))
        for r in recs:
            n_units = len(word_units(by_id[r["source_id"]]["output"]))
            if r["k"]:
                assert 1 <= r["k"] <= n_units - 2
            # the prefix is the prompt plus exactly k word units of the harmful response
            units = word_units(by_id[r["source_id"]]["output"])
            tail = r["prefix"].split("[\\INST]", 1)[1]
            assert tail == ((" " + "".join(units[: r["k"]]).rstrip()) if r["k"] else "")
            assert r["text"] == " " + by_id[r["source_id"]]["safe_response"] + "<|end_of_text|>"
            assert r["safe"] == "false"


def test_release_rule_share_exact(out):
    recs = [r for r in out["harmful_prefix"] if r["kind"] == "harmful_prefix"]
    assert sum(r["k"] == 0 for r in recs) == len(range(0, N, 3))  # N=30 -> exactly 1/3
    assert sum(r["k"] == 0 for r in recs) / len(recs) == pytest.approx(1 / 3)


def test_paper_rule_k(world, by_id):
    out = synthesize(SynthesizeConfig(n_triples=N, n_helpful=N_HELP, prefix_rule="paper", variants=["recaug"]),
                     world["safety_train"], world["helpful_train"])
    recs = [r for r in out["recaug"] if r["kind"] == "harmful_prefix"]
    ks = []
    for r in recs:
        n_units = len(word_units(by_id[r["source_id"]]["output"]))
        assert 0 <= r["k"] <= n_units
        ks.append(r["k"])
    assert len(set(ks)) > 5  # not the release's fixed pattern


def test_rto_instances(out, by_id):
    for variant in ("rto", "derta"):
        rto = [r for r in out[variant] if r["kind"] == "rto"]
        assert len(rto) == N
        for r in rto:
            src = by_id[r["source_id"]]
            assert r["text"] == " " + src["output"] + "<|end_of_text|>"
            assert r["safe"] == "true"
            assert r["prefix"] == f"[INST] {src['instruction']} [\\INST]"
    non_rto = [r for v in VARIANTS for r in out[v] if r["kind"] != "rto"]
    assert all(r["safe"] == "false" for r in non_rto)


def test_dpo_pairs(out, by_id):
    for p in out["dpo_pairs"]:
        src = by_id[p["source_id"]]
        assert p["chosen"] == src["safe_response"] + "<|end_of_text|>"
        assert p["rejected"] == src["output"] + "<|end_of_text|>"
        assert p["prompt"].endswith("[\\INST] ")


def test_byte_identical(world, out):
    again = synthesize(SynthesizeConfig(n_triples=N, n_helpful=N_HELP), world["safety_train"], world["helpful_train"])
    assert json.dumps(again, sort_keys=True) == json.dumps(out, sort_keys=True)
    other = synthesize(SynthesizeConfig(n_triples=N, n_helpful=N_HELP, seed=1), world["safety_train"], world["helpful_train"])
    assert json.dumps(other, sort_keys=True) != json.dumps(out, sort_keys=True)


def test_unknown_variant(world):
    with pytest.raises(ConfigError) as e:
        synthesize(SynthesizeConfig(n_triples=N, variants=["vanilla", "bogus"]), world["safety_train"], world["helpful_train"])
    msg = str(e.value)
    assert "bogus" in msg
    for v in VARIANTS:
        assert v in msg


def test_unknown_config_key():
    with pytest.raises(ConfigError) as e:
        SynthesizeConfig.from_dict({"n_triple": 3})
    assert "n_triple" in str(e.value) and "n_triples" in str(e.value)


def test_too_few_triples(world):
    with pytest.raises(ConfigError):
        synthesize(SynthesizeConfig(n_triples=31, n_helpful=N_HELP), world["safety_train"], world["helpful_train"])


def test_short_answers_repeat_and_nothing_else_changes(world, out):
    """short_answer_repeats: each helpful record whose answer has at most short_answer_words words
    appears that many times (distinct ids); 1 (the default) builds exactly the records it always did."""
    cfg = SynthesizeConfig(n_triples=N, n_helpful=N_HELP, short_answer_repeats=3, short_answer_words=2)
    rows = world["helpful_train"][: N_HELP - 5] + [
        {"id": f"long-{i}", "instruction": f"How do I fold towel {i}?", "output": "Lay it flat. Fold it in half. Fold it again."}
        for i in range(5)]
    rep = synthesize(cfg, world["safety_train"], rows)
    short = {r["id"] for r in rows if len(r["output"].split()) <= 2}
    assert len(short) == N_HELP - 5  # the lookups; not the five procedures
    for variant in VARIANTS:
        helpful = [r for r in rep[variant] if r["kind"] == "helpful"]
        per_source = Counter(r["source_id"] for r in helpful)
        assert per_source == {r["id"]: 3 if r["id"] in short else 1 for r in rows}, variant
        assert len({r["id"] for r in rep[variant]}) == len(rep[variant])
        others = [r for r in rep[variant] if r["kind"] != "helpful"]
        assert sorted(others, key=lambda r: r["id"]) == sorted((r for r in out[variant] if r["kind"] != "helpful"),
                                                               key=lambda r: r["id"])
    one = synthesize(SynthesizeConfig(n_triples=N, n_helpful=N_HELP, short_answer_repeats=1, short_answer_words=2),
                     world["safety_train"], world["helpful_train"])
    assert json.dumps(one, sort_keys=True) == json.dumps(out, sort_keys=True)
