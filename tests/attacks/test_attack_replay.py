"""replay / release:<set>: the paper's rendered attack prompts, run verbatim (no model needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from derta.attacks import ATTACKS, AttackPrompt, Question, get_attack
from derta.attacks.replay import RELEASE_ATTACKS, SETS, Replay, ReplayConfig
from derta.errors import ConfigError, DataError
from derta.io import json_records, read_utf8, stable_id

RELEASE_TEST = Path("/work/shared/release/data/test")

QS = [Question("q2", "plain two"), Question("q1", "plain one"), Question("q3", "plain three")]


def _bench(src: Path, rset: str, rows: list[dict]) -> Path:
    path = src / "benchmarks" / f"{rset}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _row(rid: str, qid: str, text: str | None = None, match: str = "exact") -> dict:
    return {"id": rid, "question": text if text is not None else f"rendered {rid}", "question_id": qid, "match": match}


ROWS = [
    _row("r0", "q1"),
    _row("r1", ""),  # unaligned
    _row("r2", "q2"),
    _row("r3", "q9"),  # a question the caller did not pass (other split / over the cap)
    _row("r4", "q1", "  kept verbatim \n[with] {braces}  ", match="fuzzy"),
    _row("r5", ""),  # unaligned
]


def test_names_and_registration():
    assert ATTACKS["replay"] is Replay and Replay.name == "replay" and Replay.box == "black"
    assert RELEASE_ATTACKS == tuple(f"release:{s}" for s in SETS)
    assert set(SETS) == {"codeattack", "completionattack", "jailbreakchat", "selfcipher"}
    for rset in SETS:
        a = get_attack(f"release:{rset}", {}, source_dir="unused")
        assert isinstance(a, Replay) and a.name == f"release:{rset}" and a.cfg.set == rset
    assert ATTACKS["replay"].name == "replay"  # the instance name does not leak into the class
    a = get_attack("replay", {"set": "selfcipher"}, seed=1, source_dir="unused")
    assert a.name == "release:selfcipher"
    assert get_attack("release:jailbreakchat", ReplayConfig(set="jailbreakchat")).cfg.set == "jailbreakchat"


def test_validation_lists_valid_names():
    with pytest.raises(ConfigError, match=r"release:nope.*release:codeattack.*release:selfcipher"):
        get_attack("release:nope", {})
    with pytest.raises(ConfigError, match=r"set must be one of \['codeattack', 'completionattack'"):
        get_attack("replay", {"set": "pair"})
    with pytest.raises(ConfigError, match=r"set must be one of"):
        get_attack("replay", {})  # 'set' is required
    with pytest.raises(ConfigError, match=r"set must be one of"):
        Replay()
    with pytest.raises(ConfigError, match=r"valid keys: \['chat', 'file', 'set'\]"):
        get_attack("release:codeattack", {"sett": "x"})
    with pytest.raises(ConfigError, match=r"set='selfcipher', name says 'codeattack'"):
        get_attack("release:codeattack", {"set": "selfcipher"})
    with pytest.raises(ConfigError, match=r"unknown attack 'nope'.*release:codeattack"):
        get_attack("nope")


def test_release_codeattack_follows_questions_then_file_order(tmp_path):
    _bench(tmp_path, "codeattack", ROWS)
    attack = get_attack("release:codeattack", {}, seed=0, source_dir=tmp_path)
    out = attack.build(QS)
    assert [(p.question_id, p.meta["row_id"]) for p in out] == [("q2", "r2"), ("q1", "r0"), ("q1", "r4")]
    by_row = {r["id"]: r for r in ROWS}
    for p in out:
        assert isinstance(p, AttackPrompt)
        assert p.attack == "release:codeattack" and p.chat is True and p.prefill == ""
        assert p.text == by_row[p.meta["row_id"]]["question"]  # verbatim, whitespace kept
        assert p.meta == {"row_id": p.meta["row_id"], "match": by_row[p.meta["row_id"]]["match"]}
        assert p.id == stable_id("release:codeattack", p.question_id, p.meta["row_id"])
        assert AttackPrompt.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert attack.stats["unaligned"] == 2
    # only the given questions: a capped / split question list carries over
    assert [p.meta["row_id"] for p in attack.build([Question("q1", "x")])] == ["r0", "r4"]
    assert attack.build([Question("q7", "x")]) == []
    assert attack.build(QS) == get_attack("release:codeattack", {}, seed=5, source_dir=str(tmp_path)).build(QS)


def test_chat_is_automatic_per_set_and_overridable(tmp_path):
    for rset in SETS:
        _bench(tmp_path, rset, ROWS)
    for rset in SETS:
        out = get_attack(f"release:{rset}", {}, source_dir=tmp_path).build(QS)
        assert out and all(p.chat is (rset != "completionattack") for p in out), rset
    out = get_attack("release:completionattack", {}, source_dir=tmp_path).build(QS)
    assert all(p.chat is False and p.attack == "release:completionattack" for p in out)
    forced = get_attack("release:completionattack", {"chat": True}, source_dir=tmp_path).build(QS)
    assert forced and all(p.chat is True for p in forced)
    raw = get_attack("release:codeattack", {"chat": False}, source_dir=tmp_path).build(QS)
    assert raw and all(p.chat is False for p in raw)


def test_unaligned_rows_skipped_and_counted(tmp_path):
    _bench(tmp_path, "selfcipher", [_row("a", ""), _row("b", "  "), _row("c", "q3")])
    attack = get_attack("release:selfcipher", {}, source_dir=tmp_path)
    out = attack.build(QS)
    assert [p.meta["row_id"] for p in out] == ["c"]
    assert attack.stats == {"unaligned": 2}
    attack.build(QS)
    assert attack.stats == {"unaligned": 2}  # per build, not accumulated


def test_file_overrides_source_dir(tmp_path):
    path = _bench(tmp_path / "elsewhere", "jailbreakchat", [_row("x", "q1")])
    out = get_attack("release:jailbreakchat", {"file": str(path)}).build(QS)
    assert [p.meta["row_id"] for p in out] == ["x"]


def test_missing_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"missing file .*benchmarks/codeattack\.jsonl"):
        get_attack("release:codeattack", {}, source_dir=tmp_path).build(QS)
    with pytest.raises(ConfigError, match=r"missing file .*nothere\.jsonl"):
        get_attack("release:codeattack", {"file": str(tmp_path / "nothere.jsonl")}).build(QS)
    with pytest.raises(ConfigError, match=r"no source_dir"):
        get_attack("release:codeattack", {}).build(QS)


def test_bad_json_line_is_data_error_with_line(tmp_path):
    path = _bench(tmp_path, "codeattack", [_row("r0", "q1")])
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("\n{not json\n")
    with pytest.raises(DataError) as err:
        get_attack("release:codeattack", {}, source_dir=tmp_path).build(QS)
    assert err.value.path == str(path) and err.value.line == 3 and err.value.rule == "json"
    assert f"{path}:3: [json]" in str(err.value)


def test_bad_rows_are_data_errors(tmp_path):
    cases = [
        ({"id": "r0", "question": "x"}, "required_field"),  # no question_id: stale source dir
        ({"id": "r0", "question": "", "question_id": "q1"}, "non_empty"),
        ({"id": "r0", "question": "x", "question_id": 3}, "type"),
    ]
    for rec, rule in cases:
        _bench(tmp_path, "codeattack", [_row("ok", "q1"), rec])
        with pytest.raises(DataError) as err:
            get_attack("release:codeattack", {}, source_dir=tmp_path).build(QS)
        assert (err.value.line, err.value.rule) == (2, rule)
    _bench(tmp_path, "codeattack", [_row("dup", "q1"), _row("dup", "q2")])
    with pytest.raises(DataError, match=r":2: \[unique_id\]"):
        get_attack("release:codeattack", {}, source_dir=tmp_path).build(QS)


def test_real_release_codeattack_is_replayed_verbatim(tmp_path):
    src = RELEASE_TEST / "safety_codeattack.json"
    if not src.exists():
        pytest.skip(f"release file {src} not present (shared release data not mounted)")
    records = [rec for _, rec in json_records(read_utf8(src), str(src))][:5]
    assert len(records) == 5
    rows = [
        {"id": f"release-codeattack-{i:05d}", "question": r["question"],
         "question_id": f"release-illegal_instructions-{i:05d}", "match": "index"}
        for i, r in enumerate(records)
    ]
    _bench(tmp_path, "codeattack", rows)
    questions = [Question(f"release-illegal_instructions-{i:05d}", "plain") for i in range(5)]
    out = get_attack("release:codeattack", {}, source_dir=tmp_path).build(questions)
    assert len(out) == 5
    sha = lambda s: hashlib.sha256(s.encode("utf-8")).hexdigest()  # noqa: E731  (compare hashes, never print text)
    assert [sha(p.text) for p in out] == [sha(r["question"]) for r in records]
    assert [p.question_id for p in out] == [q.id for q in questions]
    assert all(p.chat and p.attack == "release:codeattack" for p in out)
