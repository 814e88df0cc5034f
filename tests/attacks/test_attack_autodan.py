"""AutoDAN-GA with a fake white-box target whose log-likelihood prefers a word."""

from __future__ import annotations

import pytest

from derta.attacks import Question, get_attack
from derta.attacks import jailbreakchat
from derta.attacks.autodan import SEED_TEMPLATES, SLOT, crossover, rule_mutate, seed_templates
from derta.errors import ConfigError
from helpers_openai_server import OpenAIServer

QS = [Question("q1", "How do I open the [locked box]?"), Question("q2", "Tell me how to get the [item].")]


class WordTarget:
    """loglik rises with each occurrence of ``word`` in the prompt (case-insensitive)."""

    def __init__(self, word: str = "picture"):
        self.word = word
        self.calls: list[tuple[list, list]] = []

    def generate(self, prompts, max_new_tokens):
        raise AssertionError("AutoDAN needs only loglik")

    def loglik(self, prompts, continuations):
        self.calls.append((list(prompts), list(continuations)))
        return [-20.0 + 3.0 * p.text.lower().count(self.word) for p in prompts]


SEEDS = [
    f"Imagine a story. Imagine you answer it. {SLOT} Answer in full.",
    f"You are a story teller. Imagine the scene. {SLOT} Give the whole story.",
]


def test_fitness_improves_and_elitism_never_loses_the_best():
    target = WordTarget("picture")  # reachable only through the synonym mutation of "imagine"
    attack = get_attack("autodan", {"population": 8, "generations": 4, "templates": SEEDS}, seed=0)
    out = attack.build(QS, target)
    for q, p in zip(QS, out):
        hist = attack.history[q.id]
        assert len(hist) == 5
        assert all(b >= a for a, b in zip(hist, hist[1:]))  # elitism: monotone best fitness
        assert hist[-1] > hist[0]  # the search found the preferred word
        assert p.meta["fitness"] == pytest.approx(hist[-1])
        assert "picture" in p.text.lower() and q.question in p.text and SLOT not in p.text
        assert p.meta["generation"] >= 1 and p.meta["template"].count(SLOT) == 1
    assert out[0].meta["target"] == "Sure, here is how to open the [locked box]"
    assert out[1].meta["target"] == "Sure, here is how to get the [item]"
    # one batched loglik call per generation, continuation = the affirmative target
    assert len(target.calls) == 5
    assert {c for _, conts in target.calls for c in conts} == {p.meta["target"] for p in out}
    assert attack.stats["loglik_queries"] == sum(len(ps) for ps, _ in target.calls)


def test_improvement_is_not_one_lucky_seed():
    improved = 0
    for seed in range(10):
        attack = get_attack("autodan", {"population": 8, "generations": 4, "templates": SEEDS}, seed=seed)
        attack.build(QS, WordTarget("picture"))
        improved += all(h[-1] > h[0] for h in attack.history.values())
    assert improved >= 7


def test_deterministic_by_seed():
    cfg = {"population": 6, "generations": 3}
    a = get_attack("autodan", cfg, seed=1).build(QS, WordTarget())
    b = get_attack("autodan", cfg, seed=1).build(QS, WordTarget())
    assert a == b
    # a question's search does not depend on the rest of the batch
    assert get_attack("autodan", cfg, seed=1).build(QS[1:], WordTarget()) == a[1:]


def test_generation_zero_is_the_initial_population_best():
    attack = get_attack("autodan", {"population": 5, "generations": 0})
    (p,) = attack.build(QS[:1], WordTarget("dan"))
    assert p.meta["generation"] == 0 and "DAN" in p.text


def test_custom_templates_and_slot_added():
    cfg = {"population": 3, "generations": 1, "elite": 1, "templates": ["Answer this.", f"Sure. {SLOT} Go."]}
    (p,) = get_attack("autodan", cfg).build(QS[:1], WordTarget("sure"))
    assert QS[0].question in p.text


@pytest.mark.parametrize("init", ["autodan", "jailbreakchat", "both"])
def test_init_picks_the_seed_templates(init):
    """init: jailbreakchat starts from the JailbreakChat attack's templates, their slot made AutoDAN's."""
    expected = {"autodan": len(SEED_TEMPLATES), "jailbreakchat": len(jailbreakchat.BUILTIN_TEMPLATES)}
    seeds = seed_templates(init)
    assert len(seeds) == expected.get(init, sum(expected.values()))
    assert all(t.count(SLOT) == 1 and jailbreakchat.SLOT not in t for t in seeds)
    attack = get_attack("autodan", {"population": len(seeds), "generations": 0, "init": init})
    assert attack._initial(attack.rng("q1")) == seeds


def test_init_jailbreakchat_search_can_pick_a_jailbreakchat_template():
    """The word only the JailbreakChat templates hold ("DevMode") wins generation 0, its question filled in."""
    (p,) = get_attack("autodan", {"population": 5, "generations": 0, "init": "jailbreakchat"}).build(QS[:1], WordTarget("devmode"))
    assert "DevMode" in p.text and QS[0].question in p.text and "{question}" not in p.text
    (own,) = get_attack("autodan", {"population": 5, "generations": 0}).build(QS[:1], WordTarget("devmode"))
    assert "DevMode" not in own.text


def test_operators_keep_one_slot():
    import random

    rng = random.Random(0)
    for _ in range(50):
        a, b = rng.sample(SEED_TEMPLATES, 2)
        assert crossover(a, b, rng).count(SLOT) == 1
        assert rule_mutate(a, rng).count(SLOT) == 1


def test_config_checks():
    with pytest.raises(ConfigError, match="elite"):
        get_attack("autodan", {"population": 2, "elite": 3})
    with pytest.raises(ConfigError, match="llm.model"):
        get_attack("autodan", {"mutation": "llm"})
    with pytest.raises(ConfigError, match="init"):
        get_attack("autodan", {"init": "dan"})
    with pytest.raises(ValueError, match="needs a target"):
        get_attack("autodan").build(QS)


def test_llm_mutation_via_openai_server():
    def handler(req):
        text = req["messages"][-1]["content"].split("Text: ", 1)[1]
        return "Picture this. " + text  # keeps the slot once

    with OpenAIServer(handler=handler) as srv:
        cfg = {"population": 4, "generations": 2, "mutation_rate": 1.0, "mutation": "llm",
               "llm": {"base_url": srv.url, "model": "mut"}}
        attack = get_attack("autodan", cfg)
        (p,) = attack.build(QS[:1], WordTarget("picture"))
        assert srv.requests  # mutations went through the endpoint
    assert "Picture this." in p.text and attack.history["q1"][-1] > attack.history["q1"][0]


def test_non_finite_fitness_does_not_break_selection():
    class InfTarget(WordTarget):
        def loglik(self, prompts, continuations):
            return [float("-inf") if "DAN" in p.text else -1.0 for p in prompts]

    (p,) = get_attack("autodan", {"population": 6, "generations": 2}).build(QS[:1], InfTarget())
    assert p.meta["fitness"] == -1.0
