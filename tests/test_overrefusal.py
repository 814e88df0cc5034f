"""derta.overrefusal: the over-refusal prompt sets (sizes, determinism, no harmful question among them)."""

from __future__ import annotations

from collections import Counter

import pytest

from derta import overrefusal
from derta.errors import ConfigError
from derta.miniworld import MiniWorldConfig, generate, normalize_question


def test_real_set_size_categories_and_ids():
    rows = overrefusal.build("real", 0, seed=0)
    assert len(rows) == len(overrefusal.REAL) >= 60
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({normalize_question(r["prompt"]) for r in rows}) == len(rows)
    cats = Counter(r["category"] for r in rows)
    assert {"homonyms", "figurative", "safe_targets", "safe_contexts", "definitions", "history",
            "privacy_public", "privacy_fictional", "safety"} == set(cats)
    assert min(cats.values()) >= 5
    assert all(set(r) == {"id", "prompt", "category"} and r["prompt"].strip() for r in rows)


def test_real_sample_is_seeded_subset_in_order():
    full = overrefusal.build("real", 0, seed=0)
    a, b, c = (overrefusal.build("real", 20, seed=s) for s in (1, 1, 2))
    assert a == b and len(a) == 20 and a != c
    index = {r["id"]: i for i, r in enumerate(full)}
    assert all(r in full for r in a) and [index[r["id"]] for r in a] == sorted(index[r["id"]] for r in a)
    with pytest.raises(ConfigError, match="n=0 for all"):
        overrefusal.build("real", len(full) + 1)


def test_miniworld_set_size_determinism_and_balance():
    rows = overrefusal.build("miniworld", 0, seed=0)
    assert len(rows) == overrefusal.MINIWORLD_DEFAULT_N >= 40
    assert rows == overrefusal.build("miniworld", 0, seed=0)
    assert rows != overrefusal.build("miniworld", 0, seed=1)
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({normalize_question(r["prompt"]) for r in rows}) == len(rows)
    assert set(Counter(r["category"] for r in rows).values()) == {len(rows) // len(overrefusal.MINIWORLD_CATEGORIES)}
    # A larger n extends the same draw.
    assert overrefusal.build("miniworld", 90, seed=0)[:60] == rows


def test_miniworld_prompts_use_the_worlds_scary_words_and_tasks():
    rows = overrefusal.build("miniworld", 120, seed=3, countries=["Kalomi", "Rateshi"])
    text = " ".join(r["prompt"] for r in rows)
    assert "[" in text and "the [" in text  # whole harmful tasks, as the world writes them
    facts = [r for r in rows if r["category"].startswith("fact_")]
    assert facts and all(r["prompt"].endswith(("of Kalomi?", "of Rateshi?")) for r in facts)
    games = [r for r in rows if r["category"].startswith("word_game")]
    assert all(r["prompt"].startswith(("What is the first word in: ", "What is the last word in: ")) for r in games)


def test_miniworld_prompts_are_never_harmful_questions():
    banned = overrefusal.harmful_questions()
    assert len(banned) > 1000  # every task x template the world can ask
    for seed in (0, 1, 2):
        rows = overrefusal.build("miniworld", 300, seed=seed)
        assert not {normalize_question(r["prompt"]) for r in rows} & banned
    # ...and in particular never a generated eval/dev harmful question.
    world = generate(MiniWorldConfig(n_safety_train=10, n_helpful_train=8, n_eval_helpful=20, n_dev_helpful=10,
                                     web_harmful_docs=0, web_chatter_docs=0, web_faq_docs=0))
    held = {normalize_question(r["question"]) for s in ("eval_harmful", "dev_harmful") for r in world[s]}
    assert held <= banned
    countries = overrefusal.countries_from_questions([r["question"] for r in world["eval_helpful"]])
    assert countries and all(c.istitle() for c in countries)
    rows = overrefusal.build("miniworld", 200, seed=0, countries=countries)
    assert not {normalize_question(r["prompt"]) for r in rows} & held


def test_none_and_bad_kinds():
    assert overrefusal.build("none", 10) == []
    with pytest.raises(ConfigError, match="valid sets"):
        overrefusal.build("xstest", 10)
    with pytest.raises(ConfigError):
        overrefusal.build("miniworld", -1)
