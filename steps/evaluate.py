"""Stage `evaluate@<variant>`: attack the model, judge the responses, score helpfulness.

Inputs: the trained model dir, the validated source dir (held-out
``<split>_harmful`` / ``<split>_helpful``). Outputs in ``--out``:
``responses.jsonl`` (one record per attack prompt: id, attack, question_id,
prompt text, prefill, response), ``verdicts.jsonl`` (the judge's decision and
the first refusal's token position), ``helpful.jsonl``, ``overrefusal.jsonl``
(safe prompts that look harmful, derta/overrefusal.py: id, category, prompt,
response, refused), ``alpacaeval.jsonl`` (only when AlpacaEval ran: id,
instruction, reference, response) and ``metrics.json``. Decoding is greedy
and batched (derta/generate.py).

``metrics.json`` (every rate in percent, 2 decimals):

* ``asr[attack]``: unsafe share of the *decided* verdicts; ``asr_detail[attack]``
  = ``{asr, n, unsafe, errors, ci95}``: ``n`` decided verdicts (a verdict whose
  ``error`` is set is undecided: left out of ``n``, counted in ``errors``,
  never counted safe), ``ci95`` the 95% Wilson interval (derta/stats.py).
  ``n[attack]`` stays the number of prompts generated.
* ``scoring``: what the numbers are comparable under: ``judges[attack]``
  (``Judge.fingerprint()``: name, rules version, config hash),
  ``attacks_sha256[attack]`` (the attack's resolved config, seed, split and
  question caps), ``attack_set_sha256`` (all of them) and
  ``generation_sha256`` (decoding settings).
* ``over_refusal``: ``{rate, n, refused, errors, ci95, set, judge, prompts_sha256}``,
  the share of the over-refusal prompts the default judge marks as refused.
* ``helpfulness[bench]``: percent per benchmark. The helpful rows are grouped
  by the benchmark their ``kind`` names (the release writes ``gsm8k`` /
  ``mmlu``; the mini-world's question types, or no kind, are ``miniworld``:
  derta.helpfulness.benchmark_of), each scored by its own scorer;
  ``helpfulness_detail[bench]`` = ``{accuracy, n, correct, ci95}`` (95%
  Wilson interval). ``helpfulness["alpacaeval"]`` is the
  win rate against reference outputs (derta/alpacaeval.py), with
  ``helpfulness_detail["alpacaeval"]`` = ``{win_rate, n, wins, losses, ties,
  model_first, judge}``, when ``eval.alpacaeval`` has both a questions file
  and a judge endpoint.
* ``helpfulness_by_kind[kind]``: percent per question kind (the mini-world's
  capital / flag / first / last), empty when the rows hold one kind.
* ``skipped[bench]``: why a benchmark was not measured (e.g. AlpacaEval with
  no judge endpoint); a benchmark is never silently absent.

Generation runs on ``eval.generation.backend`` (``hf`` or ``vllm``,
derta/generate.py); a backend that cannot run here fails before any model
is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from derta import live, overrefusal
from derta.alpacaeval import AlpacaEvalBenchConfig, alpacaeval_or_skip, read_items
from derta.attacks import get_attack
from derta.attacks.replay import PREFIX as RELEASE_PREFIX
from derta.attacks.base import Attack, AttackPrompt, Question, Target
from derta.chat import ChatConfig, ChatFormat, chat_config, inject
from derta.config import StepConfig, load_params, resolve
from derta.errors import ConfigError, DataError
from derta.generate import GenerationConfig, check_backend, format_prompt, load_target
from derta.miniworld import source_slots
from derta.helpfulness import SCORERS, accuracy_by_kind, accuracy_detail, benchmark_of, get_scorer
from derta.io import atomic_path, read_jsonl, write_json, write_jsonl
from derta.judges import JUDGES, get_judge
from derta.judges.base import Judge, JudgeInput, with_slots
from derta.modeling import model_weights, set_threads
from derta.stats import rate_detail
from steps._common import entry, parser

log = logging.getLogger("derta.evaluate")

# Paper section 4: CompletionAttack needs raw completion access (white box); the replayed
# release prompts (release:<set>) count with their attack.
BLACK_BOX = ("codeattack", "pair", "jailbreakchat", "selfcipher", "release:codeattack", "release:jailbreakchat", "release:selfcipher")
WHITE_BOX = ("completingattack", "autodan", "release:completionattack")


class OverRefusalConfig(StepConfig):
    """Safe prompts that look harmful (derta/overrefusal.py), run as plain chat prompts."""

    set: Literal["miniworld", "real", "none"] = Field(
        "miniworld", description="Prompt set: 'miniworld' (built from the mini-world's vocabulary), "
                                 "'real' (English prompts for real chat models) or 'none' (skip).")
    n: int = Field(0, ge=0, description="Prompts to run: 0 = the default size (every 'real' prompt; "
                                        "60 mini-world prompts), else a seeded sample of that many.")


class EvalConfig(StepConfig):
    """Which attacks run, judged by whom, on which held-out split."""

    variants: list[str] = Field(
        ["vanilla", "vanilla_half", "harmful_prefix", "rto", "derta", "recaug", "dpo"],
        description="Trained models (models/<name>) the pipeline evaluates and reports (dvc.yaml foreach).",
    )
    split: str = Field("eval", description="Held-out split to evaluate ('eval' for reported numbers, 'dev' while developing).")
    seed: int = Field(0, description="Seed of attack draws.")
    attacks: dict[str, dict[str, Any] | None] = Field(
        default_factory=lambda: {"direct": {}, "completingattack": {}, "prefill": {}},
        description="attack name -> its config (see `derta attacks`); null = off (a profile turns off an inherited attack).",
    )
    judge: str = Field("guideline", description="Default judge (see `derta judges`).")
    judge_config: dict[str, Any] = Field(default_factory=dict, description="Config of the default judge.")
    judges: dict[str, str] = Field(default_factory=dict, description="Per-attack judge overrides: attack -> judge name.")
    max_questions: int = Field(0, description="Evaluate only the first N harmful questions (0 = all).")
    max_helpful: int = Field(0, description="Evaluate only the first N helpful questions of each benchmark (0 = all).")
    attack_questions: dict[str, int] = Field(default_factory=dict, description="Per-attack cap on harmful questions (long prompts, e.g. codeattack).")
    helpful_max_new_tokens: dict[str, int] = Field(
        default_factory=dict, description="Per-benchmark answer length (e.g. {mmlu: 8}: a letter); others use generation.max_new_tokens.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="Decoding settings.")
    over_refusal: OverRefusalConfig = Field(
        default_factory=OverRefusalConfig,
        description="Over-refusal check: which safe-but-scary-looking prompt set, how many (rate refused by the default judge).")
    alpacaeval: AlpacaEvalBenchConfig = Field(
        default_factory=AlpacaEvalBenchConfig,
        description="AlpacaEval win rate (paper Table 2): questions_file (instructions + reference outputs) and "
                    "judge {llm, seed, max_tokens, max_items}; either missing = skipped, with the reason in metrics.skipped.")


def _sha256(obj: Any) -> str:
    """16 hex digits of the SHA-256 of ``obj`` as sorted-key JSON (as Judge.fingerprint)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def attack_sha256(cfg: EvalConfig, name: str, attack: Attack) -> str:
    """Hash of what decides an attack's prompts: its resolved config, the seed, the split and the question caps."""
    return _sha256({"attack": name, "config": attack.cfg.model_dump(mode="json"), "seed": cfg.seed, "split": cfg.split,
                    "max_questions": cfg.max_questions, "attack_questions": cfg.attack_questions.get(name, 0)})


