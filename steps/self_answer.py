"""Stage `self_answer`: helpful pairs answered by the untouched base model itself.

The fallback for the helpfulness data when the release's Evol-Instruct parts are
absent (``data.release.helpful_fallback: self``; on this machine and in CI they
are): the source's benign instructions (``helpful_prompts.jsonl``) answered
greedily by the base model in the profile's chat format (params.yaml ``chat``).
Mixed into every variant, they hold the tuned models' answers on benign prompts
to the base model's own (self-distillation), so safety tuning cannot pass by
refusing everything. An answer that has not ended within ``max_new_tokens`` is
cut after its last complete sentence (training appends EOS there, so the model
never learns to stop mid-sentence); one with no complete sentence, or that opens
with a refusal, is dropped. Output: ``helpful.jsonl`` ``{id, instruction,
output}`` (ids ``self-<instruction id>``) and ``report.json`` with the counts
(ended, cut, dropped) and the time taken.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from derta.attacks.base import refuses_early
from derta.chat import ChatConfig, ChatFormat, chat_config
from derta.config import StepConfig, load_params, step_config
from derta.generate import GenerationConfig, HFTarget
from derta.io import atomic_path, read_jsonl, write_json, write_jsonl
from derta.modeling import load_model, model_weights, set_threads
from steps._common import entry, parser


class SelfAnswerConfig(StepConfig):
    """How many benign instructions the base model answers, and how long an answer may be."""

    n: int = Field(160, ge=0, description="Instructions to answer, in file order (0 = all).")
    max_new_tokens: int = Field(128, gt=0, description="Longest answer; one that has not ended by then is cut after its last sentence.")
    batch_size: int = Field(16, gt=0, description="Prompts per generation batch.")


SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def finish(answer: str, eos: str) -> tuple[str | None, str]:
    """(training answer or None, what happened: ended | cut | refused | no_sentence)."""
    if eos in answer:
        text, how = answer.split(eos, 1)[0].strip(), "ended"
    else:
        ends = [m.end() for m in SENTENCE_END.finditer(answer)]
        text, how = (answer[: ends[-1]].strip(), "cut") if ends else ("", "no_sentence")
    if not text:
        return None, "no_sentence"
    if refuses_early(text):
        return None, "refused"
    return text, how


def run(cfg: SelfAnswerConfig, gen: GenerationConfig, src_dir: str | Path, base_dir: str | Path, out_dir: str | Path,
        chat: ChatConfig | None = None) -> dict[str, Any]:
    """``chat`` (params.yaml ``chat``; default ChatConfig()) is resolved against the base model's own tokenizer."""
    set_threads()
    rows = read_jsonl(Path(src_dir) / "helpful_prompts.jsonl", {"id": str, "instruction": str}, non_empty=["instruction"], unique_key="id")
    rows = rows[: cfg.n] if cfg.n else rows
    model, tok = load_model(model_weights(base_dir))
    fmt = ChatFormat.resolve(chat or ChatConfig(), tok)
    target = HFTarget(model, tok, gen.model_copy(update={**fmt.generation_fields(), "batch_size": cfg.batch_size}))
    t0 = time.perf_counter()
    answers = target.generate_texts([fmt.prompt(r["instruction"]) for r in rows], cfg.max_new_tokens, skip_special_tokens=False)
    done = [finish(a, fmt.eos) for a in answers]
    out = [{"id": f"self-{r['id']}", "instruction": r["instruction"], "output": text}
           for r, (text, _) in zip(rows, done) if text is not None]
    report = {"asked": len(rows), "kept": len(out), **{k: sum(how == k for _, how in done) for k in ("ended", "cut", "refused", "no_sentence")},
              "max_new_tokens": cfg.max_new_tokens}
    # The run time is printed, not written: a DVC output that differs run to run would make every rerun look changed.
    print(f"self_answer: {len(rows)} answers in {time.perf_counter() - t0:.1f} s")
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        write_jsonl(tmp / "helpful.jsonl", out)
        write_json(tmp / "report.json", report)
    return report


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--source", required=True, help="source dir (helpful_prompts.jsonl)")
    p.add_argument("--base", required=True, help="base model dir (pretrain output)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    params = load_params(a.params)
    chat = chat_config(params, a.profile)  # a bad chat section fails before the model loads
    report = run(step_config(SelfAnswerConfig, params, "self_answer", a.profile), GenerationConfig(), a.source, a.base, a.out, chat)
    print(report)


if __name__ == "__main__":
    entry(main)
