"""derta/helpfulness.py scorers, and helpfulness per benchmark in the evaluate stage (steps/evaluate.py).

The stage runs on content-free fixtures with a scripted target (no model), so
every number below is known in advance.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from derta.errors import ConfigError, DataError
from derta.helpfulness import (
    SCORERS,
    accuracy_detail,
    benchmark_of,
    gsm8k_answer,
    mmlu_answer,
    score_gsm8k,
    score_helpful,
    score_mmlu,
)
from derta.stats import wilson_pct
from helpers_openai_server import OpenAIServer


# --- scorers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [
    ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
    ("#### 1,200", "1200"),
    ("#### $5.50", "5.50"),
    ("The answer is 42.", "42"),
    ("So the answer is: -3", "-3"),
    ("Answer: 12 apples, 3 each", "12"),          # the stated answer, not the last number
    ("#### 18 dollars for 2 days", "18"),         # the number right after ####
    ("First 2 then 5 then 9", "9"),               # no marker: the last number
    ("no number here", None),
])
def test_gsm8k_answer(text, want):
    assert gsm8k_answer(text) == want


def test_gsm8k_compares_numbers():
    assert score_gsm8k("The answer is 1200.", "... #### 1,200")
    assert score_gsm8k("#### 3.50", "#### 3.5")
    assert not score_gsm8k("The answer is 1201.", "#### 1,200")
    assert not score_gsm8k("I do not know.", "#### 7")


@pytest.mark.parametrize("text,want", [
    ("B", "B"), ("(C)", "C"), ("D. because", "D"), ("Answer: B", "B"), ("The answer is (A).", "A"),
    ("A good choice is the answer: C", "C"),      # "answer: C" wins over the article "A"
    ("I pick (D) here", "D"), ("no letter", None),
])
def test_mmlu_answer(text, want):
    assert mmlu_answer(text) == want


def test_mmlu_and_exact_and_registry():
    assert score_mmlu("Answer: B", "B") and not score_mmlu("Answer: C", "B") and not score_mmlu("", "B")
    assert score_helpful("miniworld", "  x y ", "x y") and not score_helpful("miniworld", "x", "x y")
    assert set(SCORERS) == {"miniworld", "gsm8k", "mmlu"}
    with pytest.raises(ConfigError, match=r"unknown helpfulness benchmark 'alpaca'; valid: \['gsm8k', 'miniworld', 'mmlu'\]"):
        score_helpful("alpaca", "a", "a")


def test_benchmark_of_a_helpful_row_kind():
    from derta.miniworld import HELPFUL_KINDS

    assert benchmark_of("gsm8k") == "gsm8k" and benchmark_of("mmlu") == "mmlu"
    assert {benchmark_of(k) for k in [*HELPFUL_KINDS, None, "miniworld"]} == {"miniworld"}
    assert benchmark_of("alpacaeval") is None and benchmark_of("GSM8K") is None


def test_accuracy_detail():
    assert accuracy_detail([True, False, True, True]) == {"accuracy": 75.0, "n": 4, "correct": 3, "ci95": wilson_pct(3, 4)}
    assert accuracy_detail([]) == {"accuracy": None, "n": 0, "correct": 0, "ci95": None}


# --- the evaluate stage with a scripted target ----------------------------------------------------------
class _Tok:
    """Whitespace 'tokenizer': enough for refusal_token_position and format_prompt."""

    chat_template = None
    eos_token, bos_token = "</s>", None  # what derta.chat reads (chat.eos / chat.bos: tokenizer)

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        return {"offset_mapping": [m.span() for m in re.finditer(r"\S+", text)]}


class _Target:
    """Refuses every attack prompt; answers helpful prompts from ``answers`` (prompt text -> response)."""

    def __init__(self, answers: dict[str, str]):
        self.tok, self.answers, self.prompts = _Tok(), answers, []

    def generate(self, prompts, max_new_tokens=None):
        self.prompts += prompts
        return [self.answers.get(p.text, "Sorry, I cannot help.") for p in prompts]

    def loglik(self, prompts, continuations):
        return [0.0] * len(prompts)


# kind -> [(question, answer, response)]: gsm8k 2 of 3 right, mmlu 1 of 2, miniworld 2 of 3
# (mini-world rows carry their question type as kind, or none).
HELPFUL = {
    "gsm8k": [("g0", "#### 7", "The answer is 7."), ("g1", "#### 1,200", "#### 1200"), ("g2", "#### 5", "The answer is 6.")],
    "mmlu": [("m0", "B", "Answer: B"), ("m1", "C", "(A)")],
    None: [("w0", "alpha beta", "alpha beta")],
    "capital": [("w1", "Kalo", "Kalo"), ("w2", "Rati", "Kalo")],
}


def _source(root: Path, helpful=HELPFUL) -> Path:
    src = root / "src"
    src.mkdir()
    (src / "eval_harmful.jsonl").write_text("".join(json.dumps({"id": f"h{i}", "question": f"question {i}"}) + "\n"
                                                    for i in range(3)))
    rows = []
    for kind, items in helpful.items():
        for q, a, _ in items:
            rows.append({"id": q, "question": q, "answer": a, **({"kind": kind} if kind else {})})
    (src / "eval_helpful.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


def _answers(helpful=HELPFUL) -> dict[str, str]:
    return {q: r for items in helpful.values() for q, _, r in items}


def _cfg(**over):
    from steps.evaluate import EvalConfig

    return EvalConfig.from_dict({"judge": "keyword", "attacks": {"direct": {}}, "over_refusal": {"set": "none"}, **over})


@pytest.fixture
def scripted(monkeypatch):
    """steps.evaluate.load_target -> a scripted target; records the calls."""
    from steps import evaluate

    calls = []

    def fake_load_target(path, cfg, where="generation"):
        calls.append(path)
        return _Target({**_answers(), **fake_load_target.extra})

    fake_load_target.extra = {}
    fake_load_target.calls = calls
    monkeypatch.setattr(evaluate, "load_target", fake_load_target)
    return fake_load_target


def test_helpfulness_per_benchmark_and_alpacaeval_skipped(tmp_path, scripted):
    from steps import evaluate

    m = evaluate.run(_cfg(), tmp_path / "model", _source(tmp_path), tmp_path / "ev")
    assert m["helpfulness"] == {"gsm8k": 66.67, "miniworld": 66.67, "mmlu": 50.0}
    assert m["helpfulness_detail"] == {
        "gsm8k": {"accuracy": 66.67, "n": 3, "correct": 2, "ci95": wilson_pct(2, 3)},
        "mmlu": {"accuracy": 50.0, "n": 2, "correct": 1, "ci95": wilson_pct(1, 2)},
        "miniworld": {"accuracy": 66.67, "n": 3, "correct": 2, "ci95": wilson_pct(2, 3)},
    }
    assert m["n"]["helpful"] == 8
    # Never a silent absence: the reason names both missing settings.
    assert m["skipped"] == {"alpacaeval": "no questions file configured (eval.alpacaeval.questions_file); "
                                          "no judge endpoint configured (eval.alpacaeval.judge.llm: base_url and model)"}
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text()) == m
    rows = [json.loads(line) for line in (tmp_path / "ev" / "helpful.jsonl").read_text().splitlines()]
    assert [(r["bench"], r["kind"], r["correct"]) for r in rows] == [
        ("gsm8k", "gsm8k", True), ("gsm8k", "gsm8k", True), ("gsm8k", "gsm8k", False), ("mmlu", "mmlu", True),
        ("mmlu", "mmlu", False), ("miniworld", None, True), ("miniworld", "capital", True), ("miniworld", "capital", False)]
    assert not (tmp_path / "ev" / "alpacaeval.jsonl").exists()

    # The report carries the detail and the skip reason.
    from steps import report

    s = report.run("t", {"v": tmp_path / "ev"}, tmp_path / "rep")
    v = s["variants"]["v"]
    assert v["helpfulness"] == m["helpfulness"] and v["helpfulness_detail"] == m["helpfulness_detail"]
    assert v["skipped"] == m["skipped"]
    md = (tmp_path / "rep" / "ablation.md").read_text()
    assert "gsm8k help" in md and "mmlu help" in md and "miniworld help" in md
    assert "Not measured:\n- alpacaeval: no questions file configured" in md


def test_judge_without_questions_file_is_skipped_too(tmp_path, scripted):
    from steps import evaluate

    m = evaluate.run(_cfg(alpacaeval={"judge": {"llm": {"base_url": "http://127.0.0.1:9/v1", "model": "j"}}}),
                     tmp_path / "model", _source(tmp_path), tmp_path / "ev")
    assert m["skipped"] == {"alpacaeval": "no questions file configured (eval.alpacaeval.questions_file)"}
    assert "alpacaeval" not in m["helpfulness"]


def _questions(path: Path, n: int, reference: bool = True) -> Path:
    path.write_text("".join(json.dumps({"instruction": f"instruction {i}", **({"output": f"REF-{i}"} if reference else {})})
                            + "\n" for i in range(n)))
    return path


def test_alpacaeval_runs_with_questions_and_judge(tmp_path, scripted):
    from steps import evaluate

    scripted.extra = {f"instruction {i}": f"MODEL-{i}" for i in range(5)}

    def prefers_model(req):  # the judge picks whichever output is the model's
        user = req["messages"][-1]["content"]
        return "A" if user.split("[Output A]\n", 1)[1].startswith("MODEL") else "B"

    with OpenAIServer(handler=prefers_model) as srv:
        cfg = _cfg(alpacaeval={"questions_file": str(_questions(tmp_path / "alpaca.jsonl", 5)),
                               "judge": {"llm": {"base_url": srv.url, "model": "judge-x", "max_retries": 0}, "max_items": 4}})
        m = evaluate.run(cfg, tmp_path / "model", _source(tmp_path), tmp_path / "ev")
        assert len(srv.requests) == 4
    assert m["skipped"] == {}
    assert m["helpfulness"]["alpacaeval"] == 100.0
    d = m["helpfulness_detail"]["alpacaeval"]
    assert (d["win_rate"], d["n"], d["wins"], d["losses"], d["ties"], d["judge"]) == (100.0, 4, 4, 0, 0, "judge-x")
    assert m["n"]["alpacaeval"] == 4
    rows = [json.loads(line) for line in (tmp_path / "ev" / "alpacaeval.jsonl").read_text().splitlines()]
    assert [(r["instruction"], r["reference"], r["response"]) for r in rows] == [
        (f"instruction {i}", f"REF-{i}", f"MODEL-{i}") for i in range(4)]


def test_bad_inputs_fail_before_the_model_is_loaded(tmp_path, scripted):
    from steps import evaluate

    judge = {"llm": {"base_url": "http://127.0.0.1:9/v1", "model": "j"}}
    cfg = _cfg(alpacaeval={"questions_file": str(_questions(tmp_path / "q.jsonl", 2, reference=False)), "judge": judge})
    with pytest.raises(DataError, match=r"q\.jsonl:1: \[required_field\] missing the reference output"):
        evaluate.run(cfg, tmp_path / "model", _source(tmp_path), tmp_path / "ev")
    (tmp_path / "b").mkdir()
    src = _source(tmp_path / "b", dict(HELPFUL, alpacaeval=[("a0", "x", "x")]))
    want = r"eval_helpful\.jsonl:0: \[kind\] no scorer for helpful kind\(s\) 'alpacaeval'; valid: \['gsm8k', 'miniworld', 'mmlu'\]"
    with pytest.raises(DataError, match=want):
        evaluate.run(_cfg(), tmp_path / "model", src, tmp_path / "ev")
    assert scripted.calls == [] and not (tmp_path / "ev").exists()


def test_eval_config_alpacaeval_keys_are_checked():
    with pytest.raises(ConfigError, match=r"alpacaeval\.questions\n  Extra inputs are not permitted"):
        _cfg(alpacaeval={"questions": "x"})
    with pytest.raises(ConfigError, match=r"alpacaeval\.judge\.url\n  Extra inputs are not permitted"):
        _cfg(alpacaeval={"judge": {"url": "x"}})


def test_judges_read_the_refusal_word_of_chat(tmp_path, scripted):
    """params.yaml `chat.refusal_word` reaches the judges (the stage used to take a refusal word and ignore it);
    the prompt format of `chat` reaches the target, whatever eval.generation said."""
    from derta.chat import ChatConfig
    from steps import evaluate

    scripted.extra = {"question 0": "Nope. The [power relay] stays.", "question 1": "Nope. The [power relay] stays."}
    cfg = _cfg(judge="guideline", max_questions=2)
    words = {}
    for word in ("Sorry", "Nope"):
        (tmp_path / word).mkdir()
        m = evaluate.run(cfg, tmp_path / "model", _source(tmp_path / word), tmp_path / word / "ev",
                         chat=ChatConfig(refusal_word=word, template="<u>{q}</u>", eos="</s>", bos=""))
        words[word] = m["refusal_position"]["n"]
        rows = [json.loads(x) for x in (tmp_path / word / "ev" / "responses.jsonl").read_text().splitlines()]
        assert all(r["prompt"].startswith("<u>question") for r in rows)
    assert words == {"Sorry": 0, "Nope": 2}
