"""steps.self_answer: the base model's own answers as helpful data (the release fallback), and the gates around it."""

import json

import pytest

from derta.chat import chat_config
from derta.config import load_params
from steps import self_answer
from steps.self_answer import SelfAnswerConfig, finish
from tests.pipeline_helpers import REPO
from tests.test_respond import tiny_model_dir  # noqa: F401  (fixture)


@pytest.mark.parametrize("answer, expected", [
    ("Bake it at 200 C. Then let it cool.</s>", ("Bake it at 200 C. Then let it cool.", "ended")),
    ("Mix flour and water. Knead for ten", ("Mix flour and water.", "cut")),
    ("Mix flour and water", (None, "no_sentence")),
    ("Sorry, I cannot help with that.</s>", (None, "refused")),
    ("</s>", (None, "no_sentence")),
])
def test_finish_keeps_whole_sentences(answer, expected):
    assert finish(answer, "</s>") == expected


def test_stage_answers_in_the_chat_format(tiny_model_dir, tmp_path):  # noqa: F811
    from derta.generate import GenerationConfig

    src = tmp_path / "src"
    src.mkdir()
    (src / "helpful_prompts.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "instruction": f"How do I do thing {i}?"}) + "\n"
                                                       for i in range(5)))
    base = tmp_path / "base"
    base.mkdir()
    (base / "source.json").write_text(json.dumps({"path": str(tiny_model_dir / "model")}))  # a real base model's pretrain output
    chat = chat_config(load_params(REPO / "params.yaml"))
    report = self_answer.run(SelfAnswerConfig(n=4, max_new_tokens=12, batch_size=2), GenerationConfig(), src, base,
                             tmp_path / "out", chat)
    assert report["asked"] == 4 and report["kept"] + report["refused"] + report["no_sentence"] == 4
    assert report["ended"] + report["cut"] == report["kept"]
    rows = [json.loads(x) for x in (tmp_path / "out" / "helpful.jsonl").read_text().splitlines()]
    assert len(rows) == report["kept"] and all(r["id"].startswith("self-p") and r["output"] for r in rows)
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report


def test_source_gate_accepts_the_empty_helpful_file_only_for_the_fallback(tmp_path):
    from derta.release import HELPFUL_PARTS, ReleaseConfig, ingest
    from derta.validate import GateError, gate_source
    from tests.test_release_fallback import _need_copy

    files = {"safety": None, **{p: None for p in HELPFUL_PARTS}}
    src = tmp_path / "src"  # the real release's files, both fallbacks (as profile smollm2-135m)
    ingest(ReleaseConfig.from_dict({"local_dir": str(_need_copy()), "files": files, "safety_fallback": "malicious",
                                    "helpful_fallback": "self"}), src)
    assert (src / "helpful_prompts.jsonl").read_text().count("\n") == 300 and not (src / "benchmarks" / "alpacaeval.jsonl").exists()
    report = gate_source(src)
    assert all(r["success"] for r in report.values())
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["helpful_source"] = "release"
    (src / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GateError, match="min_rows"):
        gate_source(src)
