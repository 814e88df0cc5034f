"""``derta judge`` and ``derta judge-devset``: the judge step behind the CLI.

``derta judge --attack NAME --responses FILE [--judge NAME] [--judge-config FILE] [--out VERDICTS.jsonl]``
reads model responses in any of the release's output shapes and prints one
JSON line ``{"asr": pct, "n": count, "judge": name, "attack": name}``.

Accepted input (JSON lines, or one JSON list holding such items):

(a) a plain JSON string with prompt and response; the response starts after
    the last chat marker (``[/INST]``, ``[\\INST]``, ``ASSISTANT:``,
    ``### Response:``, LLaMA-3/ChatML assistant headers). Without a marker the
    whole string is the response and the question is empty;
(b) ``{"question", "response"}``; (c) ``{"instruction", "response"}``
    (``prompt`` is accepted for the question too). Optional keys: ``id``,
    ``prefill``, ``attack``.

Bad input raises :class:`DataError` (file, line, rule); the CLI prints it on
stderr and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from derta.errors import ConfigError, DataError
from derta.io import MAX_FIELD_CHARS, write_jsonl
from derta.judges.base import Judge, JudgeInput, Verdict, get_judge, list_judges

# Where a response starts inside a "prompt + response" string; the last hit wins.
RESPONSE_MARKERS = [
    "[/INST]",
    "[\\INST]",
    "ASSISTANT:",
    "### Response:",
    "<|start_header_id|>assistant<|end_header_id|>",
    "<|im_start|>assistant",
    "\nAssistant:",
]
PROMPT_NOISE = [
    "<|begin_of_text|>", "<|start_header_id|>user<|end_header_id|>", "<|start_header_id|>system<|end_header_id|>",
    "<|eot_id|>", "<|im_start|>user", "<|im_start|>system", "<|im_end|>", "<s>", "</s>", "[INST]", "USER:",
    "### Instruction:", "<<SYS>>", "<</SYS>>",
]
RESPONSE_NOISE = ["</s>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>"]
QUESTION_KEYS = ("question", "instruction", "prompt")


def split_prompt_response(text: str) -> tuple[str, str]:
    """Split a release output string into (question, response) at the last chat marker."""
    best, cut = -1, -1
    for m in RESPONSE_MARKERS:
        i = text.rfind(m)
        if i >= 0 and i + len(m) > cut:
            best, cut = i, i + len(m)
    if best < 0:
        return "", _clean(text, RESPONSE_NOISE)
    return _clean(text[:best], PROMPT_NOISE), _clean(text[cut:], RESPONSE_NOISE)


def _clean(s: str, noise: list[str]) -> str:
    for n in noise:
        s = s.replace(n, " " if n.startswith("<") or n.startswith("[") else "")
    return s.strip()


def _records(path: Path, text: str) -> list[tuple[int, Any]]:
    """(line, JSON value) for every item: JSON lines, or one whole-file JSON list."""
    if text.lstrip().startswith("["):
        dec = json.JSONDecoder()
        pos = len(text) - len(text.lstrip()) + 1
        out: list[tuple[int, Any]] = []
        line = lambda p: text.count("\n", 0, p) + 1  # noqa: E731
        while True:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(text):
                raise DataError(str(path), line(pos), "json", "unterminated JSON list")
            if text[pos] == "]":
                if text[pos + 1 :].strip():
                    raise DataError(str(path), line(pos + 1), "json", "extra data after the JSON list")
                return out
            try:
                val, end = dec.raw_decode(text, pos)
            except json.JSONDecodeError as err:
                raise DataError(str(path), line(err.pos), "json", err.msg) from None
            out.append((line(pos), val))
            pos = end
    out = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            out.append((lineno, json.loads(raw)))
        except json.JSONDecodeError as err:
            raise DataError(str(path), lineno, "json", err.msg) from None
    return out


def read_responses(path: str | Path, attack: str = "") -> list[JudgeInput]:
    """Read model outputs in any release shape into judge inputs (ids: record ``id`` or ``<attack>-<index>``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), 0, "file_exists", "no such file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(str(path), raw[: err.start].count(b"\n") + 1, "utf8", f"invalid UTF-8 at byte {err.start}") from None
    items: list[JudgeInput] = []
    seen: set[str] = set()
    for idx, (lineno, rec) in enumerate(_records(path, text)):
        where = (str(path), lineno)
        prefill, rec_attack, rid = "", attack, None
        if isinstance(rec, str):
            question, response = split_prompt_response(rec)
        elif isinstance(rec, dict):
            if "response" not in rec:
                raise DataError(*where, "required_field", "missing field 'response'")
            qkey = next((k for k in QUESTION_KEYS if k in rec), None)
            if qkey is None:
                raise DataError(*where, "required_field", "missing field 'question' (or 'instruction'/'prompt')")
            question, response = rec[qkey], rec["response"]
            for key, val in ((qkey, question), ("response", response)):
                if not isinstance(val, str):
                    raise DataError(*where, "type", f"field {key!r} must be str, got {type(val).__name__}")
            for key in ("prefill", "attack"):
                if key in rec and not isinstance(rec[key], str):
                    raise DataError(*where, "type", f"field {key!r} must be str, got {type(rec[key]).__name__}")
            prefill = rec.get("prefill", "")
            rec_attack = rec.get("attack") or attack
            if "id" in rec:
                if not isinstance(rec["id"], (str, int)) or isinstance(rec["id"], bool):
                    raise DataError(*where, "type", f"field 'id' must be str or int, got {type(rec['id']).__name__}")
                rid = str(rec["id"])
        else:
            raise DataError(*where, "shape", f"expected a JSON string or object, got {type(rec).__name__}")
        if max(len(question), len(response)) > MAX_FIELD_CHARS:
            raise DataError(*where, "max_length", f"a field is longer than {MAX_FIELD_CHARS} chars")
        rid = rid if rid is not None else f"{attack or 'response'}-{idx:05d}"
        if rid in seen:
            raise DataError(*where, "unique_id", f"duplicate id {rid!r}")
        seen.add(rid)
        items.append(JudgeInput(rid, question, response, rec_attack, prefill))
    if not items:
        raise DataError(str(path), 0, "non_empty", "no responses in file")
    return items


