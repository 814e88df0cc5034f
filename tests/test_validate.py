"""derta.validate: Great Expectations gates on a small mini-world and its variants.

The world and the variants are generated once per module; each failing case
copies them and breaks one thing.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from derta.errors import DataError
from derta.io import read_jsonl, write_jsonl
from derta.miniworld import MiniWorldConfig, generate, word_units
from derta.validate import GateConfig, GateError, find_contained, gate_source, gate_variants, run_gate
from derta.variants import SynthesizeConfig, synthesize

WORLD = MiniWorldConfig(
    n_safety_train=60, n_helpful_train=50, n_eval_harmful=20, n_eval_helpful=20, n_dev_harmful=10,
    n_dev_helpful=10, n_entities=40, web_fact_repeats=2, web_harmful_docs=50, web_chatter_docs=20,
)
SYNTH = SynthesizeConfig(n_triples=20, n_helpful=40)


def _write(root: Path, data: dict[str, list[dict]]) -> Path:
    for name, rows in data.items():
        write_jsonl(root / f"{name}.jsonl", rows)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    world = generate(WORLD)
    src = _write(root / "src", world)
    var = _write(root / "var", synthesize(SYNTH, world["safety_train"], world["helpful_train"]))
    return src, var, world


@pytest.fixture
def copy(data, tmp_path):
    src, var, world = data
    return shutil.copytree(src, tmp_path / "src"), shutil.copytree(var, tmp_path / "var"), world


def mutate(path: Path, fn) -> None:
    rows = read_jsonl(path)
    fn(rows)
    write_jsonl(path, rows)


def failed(err: GateError) -> set[str]:
    return {f"{Path(f['path']).stem}:{f['check']}" for f in err.failures}


def only(*variants: str) -> SynthesizeConfig:
    return SYNTH.model_copy(update={"variants": list(variants)})


# --- passing data -------------------------------------------------------------


def test_good_data_passes_and_reports(data, tmp_path):
    src, var, _ = data
    rep = run_gate("source", tmp_path / "source.json", src_dir=src)
    assert set(rep) == {"safety_train", "helpful_train", "eval_harmful", "eval_helpful", "dev_harmful", "dev_helpful", "web"}
    assert all(d["success"] for d in rep.values())
    on_disk = json.loads((tmp_path / "source.json").read_text())
    assert on_disk == json.loads(json.dumps(rep))
    names = {e["check"] for e in rep["safety_train"]["expectations"]}
    assert {"unique:id", "not_blank:instruction", "no_heldout_question:instruction", "duplicate_rate:instruction+output+safe_response"} <= names
    assert "not_in_web:question" in {e["check"] for e in rep["eval_harmful"]["expectations"]}
    assert "disjoint_from_eval:question" in {e["check"] for e in rep["dev_helpful"]["expectations"]}

    rep = run_gate("variants", tmp_path / "variants.json", src_dir=src, variants_dir=var, synth_cfg=SYNTH)
    assert set(rep) == {*SYNTH.variants, "dpo_pairs"}
    assert all(d["success"] for d in rep.values()), [
        (n, e) for n, d in rep.items() for e in d["expectations"] if not e["success"]
    ]
    checks = {e["check"]: e for e in rep["derta"]["expectations"]}
    assert checks["count:rto"]["observed"] == 20 and checks["count:helpful"]["observed"] == 40
    assert checks["share_k_zero"]["observed"] == pytest.approx(math.ceil(20 / 3) / 20)
    assert "text_matches_source:rto" in checks and "count:rto" in {e["check"] for e in rep["recaug"]["expectations"]}
    json.dumps(rep)


def test_paper_prefix_rule_passes(data, tmp_path):
    src, _, world = data
    cfg = only("derta", "recaug").model_copy(update={"prefix_rule": "paper"})
    var = _write(tmp_path / "var", synthesize(cfg, world["safety_train"], world["helpful_train"]))
    rep = gate_variants(var, src, cfg)
    assert "share_k_zero" not in {e["check"] for e in rep["derta"]["expectations"]}


# --- source failures ------------------------------------------------------------


def test_eval_question_in_training_files(copy, tmp_path):
    src, _, world = copy
    q = world["eval_harmful"][3]["question"]
    q2 = world["eval_helpful"][0]["question"]

    def smuggle(rows):  # differs only in case, spacing and end punctuation: still the same question
        rows[4]["instruction"] = "  " + q.upper().rstrip("?.") + " "
    mutate(src / "safety_train.jsonl", smuggle)
    mutate(src / "helpful_train.jsonl", lambda rows: rows[10].update(instruction=q2))
    report_path = tmp_path / "reports" / "source.json"
    with pytest.raises(GateError) as ei:
        run_gate("source", report_path, src_dir=src)
    err = ei.value
    assert isinstance(err, DataError)
    assert (err.path, err.line, err.rule) == (str(src / "safety_train.jsonl"), 5, "no_heldout_question:instruction")
    assert failed(err) == {"safety_train:no_heldout_question:instruction", "helpful_train:no_heldout_question:instruction"}
    msg = str(err)
    assert msg.startswith(f"{src / 'safety_train.jsonl'}:5: [no_heldout_question:instruction]")
    assert "id=safety-00004 line 5" in msg and "id=helpful-00010 line 11" in msg

    rep = json.loads(report_path.read_text())  # written although the gate failed
    assert rep["helpful_train"]["success"] is False and rep["eval_harmful"]["success"] is True
    bad = [e for e in rep["helpful_train"]["expectations"] if not e["success"]][0]
    assert bad["observed"] == {"unexpected": 1, "rows": 50}
    assert bad["unexpected_examples"] == [{"id": "helpful-00010", "line": 11, "instruction": q2}]


def test_eval_question_in_web_and_dev(copy):
    src, _, world = copy
    q = world["eval_harmful"][0]["question"]
    mutate(src / "web.jsonl", lambda rows: rows[7].update(text=f"Someone asked: {q} Nobody answered."))
    mutate(src / "dev_helpful.jsonl", lambda rows: rows[2].update(question=world["eval_helpful"][5]["question"]))
    with pytest.raises(GateError) as ei:
        gate_source(src)
    assert failed(ei.value) == {
        "eval_harmful:not_in_web:question", "web:no_heldout_question:text", "dev_helpful:disjoint_from_eval:question",
    }


def test_source_schema_and_duplicates(copy):
    src, _, _ = copy

    def dup(rows):  # 40% of helpful pairs become copies of the first: over the 0.25 override
        for r in rows[1:21]:
            r.update(instruction=rows[0]["instruction"], output=rows[0]["output"])
        rows[30]["output"] = 7
        rows[31]["instruction"] = "   "
        del rows[32]["output"]
    mutate(src / "helpful_train.jsonl", dup)
    with pytest.raises(GateError) as ei:
        gate_source(src)
    err = ei.value
    assert failed(err) == {
        "helpful_train:duplicate_rate:instruction+output", "helpful_train:type:output",
        "helpful_train:not_blank:instruction", "helpful_train:present:output",
    }
    by_check = {f["check"]: f for f in err.failures}
    assert by_check["type:output"]["unexpected_examples"][0] == {"id": "helpful-00030", "line": 31, "output": 7}
    assert by_check["present:output"]["unexpected_examples"][0]["line"] == 33
    dup_ex = by_check["duplicate_rate:instruction+output"]["unexpected_examples"]
    assert [e["line"] for e in dup_ex] == [2, 3, 4, 5, 6]


# --- variant failures -------------------------------------------------------------


def test_eval_question_in_variant_prefix(copy):
    src, var, world = copy
    q = world["dev_harmful"][1]["question"]

    def smuggle(rows):
        r = next(r for r in rows if r["kind"] == "harmful_prefix" and r["k"] == 0)
        r["prefix"] = SYNTH.prompt_template.format(q=q)
    mutate(var / "derta.jsonl", smuggle)
    with pytest.raises(GateError) as ei:
        gate_variants(var, src, only("derta"))
    assert {"derta:no_heldout_question:prefix", "derta:prompt_matches_source"} <= failed(ei.value)
    assert "no eval/dev/benchmark question occurs" in str(ei.value)


def test_wrong_safe_values(copy):
    src, var, _ = copy

    def bad(rows):
        helpful = [r for r in rows if r["kind"] == "helpful"]
        helpful[0]["safe"] = "true"
        helpful[1]["safe"] = "yes"
    mutate(var / "vanilla.jsonl", bad)
    with pytest.raises(GateError) as ei:
        gate_variants(var, src, only("vanilla"))
    assert failed(ei.value) == {"vanilla:safe_values", "vanilla:safe_iff_rto"}
    assert "safe == 'true' exactly for kind 'rto'" in str(ei.value)


def test_wrong_kind_counts(copy):
    src, var, _ = copy
    mutate(var / "rto.jsonl", lambda rows: rows.remove(next(r for r in rows if r["kind"] == "rto")))
    rto_row = next(r for r in read_jsonl(var / "derta.jsonl") if r["kind"] == "rto")
    mutate(var / "recaug.jsonl", lambda rows: rows.append(rto_row))
    with pytest.raises(GateError) as ei:
        gate_variants(var, src, only("rto", "recaug"))
    assert failed(ei.value) == {
        "rto:row_count", "rto:count:rto", "recaug:row_count", "recaug:count:rto", "recaug:kind_values",
    }
    by = {(Path(f["path"]).stem, f["check"]): f for f in ei.value.failures}
    assert by[("rto", "count:rto")]["observed"] == 19
    assert by[("recaug", "count:rto")]["unexpected_examples"][0]["id"] == rto_row["id"]


def test_duplicate_variant_rows(copy):
    src, var, _ = copy

    def dup(rows):  # 30% of rows copy the first helpful row (joins stay consistent, ids stay unique)
        helpful = [r for r in rows if r["kind"] == "helpful"]
        for r in helpful[1:19]:
            r.update(prefix=helpful[0]["prefix"], text=helpful[0]["text"], source_id=helpful[0]["source_id"])
    mutate(var / "harmful_prefix.jsonl", dup)
    with pytest.raises(GateError) as ei:
        gate_variants(var, src, only("harmful_prefix"))
    assert failed(ei.value) == {"harmful_prefix:duplicate_rate:prefix+text"}
    assert "duplicate rate of (prefix, text) <= 0.25" in str(ei.value)


def test_repeated_short_answers_pass_and_extra_copies_fail(data, tmp_path):
    """With short_answer_repeats the gate expects the copies of the short answers, counts them as
    helpful rows, and still flags a copy beyond them as a duplicate."""
    src, _, world = data
    cfg = SYNTH.model_copy(update={"short_answer_repeats": 3, "variants": ["vanilla"]})
    var = _write(tmp_path / "var", synthesize(cfg, world["safety_train"], world["helpful_train"]))
    report = gate_variants(var, src, cfg)
    assert all(d["success"] for d in report.values())
    rows = read_jsonl(var / "vanilla.jsonl")
    n_short = sum(len(r["output"].split()) <= 3 for r in world["helpful_train"][:40])
    assert sum(r["kind"] == "helpful" for r in rows) == 40 + 2 * n_short
    with pytest.raises(GateError) as ei:  # the same variant file read as if nothing were repeated
        gate_variants(var, src, cfg.model_copy(update={"short_answer_repeats": 1}))
    assert "vanilla:count:helpful" in failed(ei.value)

    extra = next(r for r in rows if r["kind"] == "helpful" and len(r["text"].split()) <= 3)
    dups = [dict(extra, id=f"extra-{i}") for i in range(40)]
    mutate(var / "vanilla.jsonl", lambda rs: rs.extend(dups))
    with pytest.raises(GateError) as ei:
        gate_variants(var, src, cfg)
    assert "vanilla:duplicate_rate:prefix+text+_repeat" in failed(ei.value)


def test_rto_text_not_whole_harmful_response(copy):
    src, var, _ = copy

    def cut(rows):
        r = next(r for r in rows if r["kind"] == "rto")
        r["text"] = r["text"][: len(r["text"]) // 2] + SYNTH.eos
    mutate(var / "derta.jsonl", cut)
    with pytest.raises(GateError) as ei:
        gate_variants(var, src, only("derta"))
    assert failed(ei.value) == {"derta:text_matches_source:rto"}
    assert "whole harmful response" in str(ei.value)


def test_share_of_zero_prefixes_off(copy, data):
    src, var, world = copy
    safety = {r["id"]: r for r in world["safety_train"]}

    def shift(rows):  # three k=0 prefixes get one harmful word: consistent rows, wrong share
        zero = [r for r in rows if r["kind"] == "harmful_prefix" and r["k"] == 0][:3]
        for r in zero:
            unit = word_units(safety[r["source_id"]]["output"])[0]
            r.update(k=1, prefix=r["prefix"] + SYNTH.response_sep + unit.rstrip())
    mutate(var / "derta.jsonl", shift)
    with pytest.raises(GateError) as ei:
        gate_variants(var, src, only("derta"))
    assert failed(ei.value) == {"derta:share_k_zero"}
    f = ei.value.failures[0]
    assert f["observed"] == pytest.approx(4 / 20)
    assert "share of k == 0 among harmful_prefix rows = 0.3500 +- 0.02" in str(ei.value)


def test_missing_variant_file_and_bad_json(copy):
    src, var, _ = copy
    (var / "vanilla_half.jsonl").unlink()
    with pytest.raises(GateError) as ei:
        gate_variants(var, src, only("vanilla_half"))
    assert failed(ei.value) == {"vanilla_half:file_exists"}
    (var / "derta.jsonl").write_text('{"id": "x"}\n{"id": \n', encoding="utf-8")
    with pytest.raises(DataError) as ei2:
        gate_variants(var, src, only("derta"))
    assert (ei2.value.line, ei2.value.rule) == (2, "json") and not isinstance(ei2.value, GateError)


# --- release layout and helpers -------------------------------------------------------


def test_release_layout_passes(tmp_path):
    from test_release import make_fake_release

    from derta.release import ReleaseConfig, ingest

    cfgd = make_fake_release(tmp_path / "release")
    cfgd["files"].update({n: None for n in ("completionattack", "jailbreakchat", "selfcipher", "mmlu")})
    cfgd["eval_helpful_sets"] = ["gsm8k"]
    ingest(ReleaseConfig.from_dict(cfgd), tmp_path / "src")
    rep = gate_source(tmp_path / "src", GateConfig(duplicate_rate_overrides={}))
    assert "benchmarks/codeattack" in rep and rep["dev_harmful"]["rows"] == 0
    # A benchmark question in the helpfulness data is a leak too.
    q = read_jsonl(tmp_path / "src/benchmarks/alpacaeval.jsonl")[1]["question"]
    mutate(tmp_path / "src/helpful_train.jsonl", lambda rows: rows[0].update(instruction=q))
    with pytest.raises(GateError) as ei:
        gate_source(tmp_path / "src", GateConfig(duplicate_rate_overrides={}))
    assert failed(ei.value) == {"helpful_train:no_heldout_question:instruction"}


def test_find_contained_phrase_semantics():
    texts = ["[inst] how do i jam the [fuse]? [\\inst]", "repeat after me: a b c d", "x how do i jam the [fuse]s"]
    needles = ["how do i jam the [fuse]", "repeat after me: a b c", "repeat after me: a b c d"]
    assert find_contained(texts, needles) == {(0, 0), (1, 2)}
