"""``derta score --bench gsm8k|mmlu|miniworld --responses FILE``: accuracy of a responses file, one JSON line.

Fixtures are content-free and written by the tests. With the release present
(``/work/shared/release``), each helpfulness file's own reference answers are
fed back as responses in the formats a model writes them: the scorers must
give 100% on them and 0% on wrong answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from derta.cli import main
from derta.helpfulness import gsm8k_answer
from derta.stats import wilson_pct

RELEASE_TEST = Path("/work/shared/release/data/test")


def _score(capsys, bench: str, path: Path) -> tuple[int, dict | None, str]:
    rc = main(["score", "--bench", bench, "--responses", str(path)])
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    if rc == 0:
        assert len(lines) == 1, out.out
    return rc, (json.loads(lines[0]) if rc == 0 else None), out.err


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_and_json_list_give_the_same_line(tmp_path, capsys):
    rows = [{"question": "q1", "response": "The answer is 7.", "answer": "#### 7"},
            {"question": "q2", "response": "#### 1,200", "answer": "#### 1200"},
            {"question": "q3", "response": "The answer is 4.", "answer": "#### 5"},
            {"question": "q4", "response": "I think 9", "answer": 9}]  # a number as the answer
    rc, a, err = _score(capsys, "gsm8k", _jsonl(tmp_path / "r.jsonl", rows))
    assert rc == 0, err
    assert a == {"accuracy": 75.0, "n": 4, "bench": "gsm8k", "correct": 3, "ci95": wilson_pct(3, 4)}
    (tmp_path / "r.json").write_text(json.dumps(rows, indent=2))
    assert _score(capsys, "gsm8k", tmp_path / "r.json")[1] == a


def test_mmlu_and_miniworld(tmp_path, capsys):
    rows = [{"question": "q", "response": r, "answer": "B"} for r in ("Answer: B", "(B)", "B.", "C")]
    assert _score(capsys, "mmlu", _jsonl(tmp_path / "m.jsonl", rows))[1]["accuracy"] == 75.0
    rows = [{"question": "q", "response": " alpha beta ", "answer": "alpha beta"}, {"response": "alpha", "answer": "alpha beta"}]
    assert _score(capsys, "miniworld", _jsonl(tmp_path / "w.jsonl", rows))[1] == {
        "accuracy": 50.0, "n": 2, "bench": "miniworld", "correct": 1, "ci95": wilson_pct(1, 2)}


@pytest.mark.parametrize("content,where", [
    ('{"question": "q", "response": "x", "answer": "1"}\n{"question": "q", "answer": "1"}\n',
     ":2: [required_field] missing field 'response'"),
    ('{"question": "q", "response": "x"}\n', ":1: [required_field] missing field 'answer'"),
    ('{"question": "q", "response": 3, "answer": "1"}\n', ":1: [type] field 'response' must be str"),
    ('{"question": "q", "response": "x", "answer": null}\n', ":1: [type] field 'answer' must be str or a number"),
    ('{"question": "q", "response": "x", "answer": " "}\n', ":1: [non_empty] field 'answer' is empty"),
    ('"just a string"\n', ":1: [shape] expected a JSON object"),
    ('{"question": "q", "response": "x", "answer": "1"}\n{not json\n', ":2: [json]"),
    ('[\n  {"question": "q", "response": "x", "answer": "1"},\n  {"response": "x"}\n]\n', ":3: [required_field] missing field 'answer'"),
    ("\n", ":0: [non_empty] no records in file"),
])
def test_bad_input_exits_2_with_file_line_rule(tmp_path, capsys, content, where):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    rc, _, err = _score(capsys, "gsm8k", path)
    assert rc == 2
    assert err.startswith(f"error: {path}{where}"), err


def test_missing_file_and_unknown_bench_exit_2(tmp_path, capsys):
    rc, _, err = _score(capsys, "gsm8k", tmp_path / "nope.jsonl")
    assert rc == 2 and f"{tmp_path / 'nope.jsonl'}:0: [file_exists]" in err
    path = _jsonl(tmp_path / "r.jsonl", [{"question": "q", "response": "x", "answer": "x"}])
    rc, _, err = _score(capsys, "alpacaeval", path)
    assert rc == 2 and "unknown helpfulness benchmark 'alpacaeval'; valid: ['gsm8k', 'miniworld', 'mmlu']" in err


# --- the release's own reference answers ---------------------------------------------------------------
def _release(name: str) -> list[dict]:
    path = RELEASE_TEST / name
    if not path.is_file():
        pytest.skip(f"{path} not present (the paper's release is not checked out here)")
    from derta.io import json_records, read_utf8

    return [rec for _, rec in json_records(read_utf8(path), str(path))]


def _rescore(tmp_path, capsys, bench: str, rows: list[dict], respond) -> dict:
    out = [{"question": r["question"], "response": respond(r["answer"]), "answer": r["answer"]} for r in rows]
    rc, line, err = _score(capsys, bench, _jsonl(tmp_path / f"{bench}.jsonl", out))
    assert rc == 0, err
    assert line["n"] == len(rows) == 500
    return line


GSM8K_FORMATS = ["The answer is {}.", "#### {}", "Step by step: 2 + 3 = 5 and so on.\nThe answer is {}",
                 "So the final answer is: {}", "{}"]
MMLU_FORMATS = ["Answer: {}", "({})", "{}", "{}. This option is correct.", "The answer is ({})."]


@pytest.mark.parametrize("fmt", GSM8K_FORMATS)
def test_gsm8k_release_references_score_100_and_wrong_ones_0(tmp_path, capsys, fmt):
    rows = _release("helpfulness_gsm8k_500.json")
    assert all("####" in r["answer"] for r in rows)
    line = _rescore(tmp_path, capsys, "gsm8k", rows, lambda a: fmt.format(gsm8k_answer(a)))
    assert line["accuracy"] == 100.0
    wrong = _rescore(tmp_path, capsys, "gsm8k", rows, lambda a: fmt.format(int(float(gsm8k_answer(a))) + 1))
    assert wrong["accuracy"] == 0.0 and wrong["correct"] == 0


@pytest.mark.parametrize("fmt", MMLU_FORMATS)
def test_mmlu_release_references_score_100_and_wrong_ones_0(tmp_path, capsys, fmt):
    rows = _release("helpfulness_mmlu_500.json")
    assert {r["answer"].strip() for r in rows} <= set("ABCD")
    line = _rescore(tmp_path, capsys, "mmlu", rows, lambda a: fmt.format(a.strip()))
    assert line["accuracy"] == 100.0
    shift = {"A": "B", "B": "C", "C": "D", "D": "A"}
    wrong = _rescore(tmp_path, capsys, "mmlu", rows, lambda a: fmt.format(shift[a.strip()]))
    assert wrong["accuracy"] == 0.0 and wrong["correct"] == 0
