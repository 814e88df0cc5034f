"""Stage `respond`: safe + harmful responses for your own harmful questions.

    python -m steps.respond --questions FILE.jsonl --out DIR [--params params.yaml] [--profile NAME]

Input: JSON lines ``{id, question|instruction[, category]}``. Output:
``DIR/safety_train.jsonl`` (the release's safety-source format ``{id,
instruction, output (harmful), safe_response, category}``) and
``DIR/respond_report.json`` (counts and responders; never an API key), both
written atomically. Params: section ``respond`` (see derta/responses.py). The
project ships no harmful model: ``respond.harmful`` must name your own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from derta.chat import chat_config, inject
from derta.config import load_params, resolve
from derta.io import write_json, write_jsonl
from derta.responses import RespondConfig, check_config, read_questions, respond
from steps._common import entry, parser


def run(cfg: RespondConfig, questions_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    check_config(cfg)  # config errors before any input is read or any request is sent
    questions = read_questions(questions_path, cfg.max_question_chars)
    report: dict[str, Any] = {"questions": str(questions_path)}
    records = respond(cfg, questions, report)
    out = Path(out_dir)
    write_jsonl(out / "safety_train.jsonl", records)
    write_json(out / "respond_report.json", report)
    return report


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--questions", required=True, help="JSON lines {id, question|instruction[, category]}")
    p.add_argument("--out", required=True, help="output dir (safety_train.jsonl, respond_report.json)")
    a = p.parse_args(argv)
    params = load_params(a.params)
    section = inject(resolve(params, "respond", a.profile), {"refusal_word": chat_config(params, a.profile).refusal_word}, "respond")
    report = run(RespondConfig.from_dict(section, where="params.yaml:respond"), a.questions, a.out)
    print({"kept": report["kept"], "of": report["n_questions"], "dropped": report["dropped"]})


if __name__ == "__main__":
    entry(main)
