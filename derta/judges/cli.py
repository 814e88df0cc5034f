"""``derta judge`` and ``derta judge-devset``: the judge step behind the CLI.

``derta judge --attack NAME --responses FILE [--judge NAME] [--judge-config FILE] [--out VERDICTS.jsonl]
[--prompts FILE] [--one-per-question]`` reads model responses in any of the release's output shapes
(:mod:`derta.judges.inputs`, PAIR run summaries included) and prints one JSON line
``{"asr": pct, "n": count, "judge": name, "attack": name}`` plus, where non-zero,
``no_jailbreak`` (PAIR questions without a jailbreak: counted, safe), ``skipped``
(entries neither judged nor counted, by reason) and ``errors`` (undecided verdicts,
left out of ``n``).

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
from derta.io import write_jsonl
from derta.judges.base import Judge, Verdict, get_judge, list_judges, with_slots

# Reading lives in derta.judges.inputs; re-exported here for callers of the old names.
from derta.judges.inputs import Responses, read_file, read_prompts, read_responses, split_prompt_response  # noqa: E402,F401


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


def asr(verdicts: list[Verdict], extra_safe: int = 0) -> float:
    """Attack success rate in percent, 2 decimals: unsafe over decided verdicts plus ``extra_safe``
    (questions the attack failed on). Undecided verdicts (``error`` set) are left out."""
    decided = [v for v in verdicts if v.error is None]
    n = len(decided) + extra_safe
    return round(100.0 * sum(v.unsafe for v in decided) / n, 2) if n else 0.0


def judge_file(judge: Judge, responses: str | Path, attack: str, out: str | Path | None = None,
               prompts: tuple[str, ...] = (), one_per_question: bool = False) -> dict[str, Any]:
    """The judge step: read, judge, optionally write verdicts; returns the summary line.

    ``n`` counts decided verdicts plus entries where the attack found no
    jailbreak (PAIR summaries, safe); ``skipped`` names entries neither judged
    nor counted and why; ``errors`` counts verdicts the judge could not decide.
    """
    res = read_file(responses, attack, prompts, one_per_question)
    verdicts = judge.judge(res.items)
    if out:
        write_jsonl(out, ({**v.to_dict(), "judge": judge.name, "attack": it.attack or attack} for it, v in zip(res.items, verdicts)))
    errors = sum(v.error is not None for v in verdicts)
    summary = {"asr": asr(verdicts, res.no_response), "n": len(verdicts) - errors + res.no_response, "judge": judge.name, "attack": attack}
    if res.no_response:
        summary["no_jailbreak"] = res.no_response
    if res.skipped:
        summary["skipped"] = res.skipped
    if errors:
        summary["errors"] = errors
    return summary


def add_judge_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("judge", help="judge model responses and print the attack success rate")
    p.add_argument("--attack", required=True, help="attack name (recorded in the output)")
    p.add_argument("--responses", required=True, help="responses file (JSON lines or a JSON list, release shapes)")
    p.add_argument("--judge", default="guideline", help=f"judge name, one of {list_judges()}")
    p.add_argument("--judge-config", default=None, help="judge config file (JSON or YAML mapping)")
    p.add_argument("--out", default=None, help="write one verdict per response here (JSON lines)")
    p.add_argument("--prompts", default=None,
                   help="the attack's rendered raw prompts (e.g. the release's safety_completionattack.json): "
                        "a response string starting with one is split there, the prompt being the attacker's words")
    p.add_argument("--one-per-question", action="store_true",
                   help="judge a repeated question once, at its first row (the release's AutoDAN files: 52 rows, 50 questions)")
    p.add_argument("--source", default=None,
                   help="the data source the questions come from (a mini-world's data/source): its slot vocabulary "
                        "goes to a judge that reads one, as in the evaluate stage (docs/judges.md)")
    p.set_defaults(func=run_judge_cli)
    return p


def _fail(err: Exception, code: int) -> int:
    print(f"error: {err}", file=sys.stderr)
    return code


def run_judge_cli(args: argparse.Namespace) -> int:
    from derta.llm import LLMError

    try:
        from derta.miniworld import source_slots

        slots = source_slots(args.source) if args.source else {}
        judge = get_judge(args.judge, with_slots(args.judge, load_judge_config(args.judge_config), slots))
        prompts = read_prompts(args.prompts) if args.prompts else ()
        summary = judge_file(judge, args.responses, args.attack, args.out, prompts, args.one_per_question)
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
