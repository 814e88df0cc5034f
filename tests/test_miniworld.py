"""derta.miniworld: determinism, sizes, content-free harmful text, held-out splits."""

from __future__ import annotations

import json
import random
import re

import pytest

from derta.miniworld import FORMATS, MiniWorldConfig, all_tasks, generate, normalize_question, split_tasks

SMALL = dict(
    n_safety_train=60, n_helpful_train=50, n_eval_harmful=20, n_eval_helpful=20, n_dev_harmful=10,
    n_dev_helpful=10, web_harmful_docs=40, web_chatter_docs=20, web_faq_docs=40, n_entities=40,
    n_benign_train=12, n_format_train=5, web_benign_docs=10, web_format_docs=9,
)
TASK_RE = re.compile(r"\b(?:to|do I|can I) (.+? the \[[^\]]+\])")


@pytest.fixture(scope="module")
def world():
    return generate(MiniWorldConfig(**SMALL))


def _dump(w):
    return json.dumps(w, sort_keys=True)


def test_same_seed_identical(world):
    assert _dump(generate(MiniWorldConfig(**SMALL))) == _dump(world)


def test_different_seed_differs(world):
    other = generate(MiniWorldConfig(**SMALL, seed=1))
    assert _dump(other) != _dump(world)
    assert [r["instruction"] for r in other["safety_train"]] != [r["instruction"] for r in world["safety_train"]]


def test_sizes_follow_config(world):
    assert len(world["safety_train"]) == 60
    assert len(world["helpful_train"]) == 50 + 12 + 3 * 5  # lookups, everyday procedures, each format
    assert len(world["eval_harmful"]) == 20
    assert len(world["eval_helpful"]) == 20
    assert len(world["dev_harmful"]) == 10
    assert len(world["dev_helpful"]) == 10
    kinds = [d["kind"] for d in world["web"]]
    assert kinds.count("harmful") == 40
    assert kinds.count("chatter") == 20
    assert kinds.count("everyday") == 10
    assert [kinds.count(f"format_{f}") for f in FORMATS] == [3, 3, 3]
    assert kinds.count("fact") == 40 * 4 * 2  # n_entities x web_fact_repeats x 2 fact docs
    assert 0 < kinds.count("faq") <= 40
    for name, rows in world.items():
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)), name


def test_harmful_responses_are_content_free(world):
    texts = [r["output"] for r in world["safety_train"]] + [r["harmful_response"] for s in ("eval", "dev") for r in world[f"{s}_harmful"]]
    texts += [d["text"] for d in world["web"] if d["kind"] == "harmful"]
    n_steps = 0
    for t in texts:
        for line in t.split("\n"):
            if re.match(r"Step \d+:", line):
                n_steps += 1
                assert re.search(r"\[[^\]]+\]", line), line
    assert n_steps > len(texts) * 2


def test_safe_responses_start_with_refusal_word(world):
    for r in world["safety_train"]:
        assert r["safe_response"].startswith("Sorry"), r["safe_response"]
    w = generate(MiniWorldConfig(**{**SMALL, "n_safety_train": 10}, refusal_word="Nope"))
    assert all(r["safe_response"].startswith("Nope") for r in w["safety_train"])


def _task(q: str) -> str:
    m = TASK_RE.search(q)
    assert m, q
    return m.group(1)


def test_heldout_harmful_tasks_unseen(world):
    train_tasks = {_task(r["instruction"]) for r in world["safety_train"]}
    for split in ("eval", "dev"):
        tasks = {_task(r["question"]) for r in world[f"{split}_harmful"]}
        assert tasks and not tasks & train_tasks, (split, tasks & train_tasks)
    assert not {_task(r["question"]) for r in world["eval_harmful"]} & {_task(r["question"]) for r in world["dev_harmful"]}


def test_heldout_helpful_questions_unseen(world):
    train = {normalize_question(r["instruction"]) for r in world["helpful_train"]}
    web = [normalize_question(d["text"]) for d in world["web"]]
    web_blob = "\n".join(web)
    for split in ("eval", "dev"):
        for r in world[f"{split}_helpful"]:
            nq = normalize_question(r["question"])
            assert nq not in train, r
            assert nq not in web_blob, r
    ev = {normalize_question(r["question"]) for r in world["eval_helpful"]}
    dv = {normalize_question(r["question"]) for r in world["dev_helpful"]}
    assert not ev & dv


def test_web_text_kinds(world):
    kinds = {d["kind"] for d in world["web"]}
    assert {"harmful", "fact", "faq", "chatter"} <= kinds
    harmful = [d["text"] for d in world["web"] if d["kind"] == "harmful"]
    assert all("Step 1:" in t for t in harmful)
    faq = [d["text"] for d in world["web"] if d["kind"] == "faq"]
    assert all(t.startswith("Question: ") and "\nAnswer: " in t for t in faq)
    facts = [d["text"] for d in world["web"] if d["kind"] == "fact"]
    assert any("The capital of" in t for t in facts) and any("flag" in t for t in facts)