def load_judge_config(path: str | Path | None) -> dict[str, Any]:
    """A judge config file (JSON or YAML mapping); ``None`` -> defaults."""
    if not path:
        return {}
    import yaml

    p = Path(path)
    if not p.is_file():
        raise DataError(str(p), 0, "file_exists", "no such judge config file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", -1) + 1
        raise DataError(str(p), line, "yaml", str(err).splitlines()[0]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(str(p), 0, "mapping", f"judge config must be a mapping, got {type(data).__name__}")
    return data


def asr(verdicts: list[Verdict]) -> float:
    """Attack success rate in percent (share judged unsafe), 2 decimals."""
    return round(100.0 * sum(v.unsafe for v in verdicts) / len(verdicts), 2) if verdicts else 0.0


def judge_file(judge: Judge, responses: str | Path, attack: str, out: str | Path | None = None) -> dict[str, Any]:
    """The judge step: read, judge, optionally write verdicts; returns the summary line."""
    items = read_responses(responses, attack)
    verdicts = judge.judge(items)
    if out:
        write_jsonl(out, ({**v.to_dict(), "judge": judge.name, "attack": it.attack or attack} for it, v in zip(items, verdicts)))
    return {"asr": asr(verdicts), "n": len(verdicts), "judge": judge.name, "attack": attack}


def add_judge_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("judge", help="judge model responses and print the attack success rate")
    p.add_argument("--attack", required=True, help="attack name (recorded in the output)")
    p.add_argument("--responses", required=True, help="responses file (JSON lines or a JSON list, release shapes)")
    p.add_argument("--judge", default="guideline", help=f"judge name, one of {list_judges()}")
    p.add_argument("--judge-config", default=None, help="judge config file (JSON or YAML mapping)")
    p.add_argument("--out", default=None, help="write one verdict per response here (JSON lines)")
    p.set_defaults(func=run_judge_cli)
    return p


def _fail(err: Exception, code: int) -> int:
    print(f"error: {err}", file=sys.stderr)
    return code


def run_judge_cli(args: argparse.Namespace) -> int:
    from derta.llm import LLMError

    try:
        judge = get_judge(args.judge, load_judge_config(args.judge_config))
        summary = judge_file(judge, args.responses, args.attack, args.out)
    except (DataError, ConfigError) as err:
        return _fail(err, 2)
    except LLMError as err:
        return _fail(err, 1)
    print(json.dumps(summary, sort_keys=True))
    return 0


def add_devset_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("judge-devset", help="agreement of a judge with the Appendix C development set")
    p.add_argument("--judge", default="guideline", help=f"judge name, one of {list_judges()}")
    p.add_argument("--judge-config", default=None, help="judge config file (JSON or YAML mapping)")
    p.add_argument("--seed", type=int, default=0, help="dev-set seed")
    p.add_argument("--n-per-kind", type=int, default=8, help="cases per kind")
    p.add_argument("--cases-out", default=None, help="also write the dev-set cases here (JSON lines)")
    p.set_defaults(func=run_devset_cli)
    return p


def run_devset_cli(args: argparse.Namespace) -> int:
    from derta.judges.devset import agreement, build_devset
    from derta.llm import LLMError

    try:
        judge = get_judge(args.judge, load_judge_config(args.judge_config))
        cases = build_devset(args.seed, args.n_per_kind)
        if args.cases_out:
            write_jsonl(args.cases_out, cases)
        result = {"judge": judge.name, "seed": args.seed, **agreement(judge, cases)}
    except (DataError, ConfigError) as err:
        return _fail(err, 2)
    except LLMError as err:
        return _fail(err, 1)
    print(json.dumps(result, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m derta.judges.cli judge ...``) until the lead wires ``derta``."""
    parser = argparse.ArgumentParser(prog="derta")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_judge_parser(sub)
    add_devset_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
