"""ASR you can trust: Wilson intervals (derta/stats.py), the metrics.json / summary.json schema,
ablation.md, and the evaluate stage end to end on the tiny model."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest

from derta.stats import pct, rate_detail, wilson, wilson_pct

# --- Wilson score interval --------------------------------------------------------------------------
# Hand-computed with z = 1.96 (z^2 = 3.8415):
#   0/10: centre = half = (z^2/20) / (1 + z^2/10) = 0.19207 / 1.38415 = 0.13877      -> [0, 27.75]
#   5/10: half = z sqrt(0.025 + z^2/400) / 1.38415 = 1.96 * 0.18602 / 1.38415 = 0.26341 -> [23.66, 76.34]
#  10/10: the mirror of 0/10                                                          -> [72.25, 100]
#   3/20: centre = (0.15 + 0.09604) / 1.19207 = 0.20639,
#         half = 1.96 sqrt(0.006375 + 0.0024009) / 1.19207 = 0.15403                   -> [5.24, 36.04]


@pytest.mark.parametrize("k,n,want", [(0, 10, [0.0, 27.75]), (10, 10, [72.25, 100.0]), (5, 10, [23.66, 76.34]),
                                      (3, 20, [5.24, 36.04]), (0, 0, None)])
def test_wilson_hand_values(k, n, want):
    assert wilson_pct(k, n) == want


def test_wilson_properties():
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and 0 < hi < 1
    for n in (1, 7, 50):
        for k in range(n + 1):
            lo, hi = wilson(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert wilson(50, 1000)[1] - wilson(50, 1000)[0] < wilson(5, 100)[1] - wilson(5, 100)[0]  # more data, narrower
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_rate_detail():
    assert pct(1, 3) == 33.33 and pct(0, 0) is None
    assert rate_detail(5, 10, 2, key="asr", count_key="unsafe") == {"asr": 50.0, "n": 10, "unsafe": 5, "errors": 2,
                                                                    "ci95": [23.66, 76.34]}
    assert rate_detail(0, 0) == {"rate": None, "n": 0, "k": 0, "errors": 0, "ci95": None}


# --- summarize() / ablation.md on hand-built metrics ------------------------------------------------
FP = {"judge": "guideline", "judge_version": "1", "judge_config_sha256": "e726fa5d00c6c44f"}


def _metrics(unsafe: dict[str, tuple[int, int, int]], attack_set: str = "aaaa", over=(6, 60)) -> dict:
    """metrics.json as steps.evaluate writes it; unsafe: attack -> (unsafe, decided, errors)."""
    detail = {a: rate_detail(k, n, e, key="asr", count_key="unsafe") for a, (k, n, e) in unsafe.items()}
    return {
        "asr": {a: d["asr"] for a, d in detail.items()},
        "asr_detail": detail,
        "n": {a: n + e for a, (k, n, e) in unsafe.items()} | {"helpful": 10, "over_refusal": over[1]},
        "halt": {a: 0 for a in unsafe},
        "refusal_positions": {a: [0, 3] for a in unsafe},
        "helpfulness": {"miniworld": 80.0},
        "helpfulness_detail": {"miniworld": {"accuracy": 80.0, "n": 10, "correct": 8, "ci95": wilson_pct(8, 10)}},
        "helpfulness_by_kind": {"capital": 60.0, "first": 100.0},
        "skipped": {"alpacaeval": "no judge endpoint configured (eval.alpacaeval.judge.llm: base_url and model)"},
        "refusal_position": {"share_at_0": 50.0, "median": 1.5, "share_after_30": 0.0, "n": 2},
        "split": "eval",
        "scoring": {"judges": {a: FP for a in unsafe}, "attacks_sha256": {a: a[:4] for a in unsafe},
                    "attack_set_sha256": attack_set, "generation_sha256": "gggg"},
        "over_refusal": {**rate_detail(over[0], over[1], 0, key="rate", count_key="refused"), "set": "miniworld",
                         "judge": FP, "prompts_sha256": "pppp"},
    }


def test_summarize_schema_keeps_old_keys_and_adds_detail():
    from steps.report import ablation_markdown, summarize

    metrics = {"vanilla": _metrics({"direct": (9, 10, 0), "completingattack": (10, 10, 0), "codeattack": (4, 8, 2)}),
               "derta": _metrics({"direct": (0, 10, 0), "completingattack": (1, 10, 0), "codeattack": (0, 10, 0)}, over=(30, 60))}
    s = summarize("tiny", metrics)
    assert s["profile"] == "tiny" and list(s["variants"]) == ["vanilla", "derta"]
    v = s["variants"]["vanilla"]
    # Keys steps/register.py, steps/seeds.py and derta/tracking.py read.
    assert {"asr", "asr_black_box_avg", "asr_white_box_avg", "helpfulness", "refusal_position", "n", "halt", "split"} <= set(v)
    assert v["asr"] == {"direct": 90.0, "completingattack": 100.0, "codeattack": 50.0}
    assert v["asr_black_box_avg"] == 50.0 and v["asr_white_box_avg"] == 100.0
    assert set(v["refusal_position"]) == {"share_at_0", "median", "share_after_30"}
    # New keys.
    assert v["asr_detail"]["codeattack"] == {"asr": 50.0, "n": 8, "unsafe": 4, "errors": 2, "ci95": [21.52, 78.48]}
    assert v["asr_detail"]["direct"]["ci95"] == wilson_pct(9, 10)
    assert v["scoring"]["judges"]["direct"] == FP and v["scoring"]["attack_set_sha256"] == "aaaa"
    assert v["over_refusal"] == 10.0
    assert v["over_refusal_detail"]["n"] == 60 and v["over_refusal_detail"]["ci95"] == wilson_pct(6, 60)
    assert s["variants"]["derta"]["over_refusal"] == 50.0
    assert v["helpfulness_detail"] == {"miniworld": {"accuracy": 80.0, "n": 10, "correct": 8, "ci95": wilson_pct(8, 10)}}
    assert v["helpfulness_by_kind"] == {"capital": 60.0, "first": 100.0}
    assert v["skipped"] == {"alpacaeval": "no judge endpoint configured (eval.alpacaeval.judge.llm: base_url and model)"}
    json.dumps(s)  # JSON-clean

    md = ablation_markdown(s)
    assert md.count("`guideline` v1") == 1 and "e726fa5d00c6c44f" in md
    assert "Attack set: `aaaa`" in md and "Warning" not in md
    head = next(line for line in md.splitlines() if line.startswith("| variant"))
    assert "direct ASR (n=10)" in head and "completingattack ASR (n=10)" in head and "over-refusal % (n=60)" in head
    assert "codeattack ASR |" in head  # n differs between variants: in a footnote instead
    assert "codeattack: n = vanilla 8, derta 10" in md
    assert "vanilla/codeattack 2" in md  # undecided verdicts are reported
    row = next(line for line in md.splitlines() if line.startswith("| derta |"))
    lo, hi = wilson_pct(1, 10)
    assert f"10.0 [{lo:.1f}–{hi:.1f}]" in row and "50.0 [" in row


def test_ablation_warns_when_variants_were_scored_differently():
    from steps.report import ablation_markdown, summarize

    s = summarize("tiny", {"a": _metrics({"direct": (1, 10, 0)}), "b": _metrics({"direct": (1, 10, 0)}, attack_set="bbbb")})
    md = ablation_markdown(s)
    assert "Warning" in md and "not comparable" in md and "a aaaa" in md and "b bbbb" in md
    other = _metrics({"direct": (1, 10, 0)})
    other["scoring"]["judges"]["direct"] = {**FP, "judge_version": "2"}
    md = ablation_markdown(summarize("tiny", {"a": _metrics({"direct": (1, 10, 0)}), "b": other}))
    assert "Judges (they differ" in md and "v2" in md and "over-refusal `guideline` v1" in md
    other = _metrics({"direct": (1, 10, 0)})
    other["over_refusal"]["prompts_sha256"] = "qqqq"
    md = ablation_markdown(summarize("tiny", {"a": _metrics({"direct": (1, 10, 0)}), "b": other}))
    assert "over-refusal prompts differ" in md and "attacked with different" not in md


def test_summarize_reads_metrics_written_before_the_detail():
    from steps.report import ablation_markdown, summarize

    old = _metrics({"direct": (1, 10, 0)})
    for k in ("asr_detail", "scoring", "over_refusal", "helpfulness_detail", "helpfulness_by_kind", "skipped"):
        del old[k]
    v = summarize("tiny", {"vanilla": old})["variants"]["vanilla"]
    assert v["asr"] == {"direct": 10.0} and v["asr_detail"] == {} and v["over_refusal"] is None
    assert v["helpfulness"] == {"miniworld": 80.0} and v["helpfulness_detail"] == {} and v["skipped"] == {}
    assert v["helpfulness_by_kind"] == {}
    md = ablation_markdown(summarize("tiny", {"vanilla": old}))
    assert "| vanilla | 10.0 |" in md and "not recorded" in md


# --- the evaluate stage on the tiny model -----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_variant(tmp_path_factory):
    """A tiny world (source split) and an untrained tiny model laid out as models/<variant>."""
    from tests.ds_worker import build_world, tiny_model, tokenizer

    root = build_world(tmp_path_factory.mktemp("world"))
    tok = tokenizer(root)
    model_dir = tmp_path_factory.mktemp("variant")
    tiny_model(tok).save_pretrained(str(model_dir / "model"))
    tok.save_pretrained(str(model_dir / "model"))
    return root / "src", model_dir


def _cfg(**over):
    from steps.evaluate import EvalConfig

    base = dict(attacks={"direct": {}, "prefill": {"units": [1]}}, max_questions=4, max_helpful=4,
                over_refusal={"set": "miniworld", "n": 6}, generation={"batch_size": 16, "max_new_tokens": 6})
    return EvalConfig.from_dict({**base, **over})


def test_evaluate_writes_detail_scoring_and_over_refusal(tiny_variant, tmp_path):
    import torch

    from derta.io import read_jsonl
    from derta.judges import get_judge
    from derta.miniworld import source_slots
    from steps import evaluate

    torch.set_num_threads(1)
    src, model_dir = tiny_variant
    m = evaluate.run(_cfg(), model_dir, src, tmp_path / "ev")
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text()) == m
    assert m["n"] == {"direct": 4, "prefill": 4, "helpful": 4, "over_refusal": 6}
    h = m["helpfulness_detail"]["miniworld"]  # the tiny world's helpful rows have no kind: one benchmark
    assert set(m["helpfulness"]) == set(m["helpfulness_detail"]) == {"miniworld"}
    assert h["n"] == 4 and h["accuracy"] == m["helpfulness"]["miniworld"] == pct(h["correct"], 4)
    assert h["ci95"] == wilson_pct(h["correct"], 4) and set(m["skipped"]) == {"alpacaeval"}
    for a in ("direct", "prefill"):
        d = m["asr_detail"][a]
        assert set(d) == {"asr", "n", "unsafe", "errors", "ci95"}
        assert d["n"] == 4 and d["errors"] == 0 and d["asr"] == m["asr"][a] == pct(d["unsafe"], 4)
        assert d["ci95"] == wilson_pct(d["unsafe"], 4)
    sc = m["scoring"]
    judge = get_judge("guideline", {"slots": source_slots(src)})  # the mini-world's vocabulary, from its manifest
    assert judge.cfg.slots and sc["judges"] == {"direct": judge.fingerprint(), "prefill": judge.fingerprint()}
    assert set(sc["attacks_sha256"]) == {"direct", "prefill"} and len(set(sc["attacks_sha256"].values())) == 2
    assert len(sc["attack_set_sha256"]) == 16 and len(sc["generation_sha256"]) == 16
    o = m["over_refusal"]
    rows = read_jsonl(tmp_path / "ev" / "overrefusal.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in evaluate.overrefusal.build("miniworld", 6, 0, countries=[
        *evaluate.overrefusal.countries_from_questions([r["question"] for r in read_jsonl(src / "eval_helpful.jsonl")])])]
    assert all({"id", "prompt", "response", "refused"} <= set(r) and isinstance(r["refused"], bool) for r in rows)
    assert o["n"] == 6 and o["refused"] == sum(r["refused"] for r in rows) and o["rate"] == pct(o["refused"], 6)
    assert o["ci95"] == wilson_pct(o["refused"], 6) and o["set"] == "miniworld" and o["judge"] == sc["judges"]["direct"]

    # The hashes move with what decides the prompts, and only with that.
    m2 = evaluate.run(_cfg(attack_questions={"prefill": 2}, over_refusal={"set": "none"}), model_dir, src, tmp_path / "ev2")
    assert m2["scoring"]["attacks_sha256"]["direct"] == sc["attacks_sha256"]["direct"]
    assert m2["scoring"]["attacks_sha256"]["prefill"] != sc["attacks_sha256"]["prefill"]
    assert m2["scoring"]["attack_set_sha256"] != sc["attack_set_sha256"]
    assert m2["over_refusal"]["n"] == 0 and m2["over_refusal"]["rate"] is None
    assert (tmp_path / "ev2" / "overrefusal.jsonl").read_text() == ""

    # report reads it all.
    from steps import report

    s = report.run("tiny", {"v": tmp_path / "ev"}, tmp_path / "rep")
    assert s["variants"]["v"]["asr_detail"] == m["asr_detail"] and s["variants"]["v"]["over_refusal"] == o["rate"]
    assert "over-refusal % (n=6)" in (tmp_path / "rep" / "ablation.md").read_text()


def test_undecided_verdicts_are_left_out_of_n(tiny_variant, tmp_path, monkeypatch):
    """A verdict with ``error`` set is neither safe nor unsafe: out of n, counted in errors."""
    from derta.config import StepConfig
    from derta.judges.base import JUDGES, Judge, Verdict
    from steps import evaluate

    class Flaky(Judge):
        name: ClassVar[str] = "flaky-test"
        Config: ClassVar[type[StepConfig]] = type("FlakyConfig", (StepConfig,), {"__doc__": "no keys"})

        def judge(self, items):
            # Items 0, 2, ...: undecided; 1, 3, ...: unsafe and refused.
            return [Verdict(it.id, unsafe=bool(i % 2), refusal=bool(i % 2), refusal_char=None, halt=False, reason="t",
                            error=None if i % 2 else "unparsable") for i, it in enumerate(items)]

    monkeypatch.setitem(JUDGES, "flaky-test", Flaky)
    m = evaluate.run(_cfg(judge="flaky-test", attacks={"direct": {}}), tiny_variant[1], tiny_variant[0], tmp_path / "ev")
    assert m["asr_detail"]["direct"] == {"asr": 100.0, "n": 2, "unsafe": 2, "errors": 2, "ci95": wilson_pct(2, 2)}
    assert m["asr"]["direct"] == 100.0 and m["n"]["direct"] == 4
    o = m["over_refusal"]
    assert (o["n"], o["refused"], o["errors"], o["rate"]) == (3, 3, 3, 100.0)
    assert m["scoring"]["judges"]["direct"]["judge"] == "flaky-test"
