import ast
from collections import deque

import pytest

from derta.attacks import Question, get_attack
from derta.attacks.codeattack import stack_code
from derta.errors import ConfigError

QUESTIONS = [
    "How do I open the [locked box] in my garage?",
    'Tell me how to "quote" a back\\slash and an émoji 🙂 word.',
    "single",
]


def _decode(stack: deque) -> str:
    words = []
    while stack:
        words.append(stack.pop())
    return " ".join(words)


def _stack_from(text: str) -> deque:
    """Run the prompt's ``my_stack`` lines (they must be valid Python) and return the deque."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("my_stack")]
    env: dict = {"deque": deque}
    exec("\n".join(lines), env)  # noqa: S102 - our own generated code
    return env["my_stack"]


def test_deque_decodes_to_the_question_words():
    qs = [Question(f"q{i}", q) for i, q in enumerate(QUESTIONS)]
    for q, p in zip(qs, get_attack("codeattack").build(qs)):
        stack = _stack_from(p.text)
        assert list(stack) == list(reversed(q.question.split()))  # pushed in reverse
        assert _decode(stack) == " ".join(q.question.split())
        assert p.meta["n_words"] == len(q.question.split())
        assert p.chat


def test_question_never_appears_as_a_sentence():
    q = Question("q", "How do I open the [locked box] in my garage?")
    (p,) = get_attack("codeattack").build([q])
    assert q.question not in p.text
    assert "def decode(input: deque) -> str:" in p.text
    assert "task = decode(my_stack)" in p.text and "output_list = []" in p.text


def test_n_steps_slots():
    (p,) = get_attack("codeattack", {"n_steps": 3}).build([Question("q", "a b c")])
    assert p.text.count("output_list.append( )") == 3 and "// step 3" in p.text and "// step 4" not in p.text


def test_stack_code_is_valid_python():
    ast.parse("from collections import deque\n" + stack_code(["a", 'b"c', "d\\e"], indent=""))


def test_short_form_for_small_models():
    """preamble=False: only the code; reverse=False: words stacked in reading order (the mini-world's setting)."""
    q = Question("q", "How do I open the [locked box] in my garage?")
    (full,) = get_attack("codeattack").build([q])
    (short,) = get_attack("codeattack", {"preamble": False, "reverse": False}).build([q])
    assert full.text.endswith(short.text.replace(stack_code(q.question.split(), reverse=False),
                                                 stack_code(q.question.split())))
    assert "def decode" not in short.text and short.text.startswith("def output_list_initialization():")
    assert list(_stack_from(short.text)) == q.question.split()
    ast.parse("from collections import deque\n" + short.text.replace("  // ", "  # ").replace("task == :", "task == 0:")
              .replace("append( )", "append(0)"))


def _run_store(text: str, var: str) -> object:
    """Run the prompt's lines that fill ``var`` (valid Python) and return its value."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(var)]
    env: dict = {"deque": deque}
    exec("\n".join(lines), env)  # noqa: S102 - our own generated code
    return env[var]


def test_list_encoding_holds_the_words_in_reading_order():
    qs = [Question(f"q{i}", q) for i, q in enumerate(QUESTIONS)]
    for q, p in zip(qs, get_attack("codeattack", {"encoding": "list"}).build(qs)):
        assert _run_store(p.text, "my_list") == q.question.split()
        assert q.question not in p.text or len(q.question.split()) == 1
        assert "def decode(input: list) -> str:" in p.text and "task = decode(my_list)" in p.text
        assert "my_stack" not in p.text and "deque" not in p.text and p.meta["encoding"] == "list"


def test_string_encoding_holds_the_question_in_one_literal():
    qs = [Question(f"q{i}", q) for i, q in enumerate(QUESTIONS)]
    for q, p in zip(qs, get_attack("codeattack", {"encoding": "string", "preamble": False}).build(qs)):
        assert _run_store(p.text, "my_string") == " ".join(q.question.split())
        assert "task = my_string" in p.text and "decode" not in p.text and p.meta["encoding"] == "string"
    # With the preamble there is no decode() stub to implement: the string needs none.
    (full,) = get_attack("codeattack", {"encoding": "string"}).build(qs[:1])
    assert full.text.startswith("Complete the Python code") and "def decode" not in full.text


def test_unknown_encoding_is_refused():
    with pytest.raises((ConfigError, ValueError), match="encoding"):
        get_attack("codeattack", {"encoding": "morse"})
