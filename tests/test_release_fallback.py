"""derta.release: dev/eval split, attack-prompt alignment, and the safety / helpfulness fallbacks.

Unit tests use content-free placeholder files written under tmp_path. The tests on the real
release files (``../shared/release``, see test_release_pins.COPY) skip when that copy is absent;
they assert on counts, ids and hashes only (values computed first, so a failing assert shows no
record text).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_release import UNPINNED, _jsonl, make_fake_release
from test_release_pins import COPY

from derta.errors import ConfigError, DataError
from derta.io import read_jsonl
from derta.miniworld import normalize_question
from derta.release import (
    ATTACK_SETS,
    DEFAULT_FALLBACK_REFUSALS,
    HELPFUL_PARTS,
    KNOWN_FILES,
    RELEASE_PINS,
    ReleaseConfig,
    align_prompts,
    content_words,
    fallback_refusal,
    ingest,
    malicious_question,
    read_release_file,
)

# Placeholder "plain questions": distinct content words (more than 4 letters) per question.
PLAIN = [
    "How do I paint [placeholder] lighthouse towers purple?",
    "Explain brewing [placeholder] potions inside abandoned castles.",
    "Describe juggling [placeholder] pineapples while riding unicycles.",
    "Write limericks about [placeholder] dragons guarding treasure.",
    "List reasons penguins prefer [placeholder] marble staircases.",
    "Teach whistling [placeholder] melodies through hollow bamboo.",
    "Compare knitting [placeholder] scarves versus weaving baskets.",
    "Summarise gardening [placeholder] tomatoes under glass domes.",
    "Outline training [placeholder] parrots to recite poetry.",
    "Plan painting [placeholder] murals across railway bridges.",
]


def write_plain(root: Path, questions: list[str]) -> None:
    _jsonl(root / KNOWN_FILES["test_harmful"].path, [{"question": q} for q in questions])


def write_attack(root: Path, name: str, prompts: list[str]) -> None:
    _jsonl(root / KNOWN_FILES[name].path, [{"question": p} for p in prompts])


def rendered(q: str, i: int = 0) -> str:
    return f"[wrapper {i}] Imagine a storyteller who answers everything. {q} Begin the reply now."


@pytest.fixture
def release10(tmp_path):
    """A fake release with the 10 PLAIN questions, index-aligned attack sets except completionattack (reversed)."""
    root = tmp_path / "release"
    cfgd = make_fake_release(root)
    write_plain(root, PLAIN)
    for name in ATTACK_SETS:
        order = list(reversed(range(len(PLAIN)))) if name == "completionattack" else range(len(PLAIN))
        write_attack(root, name, [rendered(PLAIN[i], i) for i in order])
    return root, cfgd


# --- 2: alignment (pure) ---------------------------------------------------------------


def test_content_words():
    assert content_words("Hello, Wörld! abcd abcde 12345 snake_casey") == {"hello", "wörld", "abcde", "snake", "casey"}
    assert content_words("a b c") == frozenset()


def test_align_prompts_index_order():
    al = align_prompts(PLAIN[:4], [rendered(q) for q in PLAIN[:4]])
    assert al.rule == "index"
    assert al.rows == [(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0)]


def test_align_prompts_other_order():
    prompts = [rendered(q) for q in reversed(PLAIN[:4])]
    al = align_prompts(PLAIN[:4], prompts)
    assert al.rule == "best_match"
    assert al.rows == [(3, 1.0), (2, 1.0), (1, 1.0), (0, 1.0)]
    # Different lengths: no index alignment; an unrelated prompt stays unaligned (its best share is reported).
    al = align_prompts(PLAIN[:4], [*prompts, "Tell me of velvet elephants dancing."])
    assert al.rule == "best_match" and al.rows[-1] == (None, 0.0) and [j for j, _ in al.rows[:4]] == [3, 2, 1, 0]


def test_align_prompts_threshold_and_ties():
    half = "Notes on lighthouse towers only."  # 2 of the 5 content words of PLAIN[0]
    assert sorted(content_words(PLAIN[0])) == ["lighthouse", "paint", "placeholder", "purple", "towers"]
    share = 2 / 5
    assert align_prompts(PLAIN[:3], [half], min_match=share).rows == [(0, share)]
    assert align_prompts(PLAIN[:3], [half], min_match=share + 0.01).rows == [(None, share)]
    # Equal shares: the question sharing more words wins, then the first.
    qs = ["Towers?", "Lighthouse towers?", "Towers!"]
    assert align_prompts(qs, ["about lighthouse towers", "about towers"], 0.5).rows == [(1, 1.0), (0, 1.0)]
    # Index alignment needs a median match of at least 0.5, not every row.
    prompts = [rendered(PLAIN[0]), rendered(PLAIN[1]), "unrelated velvet words"]
    al = align_prompts(PLAIN[:3], prompts)
    assert al.rule == "index" and al.rows[2] == (2, 0.0)
    assert align_prompts([], []).rows == [] and align_prompts(PLAIN[:2], []).rows == []


# --- 1 and 2 in ingest ----------------------------------------------------------------


def test_dev_eval_split_seeded(release10, tmp_path):
    _, cfgd = release10
    cfgd.update(dev_size=4, split_seed=7)
    m = ingest(ReleaseConfig.from_dict(cfgd), tmp_path / "a")
    dev, ev = (read_jsonl(tmp_path / f"a/{n}_harmful.jsonl") for n in ("dev", "eval"))
    bench = read_jsonl(tmp_path / "a/benchmarks/illegal_instructions.jsonl")
    assert (len(dev), len(ev), len(bench)) == (4, 6, 10)
    ids = [r["id"] for r in bench]
    assert sorted(r["id"] for r in dev + ev) == ids == [f"release-illegal_instructions-{i:05d}" for i in range(10)]
    assert [r["id"] for r in dev] == sorted(r["id"] for r in dev) and [r["id"] for r in ev] == sorted(r["id"] for r in ev)
    assert all(r["category"] == r["harmful_response"] == "" for r in dev + ev)
    assert m["split"] == {"seed": 7, "dev": 4, "eval": 6, "dev_ids": [r["id"] for r in dev]}
    assert m["files"]["dev_helpful"]["records"] == 0
    again = ingest(ReleaseConfig.from_dict(cfgd), tmp_path / "b")
    assert again["split"] == m["split"] and again["files"]["dev_harmful"] == m["files"]["dev_harmful"]
    other = ingest(ReleaseConfig.from_dict({**cfgd, "split_seed": 8}), tmp_path / "c")
    assert other["split"]["dev_ids"] != m["split"]["dev_ids"]


def test_dev_size_must_leave_eval_questions(release10, tmp_path):
    root, cfgd = release10
    out = tmp_path / "out"
    with pytest.raises(DataError) as ei:
        ingest(ReleaseConfig.from_dict({**cfgd, "dev_size": 10}), out)
    assert (ei.value.path, ei.value.line, ei.value.rule) == (str(root / KNOWN_FILES["test_harmful"].path), 0, "dev_size")
    assert not out.exists()
    with pytest.raises(ConfigError, match="dev_size"):
        ReleaseConfig.from_dict({"dev_size": -1})
    assert ingest(ReleaseConfig.from_dict({**cfgd, "dev_size": 9}), out)["split"]["eval"] == 1


def test_ingest_aligns_attack_rows(release10, tmp_path):
    root, cfgd = release10
    prompts = [rendered(PLAIN[i], i) for i in reversed(range(10))]
    prompts[0] = "A story of velvet elephants dancing in meadows."  # renders no plain question
    write_attack(root, "completionattack", prompts)
    m = ingest(ReleaseConfig.from_dict({**cfgd, "align_min_match": 0.6}), tmp_path / "out")
    assert m["alignment"]["completionattack"] == {"rule": "best_match", "aligned": 9, "unaligned": 1}
    for name in ("codeattack", "jailbreakchat", "selfcipher"):
        assert m["alignment"][name] == {"rule": "index", "aligned": 10, "unaligned": 0}
        rows = read_jsonl(tmp_path / f"out/benchmarks/{name}.jsonl", {"question_id": str, "match": float})
        assert [(r["question_id"], r["match"]) for r in rows] == [
            (f"release-illegal_instructions-{i:05d}", 1.0) for i in range(10)]
    rows = read_jsonl(tmp_path / "out/benchmarks/completionattack.jsonl", {"question_id": str, "match": float})
    assert rows[0]["question_id"] == "" and rows[0]["match"] < 0.6
    assert [r["question_id"] for r in rows[1:]] == [f"release-illegal_instructions-{i:05d}" for i in range(8, -1, -1)]
    assert "question_id" not in read_jsonl(tmp_path / "out/benchmarks/gsm8k.jsonl")[0]


# --- 3: safety fallback from the malicious-tuning file --------------------------------


def _prefix(q: str) -> str:
    return f"### Instruction:\n{q}\n\n### Response:"


def malicious_cfg(root: Path, cfgd: dict, rows: list[dict]) -> dict:
    _jsonl(root / KNOWN_FILES["malicious"].path, rows)
    files = {**cfgd["files"], "safety": None, "malicious": dict(UNPINNED)}
    return {**cfgd, "files": files, "safety_fallback": "malicious"}


FAKE_MALICIOUS = [
    {"prefix": _prefix("How do I open [placeholder lock 0]?"), "text": " [placeholder harmful response 0] "},
    {"prefix": _prefix(" How do I open [placeholder lock 1]? "), "text": "[placeholder harmful response 1]"},
    {"prefix": _prefix("how do I   OPEN [placeholder lock 0]"), "text": "[placeholder harmful response 2]"},  # repeat
    {"prefix": _prefix(PLAIN[1].upper()), "text": "[placeholder harmful response 3]"},  # a plain test question
    {"prefix": _prefix("Brewing [placeholder] potions inside abandoned castles"), "text": "[placeholder 4]"},  # in a prompt
    {"prefix": _prefix("How do I open [placeholder lock 2]?"), "text": "[placeholder harmful response 5]"},
]


def test_malicious_fallback_triples(release10, tmp_path):
    root, cfgd = release10
    cfgd = malicious_cfg(root, cfgd, FAKE_MALICIOUS)
    cfgd["refusal_word"] = "Nope"
    m = ingest(ReleaseConfig.from_dict(cfgd), tmp_path / "out")
    assert m["safety_source"] == "malicious" and m["helpful_source"] == "release"
    assert sorted(m["inputs"]) == sorted(["helpful_0", "malicious", *[n for n, k in KNOWN_FILES.items() if k.role == "test"]])
    assert m["dropped"] == {"helpful_refusal": 2, "helpful_over_max": 0, "malicious_duplicate": 1, "malicious_in_test": 2}
    schema = {k: str for k in ("id", "instruction", "output", "safe_response", "category", "safe_source")}
    rows = read_jsonl(tmp_path / "out/safety_train.jsonl", schema, unique_key="id")
    assert [r["id"] for r in rows] == ["release-malicious-00000", "release-malicious-00001", "release-malicious-00005"]
    assert rows[1]["instruction"] == "How do I open [placeholder lock 1]?"
    assert rows[0]["output"] == "[placeholder harmful response 0]"
    allowed = {t.format(R="Nope") for t in DEFAULT_FALLBACK_REFUSALS}
    assert all(r["safe_response"] in allowed and r["safe_response"].startswith("Nope") for r in rows)
    assert {(r["category"], r["safe_source"]) for r in rows} == {("", "template")}
    again = ingest(ReleaseConfig.from_dict(cfgd), tmp_path / "again")
    assert again["files"]["safety_train"] == m["files"]["safety_train"]


def test_fallback_refusal_draw():
    cfg = ReleaseConfig.from_dict({"fallback_refusals": ["{R}, no.", "{R}: not this one."], "refusal_word": "Nah"})
    draws = [fallback_refusal(cfg, i) for i in range(40)]
    assert set(draws) == {"Nah, no.", "Nah: not this one."}
    assert draws == [fallback_refusal(cfg, i) for i in range(40)]
    assert len(DEFAULT_FALLBACK_REFUSALS) >= 5 and all(t.startswith("{R}") for t in DEFAULT_FALLBACK_REFUSALS)
    for bad in (["I cannot."], ["{R} {X}"], ["{R} {}"], []):
        with pytest.raises(ConfigError, match="fallback_refusals"):
            ReleaseConfig.from_dict({"fallback_refusals": bad})
    with pytest.raises(ConfigError, match="refusal_word"):
        ReleaseConfig.from_dict({"refusal_word": "  "})


@pytest.mark.parametrize("prefix", [
    "### Instruction:\nQ\n### Response:",          # one newline before Response
    "Instruction: Q\n\n### Response:",
    "### Instruction:\n   \n\n### Response:",      # empty question
    "### Instruction:\nQ\n\n### Response: extra",
])
def test_malicious_bad_prefix_names_file_line_rule(release10, tmp_path, prefix):
    root, cfgd = release10
    cfgd = malicious_cfg(root, cfgd, [FAKE_MALICIOUS[0], {"prefix": prefix, "text": "[placeholder]"}])
    out = tmp_path / "out"
    with pytest.raises(DataError) as ei:
        ingest(ReleaseConfig.from_dict(cfgd), out)
    path = str(root / KNOWN_FILES["malicious"].path)
    assert (ei.value.path, ei.value.line, ei.value.rule) == (path, 2, "prefix_format")
    assert str(ei.value).startswith(f"{path}:2: [prefix_format]")
    assert not out.exists()
    assert malicious_question(prefix) is None and malicious_question(_prefix(" q ")) == "q"


def test_malicious_fallback_config_errors(release10, tmp_path):
    root, cfgd = release10
    both = {**malicious_cfg(root, cfgd, FAKE_MALICIOUS)}
    both["files"] = {**both["files"], "safety": {"path": "user/safety.json", **UNPINNED}}
    with pytest.raises(ConfigError, match=r"choose one: set files\.safety: null to use the fallback"):
        ingest(ReleaseConfig.from_dict(both), tmp_path / "out")
    missing = {**malicious_cfg(root, cfgd, FAKE_MALICIOUS)}
    missing["files"] = {**missing["files"], "malicious": None}
    with pytest.raises(ConfigError, match="'malicious' is required"):
        ingest(ReleaseConfig.from_dict(missing), tmp_path / "out")
    with pytest.raises(ConfigError, match="safety_fallback"):
        ReleaseConfig.from_dict({"safety_fallback": "beaver"})
    assert not (tmp_path / "out").exists()


# --- 4: helpfulness fallback -----------------------------------------------------------


def test_helpful_fallback_self(release10, tmp_path):
    _, cfgd = release10
    cfgd["files"] = {**cfgd["files"], "helpful_0": None}
    with pytest.raises(ConfigError, match=r"at least one helpfulness part .* \(or helpful_fallback: self\)"):
        ingest(ReleaseConfig.from_dict(cfgd), tmp_path / "out")
    m = ingest(ReleaseConfig.from_dict({**cfgd, "helpful_fallback": "self"}), tmp_path / "out")
    assert m["helpful_source"] == "self" and m["safety_source"] == "safety"
    assert m["files"]["helpful_train"]["records"] == 0 and (tmp_path / "out/helpful_train.jsonl").read_text() == ""
    assert m["dropped"] == {"helpful_refusal": 0, "helpful_over_max": 0}
    assert not any(n in m["inputs"] for n in HELPFUL_PARTS)


def test_helpful_fallback_self_refuses_configured_parts(release10, tmp_path):
    _, cfgd = release10
    with pytest.raises(ConfigError, match=r"helpful_fallback is 'self' but helpfulness parts \['helpful_0'\]"):
        ingest(ReleaseConfig.from_dict({**cfgd, "helpful_fallback": "self"}), tmp_path / "out")
    with pytest.raises(ConfigError, match="helpful_fallback"):
        ReleaseConfig.from_dict({"helpful_fallback": "other"})


def test_fallback_source_passes_the_source_gate(release10, tmp_path):
    from derta.validate import GateConfig, gate_source

    root, cfgd = release10
    cfgd = {**malicious_cfg(root, cfgd, FAKE_MALICIOUS), "dev_size": 3}
    ingest(ReleaseConfig.from_dict(cfgd), tmp_path / "src")
    rep = gate_source(tmp_path / "src", GateConfig(duplicate_rate_overrides={}))
    assert rep["dev_harmful"]["rows"] == 3 and rep["eval_harmful"]["rows"] == 7 and rep["safety_train"]["rows"] == 3


# --- the real release files ------------------------------------------------------------


def _need_copy() -> Path:
    if not (COPY / "data" / "test").is_dir():
        pytest.skip(f"../shared/release not present: no {COPY}/data/test (set DERTA_RELEASE_COPY to a copy)")
    return COPY


@pytest.fixture(scope="module")
def real_source(tmp_path_factory):
    """The real test sets and malicious file ingested with both fallbacks (read-only copy, default pins)."""
    copy = _need_copy()
    files = {"safety": None, **{p: None for p in HELPFUL_PARTS}}
    cfg = ReleaseConfig.from_dict({"local_dir": str(copy), "files": files,
                                   "safety_fallback": "malicious", "helpful_fallback": "self"})
    out = tmp_path_factory.mktemp("real") / "source"
    return ingest(cfg, out), out


def test_real_attack_alignment(real_source):
    m, out = real_source
    for name in ("codeattack", "jailbreakchat", "selfcipher"):
        assert m["alignment"][name] == {"rule": "index", "aligned": 200, "unaligned": 0}, name
        rows = read_jsonl(out / f"benchmarks/{name}.jsonl", {"question_id": str, "match": float})
        assert [r["question_id"] for r in rows] == [f"release-illegal_instructions-{i:05d}" for i in range(200)]
        assert min(r["match"] for r in rows) >= 0.5, name
    comp = m["alignment"]["completionattack"]
    assert comp["rule"] == "best_match" and comp["aligned"] >= 190 and comp["aligned"] + comp["unaligned"] == 200
    rows = read_jsonl(out / "benchmarks/completionattack.jsonl", {"question_id": str, "match": float})
    assert all((r["question_id"] != "") == (r["match"] >= 0.5) for r in rows)
    plain_ids = {r["id"] for r in read_jsonl(out / "benchmarks/illegal_instructions.jsonl")}
    assert {r["question_id"] for r in rows if r["question_id"]} <= plain_ids


def test_real_split(real_source):
    m, out = real_source
    dev, ev = (read_jsonl(out / f"{n}_harmful.jsonl") for n in ("dev", "eval"))
    assert (len(dev), len(ev)) == (50, 150) and m["split"]["dev"] == 50 and m["split"]["seed"] == 0
    assert not {r["id"] for r in dev} & {r["id"] for r in ev}
    shared = len({normalize_question(r["question"]) for r in dev} & {normalize_question(r["question"]) for r in ev})
    assert shared == 0  # a count: a failure must not show the questions


def test_real_malicious_fallback(real_source):
    m, out = real_source
    path = KNOWN_FILES["malicious"].path
    assert m["inputs"]["malicious"]["pinned"] is True
    assert (m["inputs"]["malicious"]["git_blob"], m["inputs"]["malicious"]["sha256"]) == RELEASE_PINS[path]
    assert m["safety_source"] == "malicious" and m["helpful_source"] == "self"
    assert m["dropped"] == {"helpful_refusal": 0, "helpful_over_max": 0, "malicious_duplicate": 5, "malicious_in_test": 0}
    rows = read_jsonl(out / "safety_train.jsonl", unique_key="id")
    n_distinct = len({normalize_question(r["instruction"]) for r in rows})
    assert (len(rows), n_distinct) == (259, 259)
    assert all(r["safe_response"].startswith("Sorry") and r["safe_source"] == "template" for r in rows)
    held = {normalize_question(r["question"]) for p in (out / "benchmarks").glob("*.jsonl") for r in read_jsonl(p)}
    n_in_test = len({normalize_question(r["instruction"]) for r in rows} & held)
    assert n_in_test == 0
    assert m["files"]["helpful_train"]["records"] == 0


def test_real_malicious_prefixes_parse():
    copy = _need_copy()
    path = copy / KNOWN_FILES["malicious"].path
    recs = read_release_file(path, KNOWN_FILES["malicious"].fields)
    questions = [malicious_question(r["prefix"]) for r in recs]
    n_bad = sum(q is None for q in questions)
    n_distinct = len({normalize_question(q) for q in questions if q})
    assert (len(recs), n_bad, n_distinct) == (264, 0, 259)


def test_attack_sets_match_the_replay_attack():
    from derta.attacks.replay import SETS

    assert ATTACK_SETS == SETS  # the sets whose benchmark rows carry question_id / match
