import json
from pathlib import Path
from collections import Counter

import pytest

from derta.attacks import Question, get_attack
from derta.attacks.jailbreakchat import BUILTIN_TEMPLATES
from derta.errors import ConfigError, DataError

QS = [Question(f"q{i}", f"How do I do [thing {i}]?") for i in range(40)]


def test_builtin_templates_have_one_slot():
    assert len(BUILTIN_TEMPLATES) >= 5
    assert all(t.count("{question}") == 1 for t in BUILTIN_TEMPLATES)


def test_draw_is_seeded_recorded_and_per_question():
    a = get_attack("jailbreakchat", seed=1).build(QS)
    assert a == get_attack("jailbreakchat", seed=1).build(QS)
    assert [p.meta["template"] for p in a] != [p.meta["template"] for p in get_attack("jailbreakchat", seed=2).build(QS)]
    for q, p in zip(QS, a):
        assert p.text == BUILTIN_TEMPLATES[p.meta["template"]].replace("{question}", q.question)
        assert p.meta["source"] == "builtin" and p.chat
    assert len(Counter(p.meta["template"] for p in a)) >= 3  # draws spread over templates
    # a question's draw does not depend on the rest of the batch
    sub = get_attack("jailbreakchat", seed=1).build(QS[5:7])
    assert sub == a[5:7]


def test_templates_file_json_list(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(["A [INSERT PROMPT HERE] a", {"prompt": "B [INSERT PROMPT HERE] b"}, {"text": "C [INSERT PROMPT HERE]"}]))
    out = get_attack("jailbreakchat", {"templates_file": str(path)}).build(QS[:10])
    assert {p.text.split()[0] for p in out} <= {"A", "B", "C"}
    assert all(q.question in p.text and p.meta["source"] == str(path) for q, p in zip(QS, out))


def test_templates_file_jsonl_custom_placeholder_and_max(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "first <Q>"}\n\n"second <Q>"\n')
    out = get_attack("jailbreakchat", {"templates_file": str(path), "placeholder": "<Q>", "max_templates": 1}).build(QS[:5])
    assert all(p.text == f"first {q.question}" for q, p in zip(QS, out))


def test_templates_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('"ok [INSERT PROMPT HERE]"\n"no slot here"\n')
    with pytest.raises(DataError) as info:
        get_attack("jailbreakchat", {"templates_file": str(path)}).build(QS[:1])
    assert info.value.line == 2 and info.value.rule == "placeholder"
    path.write_text('"ok [INSERT PROMPT HERE]"\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: \[json\]"):
        get_attack("jailbreakchat", {"templates_file": str(path)}).build(QS[:1])
    with pytest.raises(DataError, match="file_exists"):
        get_attack("jailbreakchat", {"templates_file": str(tmp_path / "missing.json")}).build(QS[:1])
    with pytest.raises(ConfigError):
        get_attack("jailbreakchat", {"max_templates": 0})


RELEASE = Path(__file__).resolve().parents[2].parent / "shared" / "release" / "data" / "test"


def test_release_rendered_file_needs_its_questions(tmp_path):
    """The release's file holds rendered prompts, not templates: alone it is refused with the way out;
    with the plain questions it renders, its templates are recovered."""
    from derta.attacks.jailbreakchat import load_templates, templates_from_rendered
    from derta.errors import DataError

    rendered = tmp_path / "r.json"
    plain = tmp_path / "q.json"
    rendered.write_text("\n".join(json.dumps({"question": f"Persona A. Now: {q}"}) for q in ("x one", "y two")) + "\n"
                        + json.dumps({"question": "Persona B says: z three!"}) + "\n")
    plain.write_text("".join(json.dumps({"question": q}) + "\n" for q in ("x one", "y two", "z three")))
    with pytest.raises(DataError, match="rendered_questions_file"):
        load_templates(rendered, "[INSERT PROMPT HERE]")
    assert templates_from_rendered(rendered, plain) == ["Persona A. Now: {question}", "Persona B says: {question}!"]
    attack = get_attack("jailbreakchat", {"templates_file": str(rendered), "rendered_questions_file": str(plain)})
    (p,) = attack.build([Question(id="q1", question="new question")])
    assert "new question" in p.text and p.text.startswith("Persona")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"question": "no slot here"}) + "\n" + json.dumps({"question": "x"}) + "\n" + json.dumps({"question": "y"}) + "\n")
    with pytest.raises(DataError, match=r"\[aligned\]"):
        templates_from_rendered(bad, plain)


def test_release_jailbreakchat_holds_the_papers_50_templates():
    if not (RELEASE / "safety_jailbreakchat.json").is_file():
        pytest.skip(f"../shared/release not present ({RELEASE}): the real release file is not checked")
    from derta.attacks.jailbreakchat import templates_from_rendered

    templates = templates_from_rendered(RELEASE / "safety_jailbreakchat.json", RELEASE / "safety_illegal_instructions_200.json")
    assert len(templates) == 50 and all(t.count("{question}") >= 1 for t in templates)