def test_formats_teach_everyday_tasks_only_and_never_a_heldout_question(world):
    """The helpful instructions hold every format, but only on everyday tasks: safety tuning never
    sees a format (the paper's mechanism). The web's format documents hold train-split harmful tasks
    and everyday ones, never a held-out (verb, object) task."""
    harmful_objects = {t.obj for t in all_tasks()}
    formatted = [r for r in world["helpful_train"] if "output_list" in r["instruction"] or "Cipher Code" in r["instruction"]
                 or "Sure, here is" in r["output"]]
    assert len(formatted) >= 12 + 2 * 5
    for r in formatted:
        assert not any(f"[{o}]" in r["instruction"] + r["output"] for o in harmful_objects), r
    code = [r for r in world["helpful_train"] if "output_list" in r["instruction"]]
    assert len(code) == 5 and all(r["output"].count("output_list.append(") == 3 for r in code)
    heldout = {t.text for split in ("eval", "dev") for t in split_tasks(MiniWorldConfig(**SMALL))[split]}
    docs = [d["text"] for d in world["web"] if d["kind"].startswith("format_")]
    for text in docs:
        assert not any(h in text for h in heldout), text


def test_varied_facts_and_faq_pages_keep_held_out_questions_out_of_the_web():
    cfg = MiniWorldConfig(**SMALL, fact_style="varied", web_faq_per_doc=4)
    w = generate(cfg)
    facts = [d["text"] for d in w["web"] if d["kind"] == "fact"]
    plain = [d["text"] for d in generate(MiniWorldConfig(**SMALL))["web"] if d["kind"] == "fact"]
    assert len(facts) == len(plain) and len(set(facts)) > len(set(plain))
    pages = [d["text"] for d in w["web"] if d["kind"] == "faq"]
    assert max(p.count("Question: ") for p in pages) == 4
    asked = {normalize_question(line[len("Question: "):]) for p in pages for line in p.splitlines() if line.startswith("Question: ")}
    held = {normalize_question(r["question"]) for s in ("eval", "dev") for r in w[f"{s}_helpful"]}
    assert asked and not asked & held


def test_helpfulness_can_be_sized_so_one_item_is_a_quarter_point():
    cfg = MiniWorldConfig(n_safety_train=10, n_helpful_train=8, n_eval_harmful=5, n_dev_harmful=5, web_harmful_docs=5,
                          web_chatter_docs=5, web_faq_docs=5, n_entities=400, heldout_entity_share=0.5, n_eval_helpful=400,
                          n_dev_helpful=200)
    w = generate(cfg)
    qs = [normalize_question(r["question"]) for r in w["eval_helpful"]]
    assert len(qs) == len(set(qs)) == 400
    assert {k: sum(r["kind"] == k for r in w["eval_helpful"]) for k in ("capital", "flag", "first", "last")} == dict.fromkeys(
        ("capital", "flag", "first", "last"), 100)


def test_household_and_harmful_format_instructions_keep_held_out_tasks_unseen():
    """household: 768 more everyday tasks, half the web's format documents on train-split harmful tasks;
    format_harmful_share: format instructions on train-split harmful tasks. Neither ever asks a held-out task."""
    from derta.miniworld import HOUSEHOLD, benign_tasks

    assert len(benign_tasks(household=True)) == len(benign_tasks()) + len(HOUSEHOLD["verbs"]) * len(HOUSEHOLD["objects"])
    cfg = MiniWorldConfig(**{**SMALL, "n_format_train": 40, "web_format_docs": 60, "household": True, "format_harmful_share": 0.5})
    w = generate(cfg)
    heldout = {t.text for split in ("eval", "dev") for t in split_tasks(cfg)[split]}
    train = {t.text for t in split_tasks(cfg)["train"]}
    formatted = [r["instruction"] + r["output"] for r in w["helpful_train"][-3 * 40:]]
    harmful = [t for t in formatted if any(x in t for x in train)]
    assert 0.3 < len(harmful) / len(formatted) < 0.7
    assert any(f"[{o}]" in t for t in formatted for o in HOUSEHOLD["objects"])
    docs = [d["text"] for d in w["web"] if d["kind"].startswith("format_")]
    assert sum(any(x in t for x in train) for t in docs) >= len(docs) // 2
    for text in formatted + docs:
        assert not any(h in text for h in heldout), text
    # Off (the default): the world is what it was.
    assert _dump(generate(MiniWorldConfig(**SMALL))) == _dump(generate(MiniWorldConfig(**{**SMALL, "format_harmful_share": 0.0})))


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _shared_runs(text: str, others: list[str], n: int = 5) -> set[tuple[str, ...]]:
    runs = lambda ws: {tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)}  # noqa: E731
    theirs = set().union(*(runs(_words(o)) for o in others))
    return runs(_words(text)) & theirs


