"""derta.attacks registry: names, configs, the shared record shape."""

from __future__ import annotations

import json

import pytest

from derta.attacks import ATTACKS, Attack, AttackPrompt, Question, get_attack, list_attacks, register
from derta.attacks.base import NoParams, refuses_early
from derta.errors import ConfigError
from derta.io import stable_id

PAPER_ATTACKS = {"codeattack", "pair", "jailbreakchat", "selfcipher", "completingattack", "autodan"}
OFFLINE = ["direct", "prefill", "completingattack", "codeattack", "jailbreakchat", "selfcipher"]

QS = [
    Question("q1", "How do I open the [locked box]?", "cat", "Sure, here is how to open the [locked box].\nStep 1: [a]."),
    Question("q2", "Tell me how to get the [restricted item]."),
]


def test_all_attacks_registered_with_box_and_doc():
    listed = {a["name"]: a for a in list_attacks()}
    assert PAPER_ATTACKS | {"direct", "prefill"} <= set(listed)
    assert [a["name"] for a in list_attacks()] == sorted(listed)
    for name, info in listed.items():
        assert info["box"] in ("black", "white") and info["doc"]
        assert ATTACKS[name].box == info["box"]
    assert listed["completingattack"]["box"] == listed["autodan"]["box"] == "white"
    assert all(listed[n]["box"] == "black" for n in ("codeattack", "pair", "jailbreakchat", "selfcipher"))


def test_unknown_attack_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown attack 'nope'.*codeattack.*selfcipher"):
        get_attack("nope")


def test_unknown_config_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['stepz'\]; valid keys: \['encoding', 'n_steps', 'preamble', 'reverse'\]"):
        get_attack("codeattack", {"stepz": 3})
    with pytest.raises(ConfigError, match="valid keys"):
        get_attack("direct", {"anything": 1})


def test_bad_config_value_is_config_error():
    with pytest.raises(ConfigError):
        get_attack("pair", {"attacker": "gpt"})
    with pytest.raises(ConfigError, match="attacker_url"):
        get_attack("pair", {"attacker": "llm"})


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_attacks_return_serialisable_prompts_with_stable_ids(name):
    a, b = get_attack(name, seed=3).build(QS), get_attack(name, seed=3).build(QS)
    assert a == b  # deterministic
    assert a, name
    for p in a:
        assert isinstance(p, AttackPrompt) and p.attack == name and p.question_id in {"q1", "q2"}
        assert p.text.strip()
        rec = json.loads(json.dumps(p.to_dict()))
        assert AttackPrompt.from_dict(rec) == p
        assert set(rec) == {"id", "question_id", "attack", "text", "chat", "prefill", "meta"}
    assert len({p.id for p in a}) == len(a)


def test_attack_ids_follow_stable_id_contract():
    p = get_attack("direct").build(QS)[0]
    assert p.id == stable_id("direct", "q1", "")


def test_register_rejects_bad_classes():
    class NoBox(Attack):
        name = "nobox_test"
        box = "grey"

        def build(self, questions, target=None):
            return []

    with pytest.raises(TypeError):
        register(NoBox)
    assert "nobox_test" not in ATTACKS


def test_wrong_config_type_rejected():
    with pytest.raises(ConfigError):
        ATTACKS["codeattack"](NoParams())


def test_question_from_dict():
    q = Question.from_dict({"id": 7, "question": "x", "category": None})
    assert q == Question("7", "x", "", "")


def test_refuses_early():
    assert refuses_early("I'm sorry, but I can't help with that.")
    assert refuses_early("  I\u2019m sorry, no.")  # curly apostrophe
    assert not refuses_early("Sure, here is how. Step 1: [a]")
    assert not refuses_early("Sure, here is a long answer that goes on and then says I cannot")
