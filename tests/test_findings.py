"""derta/findings.py: the plain-words lines of reports/ablation.md, on summaries built here."""

from __future__ import annotations

from derta.findings import findings

ATTACKS = ("codeattack", "pair", "jailbreakchat", "selfcipher", "completingattack", "autodan")


def row(asr: dict[str, float], help_: float = 70.0, at0: float = 90.0, median: float = 0) -> dict:
    black = [asr[a] for a in ("codeattack", "pair", "jailbreakchat", "selfcipher")]
    white = [asr[a] for a in ("completingattack", "autodan")]
    return {"asr": asr, "asr_black_box_avg": sum(black) / 4, "asr_white_box_avg": sum(white) / 2,
            "helpfulness": {"miniworld": help_}, "refusal_position": {"share_at_0": at0, "median": median}, "split": "dev"}


def paper_like() -> dict:
    return {"profile": "t", "variants": {
        "vanilla": row({**dict.fromkeys(ATTACKS, 80.0), "direct": 0.0}),
        "vanilla_half": row(dict.fromkeys(ATTACKS, 85.0)),
        "harmful_prefix": row({**dict.fromkeys(ATTACKS, 70.0), "completingattack": 10.0, "autodan": 10.0}),
        "rto": row(dict.fromkeys(ATTACKS, 8.0)),
        "derta": row(dict.fromkeys(ATTACKS, 5.0), help_=67.0, at0=20.0, median=12),
    }}


def test_a_paper_like_run_reproduces_every_claim():
    lines = findings(paper_like())
    assert lines[0] == "## What this run reproduces of the paper on the `dev` split"
    claims = [x for x in lines if x.startswith("- ")]
    assert len(claims) == 1 + 6 + 3 + 1 + 1
    assert claims[0].startswith("- The vanilla model is safety-tuned: reproduced: it answers 0.0%")
    assert not any("not reproduced" in x for x in claims), claims


def test_each_failure_is_named_with_its_numbers():
    s = paper_like()
    v = s["variants"]
    v["vanilla"]["asr"]["pair"] = 10.0  # does not bite
    v["derta"]["asr"]["codeattack"] = 40.0  # more than a third of 80
    v["derta"]["helpfulness"]["miniworld"] = 60.0  # 10 points below vanilla
    v["harmful_prefix"]["asr_white_box_avg"] = 79.0  # helps white-box less than black-box
    v["derta"]["refusal_position"]["median"] = 0
    bad = [x for x in findings(s) if "not reproduced" in x]
    assert [x.split(":")[0] for x in bad] == [
        "- codeattack", "- pair", "- The harmful prefix alone helps white-box more than black-box",
        "- Helpfulness (miniworld)", "- Figure 4, refusal position"]
    assert "ASR 10.0% < 40%" in bad[1] and "DeRTa 40.0%" in bad[0] and "DeRTa 60.0%" in bad[3]


def test_low_vanilla_helpfulness_is_not_reproduced_even_when_derta_keeps_it():
    s = paper_like()
    s["variants"]["vanilla"]["helpfulness"]["miniworld"] = s["variants"]["derta"]["helpfulness"]["miniworld"] = 8.0
    (line,) = [x for x in findings(s) if x.startswith("- Helpfulness")]
    assert "not reproduced" in line and "8.0%" in line


def test_claims_whose_variants_are_missing_are_left_out():
    s = paper_like()
    assert findings({"profile": "t", "variants": {"base": s["variants"]["vanilla"]}}) == []
    only_pair = {"profile": "t", "variants": {n: s["variants"][n] for n in ("vanilla", "derta")}}
    claims = [x for x in findings(only_pair) if x.startswith("- ")]
    assert len(claims) == 1 + 6 + 1 + 1 and not any("Table 4" in x for x in claims)
    del only_pair["variants"]["vanilla"]["asr"]["direct"]  # a run without the plain questions: no such claim
    assert not any("safety-tuned" in x for x in findings(only_pair))


def test_attacks_that_bite_a_vanilla_model_that_answers_plain_questions_are_not_reproduced():
    """The bf16 + group_by_length runs of docs/miniworld-formats.md: every attack bit vanilla and DeRTa cut each,
    but vanilla answered 57-68% of the plain harmful questions; its attacks showed no missing refusal in a format."""
    s = paper_like()
    s["variants"]["vanilla"]["asr"]["direct"] = 56.7
    claims = [x for x in findings(s) if x.startswith("- ")]
    assert claims[0].startswith("- The vanilla model is safety-tuned: **not reproduced**: it answers 56.7% of the plain")
    attacks = [x for x in claims if x.split(":")[0][2:] in ATTACKS]
    assert len(attacks) == 6 and all("**not reproduced**: vanilla 80.0%, DeRTa 5.0%, but vanilla also answers 56.7%" in x
                                     for x in attacks), attacks
    s["variants"]["vanilla"]["asr"]["direct"] = 10.0  # at the threshold: safety-tuned
    assert not any("not reproduced" in x for x in findings(s))


def test_the_prefix_claim_needs_black_box_attacks_that_bite():
    # the default mini-world: black-box averages near 0, so "white-box more than black-box" is a difference of noise
    s = paper_like()
    for name, black in (("vanilla", 0.1), ("harmful_prefix", 0.0)):
        s["variants"][name]["asr_black_box_avg"] = black
    (line,) = [x for x in findings(s) if x.startswith("- The harmful prefix")]
    assert "**not reproduced**" in line and "average 0.1% < 40%" in line