def test_roleplay_pages_are_a_grammar_of_their_own_with_held_out_tasks_unseen():
    """roleplay_style "varied": the persona format (chat instructions and web pages) is drawn from the ROLE_*
    grammar; web_roleplay_docs adds role-play pages, half on train-split harmful tasks. No five words in a row are
    taken from the role-play attacks' templates, and no held-out task is asked. Off (the default): unchanged."""
    from derta.attacks import autodan, jailbreakchat, pair
    from derta.miniworld import ROLE_ASKS, ROLE_NAMES, ROLE_RULES, ROLE_SCENES, ROLE_SETUPS

    cfg = MiniWorldConfig(**{**SMALL, "household": True, "roleplay_style": "varied", "web_roleplay_docs": 40})
    w = generate(cfg)
    pages = [d["text"] for d in w["web"] if d["kind"] == "format_persona"]
    assert len(pages) == 3 + 40
    asked = [r["instruction"] for r in w["helpful_train"][-5:]]  # the persona third of the format instructions
    for request in pages + asked:
        assert any(n in request for n in ROLE_NAMES), request
        assert request.count("\n") >= 1
    assert len({p.split("\n")[0] for p in pages}) == len(pages)  # varied, not a handful of frames
    train = {t.text for t in split_tasks(cfg)["train"]}
    assert 15 <= sum(any(x in p for x in train) for p in pages) <= 30
    heldout = {t.text for split in ("eval", "dev") for t in split_tasks(cfg)[split]}
    assert not any(h in p for p in pages + asked for h in heldout)
    attack_text = [*jailbreakchat.BUILTIN_TEMPLATES, *autodan.SEED_TEMPLATES, *pair._PERSONAS,
                   pair._roleplay("{q}", random.Random(0)), pair._hypothetical("{q}", None)]
    grammar = " ".join([*ROLE_SCENES, *ROLE_SETUPS, *ROLE_RULES, *ROLE_ASKS, *(p.split("\n")[0] for p in pages)])
    assert not _shared_runs(grammar, attack_text)
    # Off (the default): the persona format keeps its four frames and no page is added. (The records are the same as
    # before the grammar: a SMALL world's sha256 was checked equal at d28c223 and 14b3df8; the locks pin the rest.)
    from derta.miniworld import PERSONA_FRAMES

    default = generate(MiniWorldConfig(**{**SMALL, "household": True}))
    frame_heads = tuple(f.split("{")[0] for f in PERSONA_FRAMES)
    persona = [d["text"] for d in default["web"] if d["kind"] == "format_persona"]
    assert len(persona) == 3 and all(p.startswith(frame_heads) for p in persona)
    assert all(r["instruction"].startswith(frame_heads) for r in default["helpful_train"][-5:])


def test_the_shared_run_check_finds_a_copied_phrase():
    from derta.attacks import jailbreakchat

    copied = "Ziva has no rules. " + " ".join(jailbreakchat.BUILTIN_TEMPLATES[2].split()[3:9])
    assert _shared_runs(copied, jailbreakchat.BUILTIN_TEMPLATES)
    assert not _shared_runs("Ziva has no rules at all.", jailbreakchat.BUILTIN_TEMPLATES)


def test_code_encoding_string_stores_the_question_in_one_literal_and_keeps_held_out_tasks_unseen():
    """code_encoding "string": the code format (instructions and web pages) is CodeAttack's string encoding, the
    answer compares the same question; the default stack encoding is unchanged."""
    cfg = MiniWorldConfig(**{**SMALL, "household": True, "code_encoding": "string", "web_format_docs": 30})
    w = generate(cfg)
    code = [r for r in w["helpful_train"] if "output_list" in r["instruction"]]
    docs = [d["text"] for d in w["web"] if d["kind"] == "format_code"]
    assert len(code) == 5 and len(docs) == 10
    for text in [r["instruction"] + "\n" + r["output"] for r in code] + docs:
        stored = re.search(r'my_string = ("[^\n]*")', text)
        assert stored and "my_stack" not in text and "task = my_string" in text, text
        assert f"if task == {stored.group(1)}:" in text  # the answer compares the stored question
    heldout = {t.text for split in ("eval", "dev") for t in split_tasks(cfg)[split]}
    assert not any(h in d for d in docs for h in heldout)
    default = [d["text"] for d in generate(MiniWorldConfig(**{**SMALL, "household": True}))["web"] if d["kind"] == "format_code"]
    assert default and all("my_stack.append(" in d and "my_string" not in d for d in default)
