"""derta.alpacaeval: pairwise win rate against a scripted local judge."""

from __future__ import annotations

import random

import pytest

from derta.alpacaeval import SKIP_REASON, AlpacaEvalConfig, alpacaeval_or_skip, fill, parse_verdict, win_rate
from derta.llm import ChatClient, LLMConfig
from helpers_openai_server import OpenAIServer

N = 20


def _items(n=N):
    inst = [f"instruction {i}" for i in range(n)]
    model = [f"MODEL-{i}" for i in range(n)]
    ref = [f"REF-{i}" for i in range(n)]
    return inst, model, ref


def _output(req, label):
    user = req["messages"][-1]["content"]
    return user.split(f"[Output {label}]\n", 1)[1].split("\n", 1)[0]


def _judge(srv):
    return ChatClient(LLMConfig(base_url=srv.url, model="judge", timeout_s=5, max_retries=0, max_concurrency=4))


def test_always_a_cancels_position_and_matches_seeded_order():
    inst, model, ref = _items()
    with OpenAIServer(handler=lambda req: "A") as srv, _judge(srv) as judge:
        res = win_rate(inst, model, ref, judge, seed=7)
        reqs = list(srv.requests)
    rng = random.Random(7)
    first = [rng.random() < 0.5 for _ in range(N)]
    assert 0 < sum(first) < N  # the order really is mixed
    # "A" always: the model wins exactly where it was shown first.
    assert res == {"win_rate": 100.0 * sum(first) / N, "n": N, "wins": sum(first), "losses": N - sum(first),
                   "ties": 0, "model_first": sum(first)}
    shown_first = {_output(r["json"], "A") for r in reqs}
    assert shown_first == {f"MODEL-{i}" if first[i] else f"REF-{i}" for i in range(N)}
    assert all(r["json"]["temperature"] == 0.0 for r in reqs)


def test_judge_prefers_model_wins_all_and_ties_count_half():
    inst, model, ref = _items()

    def prefers_model(req):
        return "A" if _output(req, "A").startswith("MODEL") else "Output B is better."

    with OpenAIServer(handler=prefers_model) as srv, _judge(srv) as judge:
        assert win_rate(inst, model, ref, judge, seed=1)["win_rate"] == 100.0

    def tie_on_even(req):
        i = int(_output(req, "A").split("-")[1])
        if i % 2 == 0:
            return "Both are equally good."  # unparseable -> tie (0.5)
        return "[[B]]" if _output(req, "A").startswith("MODEL") else "(A)."  # odd: the reference always wins

    with OpenAIServer(handler=tie_on_even) as srv, _judge(srv) as judge:
        res = win_rate(inst, model, ref, judge, seed=3)
    assert (res["wins"], res["losses"], res["ties"]) == (0, N // 2, N // 2)
    assert res["win_rate"] == 25.0


def test_parse_verdict():
    for text, want in [("A", "A"), (" b ", "B"), ("(A).", "A"), ("**B**", "B"), ("[[A]]", "A"),
                       ("B. It is more detailed.", "B"), ("Output A is better", "A"),
                       ("A better answer is B", "B"), ("The answer: A", "A"),
                       ("", None), ("tie", None), ("Output A and Output B are both fine", None)]:
        assert parse_verdict(text) == want, text


def test_fill_keeps_braces_in_values():
    assert fill("{instruction}|{a}|{b}", instruction="{b}", a="x{a}", b="y") == "{b}|x{a}|y"


def test_length_mismatch():
    with OpenAIServer() as srv, _judge(srv) as judge, pytest.raises(ValueError, match="length mismatch"):
        win_rate(["q"], ["a", "b"], ["r"], judge)


def test_skip_without_judge_and_run_with_one():
    inst, model, ref = _items(4)
    for cfg in (None, {}, {"seed": 1}, {"llm": {"base_url": "http://127.0.0.1:9/v1"}}, AlpacaEvalConfig()):
        assert alpacaeval_or_skip(cfg, inst, model, ref) == {"skipped": SKIP_REASON}
    assert SKIP_REASON == "no llm judge configured (set eval.alpacaeval.llm.base_url/model)"
    with OpenAIServer(handler=lambda req: "B") as srv:
        res = alpacaeval_or_skip({"llm": {"base_url": srv.url, "model": "j", "max_retries": 0}, "max_items": 3},
                                 inst, model, ref)
    assert res["n"] == 3 and res["judge"] == "j" and res["wins"] + res["losses"] == 3