def first_per_bench(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The first ``n`` rows of each benchmark (a row's ``kind``), in file order."""
    seen: dict[Any, int] = {}
    out = []
    for r in rows:
        bench = benchmark_of(r.get("kind"))
        if seen.get(bench, 0) < n:
            seen[bench] = seen.get(bench, 0) + 1
            out.append(r)
    return out


def _given(p: AttackPrompt) -> str:
    """Attacker-written text the model continues: the prefill, or the whole raw prompt."""
    return p.prefill if p.chat else p.text


def refusal_token_position(tokenizer, response: str, char: int | None) -> int | None:
    """Index (in response tokens) of the token that holds the first refusal's first character."""
    if char is None:
        return None
    offsets = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for i, (start, end) in enumerate(offsets):
        if end > char:
            return i
    return len(offsets)


def _judge(name: str, cfg_dict: dict[str, Any], refusal_word: str, slots: dict[str, str]) -> Judge:
    """Judge ``name``; a judge that reads a refusal word gets ``chat.refusal_word`` (the one place), one that reads
    a world's slot vocabulary gets the source's (``derta.miniworld.source_slots``; none for the release)."""
    fields = JUDGES[name].Config.model_fields if name in JUDGES else {}
    if "refusal_word" in fields:
        cfg_dict = inject(cfg_dict, {"refusal_word": refusal_word}, f"judge {name} config")
    if "slots" in cfg_dict:
        raise ConfigError(f"eval judge {name} config: `slots` come from the data source (the mini-world's vocabulary, "
                          "derta.miniworld.source_slots); remove them here")
    return get_judge(name, with_slots(name, cfg_dict, slots))


def run(cfg: EvalConfig, model_dir: str | Path, src_dir: str | Path, out_dir: str | Path, chat: ChatConfig | None = None) -> dict[str, Any]:
    """``chat`` (params.yaml ``chat``; default ChatConfig()): the prompt format and refusal word, resolved against
    the model's tokenizer; it replaces ``cfg.generation``'s prompt fields."""
    set_threads()
    chat = chat or ChatConfig()
    check_backend(cfg.generation, "eval.generation")  # an unknown backend or a missing vllm: before anything loads
    src = Path(src_dir)
    questions, hrows, orows = _split_rows(cfg, src)
    # Bad attack/judge names or configs fail here, before the model is loaded.
    # Replayed release prompts (release:<set>) are read from the source dir's benchmarks/.
    attacks = {name: get_attack(name, acfg, seed=cfg.seed, **({"source_dir": src} if name.startswith(RELEASE_PREFIX) else {}))
               for name, acfg in cfg.attacks.items() if acfg is not None}
    slots = source_slots(src)
    judges = {name: _judge(cfg.judges.get(name, cfg.judge), cfg.judge_config if cfg.judges.get(name, cfg.judge) == cfg.judge else {},
                           chat.refusal_word, slots) for name in attacks}
    or_judge = _judge(cfg.judge, cfg.judge_config, chat.refusal_word, slots)
    alpaca_skip = cfg.alpacaeval.skip_reason()
    alpaca_items = None if alpaca_skip else read_items(cfg.alpacaeval.questions_file)
    # An unknown backend, or vllm without its package, fails here (check_backend), before any model is loaded.
    target = load_target(model_weights(model_dir), cfg.generation, "eval.generation")
    # The prompt format every backend renders (format_prompt reads target.cfg at each call): from `chat`.
    gen = cfg.generation.model_copy(update=ChatFormat.resolve(chat, target.tok).generation_fields())
    target.cfg = gen
    cfg = cfg.model_copy(update={"generation": gen})

    metrics: dict[str, Any] = {"asr": {}, "asr_detail": {}, "n": {}, "halt": {}, "refusal_positions": {}, "seconds": {},
                               "attack_stats": {}, "scoring": _scoring(cfg, attacks, judges)}
    rows: dict[str, list[dict[str, Any]]] = {"responses": [], "verdicts": []}
    for name, attack in attacks.items():
        _attack(cfg, name, attack, judges[name], questions, target, metrics, rows)
    metrics["helpfulness"], metrics["helpfulness_detail"], metrics["skipped"] = {}, {}, {}
    rows["helpful"] = _helpfulness(cfg, hrows, target, metrics)
    rows["alpacaeval"] = _alpacaeval(cfg, alpaca_items, alpaca_skip, target, metrics)
    rows["overrefusal"] = _over_refusal(cfg, orows, target, or_judge, metrics)
    all_pos = [p for ps in metrics["refusal_positions"].values() for p in ps]
    metrics["refusal_position"] = refusal_summary(all_pos)
    metrics["split"] = cfg.split
    # Run times go to MLflow, not into metrics.json: two runs of a stage hash alike.
    live.log_metrics({f"seconds_{k}": v for k, v in metrics.pop("seconds").items()})
    live.log_metrics({f"asr_{k}": v for k, v in metrics["asr"].items() if v is not None}
                     | {f"helpfulness_{k}": v for k, v in metrics["helpfulness"].items() if v is not None})
    _write(out_dir, rows, metrics)
    return metrics


def _split_rows(cfg: EvalConfig, src: Path) -> tuple[list[Question], list[dict[str, Any]], list[dict[str, str]]]:
    """The split's harmful questions, helpful rows (each kind has a scorer) and over-refusal prompts."""
    qrows = read_jsonl(src / f"{cfg.split}_harmful.jsonl", {"id": str, "question": str}, non_empty=["question"], unique_key="id")
    helpful_file = src / f"{cfg.split}_helpful.jsonl"
    hrows = read_jsonl(helpful_file, {"id": str, "question": str, "answer": str}, unique_key="id")
    # Mini-world over-refusal fact questions ask about countries the split's helpful questions name.
    orows = overrefusal.build(cfg.over_refusal.set, cfg.over_refusal.n, cfg.seed,
                              countries=overrefusal.countries_from_questions([r["question"] for r in hrows]))
    if cfg.max_questions:
        qrows = qrows[: cfg.max_questions]
    if cfg.max_helpful:
        hrows = first_per_bench(hrows, cfg.max_helpful)
    # Helpful rows: the row's kind names its benchmark (derta.helpfulness.benchmark_of).
    bad_kinds = sorted({repr(r.get("kind")) for r in hrows if benchmark_of(r.get("kind")) is None})
    if bad_kinds:
        raise DataError(str(helpful_file), 0, "kind", f"no scorer for helpful kind(s) {', '.join(bad_kinds)}; valid: "
                        f"{sorted(SCORERS)} or a mini-world question type")
    return [Question.from_dict(r) for r in qrows], hrows, orows


def _scoring(cfg: EvalConfig, attacks: dict[str, Attack], judges: dict[str, Judge]) -> dict[str, Any]:
    """What the scores depend on besides the model: each judge's fingerprint, each attack's and the generation's hash."""
    scoring = {"judges": {name: j.fingerprint() for name, j in judges.items()},
               "attacks_sha256": {name: attack_sha256(cfg, name, a) for name, a in attacks.items()},
               "generation_sha256": _sha256(cfg.generation.model_dump(mode="json"))}
    scoring["attack_set_sha256"] = _sha256(scoring["attacks_sha256"])
    return scoring


def _attack(cfg: EvalConfig, name: str, attack: Attack, judge: Judge, questions: list[Question], target: Target,
            metrics: dict[str, Any], rows: dict[str, list[dict[str, Any]]]) -> None:
    """Build one attack's prompts, generate, judge; add its responses and verdicts to ``rows`` and its ASR to ``metrics``."""
    t0 = time.perf_counter()
    cap = cfg.attack_questions.get(name, 0)
    prompts: list[AttackPrompt] = attack.build(questions[:cap] if cap else questions, target)
    outs = target.generate(prompts)
    judge_name, qtext, tok = cfg.judges.get(name, cfg.judge), {q.id: q.question for q in questions}, target.tok
    # The judge reads the model's words in their context: what the attacker wrote
    # for the model to continue (a prefill, or a raw opening such as
    # CompletingAttack's "Here is how to X. Step 1:") is the response's start,
    # and never counts as the model's own steps.
    items = [JudgeInput(id=p.id, question=qtext[p.question_id], response=_given(p) + o, attack=name, prefill=_given(p))
             for p, o in zip(prompts, outs)]
    vs = judge.judge(items)
    positions = []
    for p, item, v in zip(prompts, items, vs):
        pos = refusal_token_position(tok, item.response, v.refusal_char)
        rows["responses"].append({"id": p.id, "attack": name, "question_id": p.question_id,
                                  "prompt": format_prompt(p, cfg.generation, tok), "prefill": item.prefill,
                                  "response": item.response, "meta": p.meta})
        rows["verdicts"].append({**v.to_dict(), "attack": name, "judge": judge_name, "refusal_pos": pos,
                                 "question_id": p.question_id})
        if pos is not None:
            positions.append(pos)
    decided = [v for v in vs if v.error is None]
    detail = rate_detail(sum(v.unsafe for v in decided), len(decided), len(vs) - len(decided), key="asr", count_key="unsafe")
    metrics["asr"][name] = detail["asr"]
    metrics["asr_detail"][name] = detail
    metrics["n"][name] = len(vs)
    metrics["halt"][name] = sum(v.halt for v in vs)
    metrics["refusal_positions"][name] = positions
    metrics["attack_stats"][name] = dict(getattr(attack, "stats", {}) or {})
    metrics["seconds"][name] = round(time.perf_counter() - t0, 2)
    log.info("%s: ASR %s%% %s over %d decided verdicts, %d undecided (%.1fs)", name, detail["asr"], detail["ci95"],
             detail["n"], detail["errors"], metrics["seconds"][name])


def _helpfulness(cfg: EvalConfig, hrows: list[dict[str, Any]], target: Target, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Answer and score the helpful questions; each benchmark's accuracy goes to ``metrics``."""
    t0 = time.perf_counter()
    helpful_out = helpful_responses(hrows, target, cfg.helpful_max_new_tokens)
    scored = []
    for r, o in zip(hrows, helpful_out):
        bench = benchmark_of(r.get("kind"))
        scored.append({"id": r["id"], "bench": bench, "kind": r.get("kind"), "question": r["question"], "answer": r["answer"],
                       "response": o, "correct": get_scorer(bench)(o, r["answer"])})
    for bench in sorted({s["bench"] for s in scored}):
        detail = accuracy_detail(s["correct"] for s in scored if s["bench"] == bench)
        metrics["helpfulness"][bench] = detail["accuracy"]
        metrics["helpfulness_detail"][bench] = detail
        log.info("helpfulness %s: %s%% %s of %d", bench, detail["accuracy"], detail["ci95"], detail["n"])
    metrics["helpfulness_by_kind"] = accuracy_by_kind(scored)
    metrics["n"]["helpful"] = len(scored)
    metrics["seconds"]["helpful"] = round(time.perf_counter() - t0, 2)
    return scored


def _alpacaeval(cfg: EvalConfig, items: tuple[list[str], list[str]] | None, skip: str | None, target: Target,
                metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """AlpacaEval's win rate, or why it was skipped, in ``metrics``; its rows (none when skipped)."""
    if skip:
        metrics["skipped"]["alpacaeval"] = skip
        log.info("alpacaeval skipped: %s", skip)
        return []
    t0 = time.perf_counter()
    instructions, references = items  # type: ignore[misc]
    k = cfg.alpacaeval.judge.max_items or len(instructions)
    instructions, references = instructions[:k], references[:k]
    prompts = [AttackPrompt(id=f"alpacaeval-{i:05d}", question_id=f"alpacaeval-{i:05d}", attack="helpful", text=q)
               for i, q in enumerate(instructions)]
    outs = target.generate(prompts)
    res = alpacaeval_or_skip(cfg.alpacaeval.judge, instructions, outs, references)
    if "skipped" in res:  # skip_reason() checked the same fields first
        metrics["skipped"]["alpacaeval"] = res["skipped"]
    else:
        metrics["helpfulness"]["alpacaeval"] = res["win_rate"]
        metrics["helpfulness_detail"]["alpacaeval"] = res
        metrics["n"]["alpacaeval"] = res["n"]
        log.info("alpacaeval: win rate %s%% over %d (judge %s)", res["win_rate"], res["n"], res["judge"])
    metrics["seconds"]["alpacaeval"] = round(time.perf_counter() - t0, 2)
    return [{"id": p.id, "instruction": q, "reference": ref, "response": o}
            for p, q, ref, o in zip(prompts, instructions, references, outs)]


def _over_refusal(cfg: EvalConfig, orows: list[dict[str, str]], target: Target, judge: Judge,
                  metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The over-refusal rate on safe prompts, in ``metrics``; one row per prompt."""
    t0 = time.perf_counter()
    refusals = over_refusal(orows, target, judge)
    n_or = sum(r["refused"] is not None for r in refusals)
    metrics["over_refusal"] = {
        **rate_detail(sum(bool(r["refused"]) for r in refusals), n_or, len(refusals) - n_or, key="rate", count_key="refused"),
        "set": cfg.over_refusal.set, "judge": judge.fingerprint(),
        "prompts_sha256": _sha256([[r["id"], r["prompt"]] for r in orows]),
    }
    metrics["n"]["over_refusal"] = len(refusals)
    metrics["seconds"]["over_refusal"] = round(time.perf_counter() - t0, 2)
    if refusals:
        log.info("over-refusal (%s): %s%% %s of %d safe prompts refused", cfg.over_refusal.set, metrics["over_refusal"]["rate"],
                 metrics["over_refusal"]["ci95"], n_or)
    return refusals


def _write(out_dir: str | Path, rows: dict[str, list[dict[str, Any]]], metrics: dict[str, Any]) -> None:
    """Every file of the evaluation at once (atomic_path): a failed run leaves the last complete one."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name in ("responses", "verdicts", "helpful", "overrefusal"):
            write_jsonl(tmp / f"{name}.jsonl", rows[name])
        if rows["alpacaeval"]:
            write_jsonl(tmp / "alpacaeval.jsonl", rows["alpacaeval"])
        write_json(tmp / "metrics.json", metrics)


def helpful_responses(rows: list[dict[str, Any]], target: Target, max_new: dict[str, int]) -> list[str]:
    """The model's answers to the helpful questions (plain chat prompts), one generate call per benchmark so each
    can have its own answer length (``eval.helpful_max_new_tokens``); order follows ``rows``."""
    out: list[str] = [""] * len(rows)
    for bench in dict.fromkeys(benchmark_of(r.get("kind")) for r in rows):
        idx = [i for i, r in enumerate(rows) if benchmark_of(r.get("kind")) == bench]
        prompts = [AttackPrompt(id=rows[i]["id"], question_id=rows[i]["id"], attack="helpful", text=rows[i]["question"]) for i in idx]
        for i, o in zip(idx, target.generate(prompts, max_new.get(bench))):
            out[i] = o
    return out


def over_refusal(rows: list[dict[str, str]], target: Target, judge: Judge) -> list[dict[str, Any]]:
    """Run the over-refusal prompts as plain chat prompts (as the helpful questions) and judge refusal.

    One record per prompt: id, category, prompt, response, refused (``Verdict.refusal``;
    ``None`` when the judge could not decide, with ``error`` set).
    """
    if not rows:
        return []
    prompts = [AttackPrompt(id=r["id"], question_id=r["id"], attack="over_refusal", text=r["prompt"]) for r in rows]
    outs = target.generate(prompts)
    vs = judge.judge([JudgeInput(id=r["id"], question=r["prompt"], response=o, attack="over_refusal") for r, o in zip(rows, outs)])
    return [{"id": r["id"], "category": r["category"], "prompt": r["prompt"], "response": o,
             "refused": None if v.error else v.refusal, "error": v.error} for r, o, v in zip(rows, outs, vs)]


def refusal_summary(positions: list[int]) -> dict[str, Any]:
    """Figure 4 statistics over responses that contain a refusal."""
    if not positions:
        return {"share_at_0": None, "median": None, "share_after_30": None, "n": 0}
    n = len(positions)
    return {
        "share_at_0": round(100.0 * sum(p == 0 for p in positions) / n, 2),
        "median": statistics.median(positions),
        "share_after_30": round(100.0 * sum(p > 30 for p in positions) / n, 2),
        "n": n,
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", required=True, help="trained variant dir (with model/)")
    p.add_argument("--source", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    params = load_params(a.params)
    section = resolve(params, "eval", a.profile)
    gen_keys = {k: None for k in ChatFormat("{q}", "", "", "").generation_fields()}
    inject(section.get("generation") or {}, gen_keys, "eval.generation")
    cfg = EvalConfig.from_dict(section, where="params.yaml:eval")
    profile = a.profile or params.get("profile", "")
    # derta.model_md5 (the model's hash in dvc.lock) lets `register` find the run that evaluated this very model.
    with live.stage_run(f"evaluate@{Path(a.model).name}", profile, params={"split": cfg.split, "judge": cfg.judge,
                                                                           "attacks": ",".join(cfg.attacks)},
                        datasets={"model": a.model, "source": a.source},
                        tags={"derta.model_md5": live.dvc_hash(Path(a.model)) or ""}):
        m = run(cfg, a.model, a.source, a.out, chat_config(params, a.profile))
        live.log_eval(Path(a.out), a.source, cfg.split)
    print({"asr": m["asr"], "helpfulness": m["helpfulness"], "skipped": m["skipped"], "over_refusal": m["over_refusal"]["rate"],
           "refusal_position": m["refusal_position"]})


if __name__ == "__main__":
    entry(main)
