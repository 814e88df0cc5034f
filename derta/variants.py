"""Synthesis of every training variant of the paper (Table 4, Figure 5).

Inputs are the release's source formats: safety triples
``{id, instruction, output (harmful), safe_response}`` and helpfulness pairs
``{id, instruction, output}``. Output records use the release's training
format plus a stable ``id`` and a ``kind``::

    {"id", "kind": helpful|safe|harmful_prefix|rto, "prefix", "text", "safe": "true"|"false", "k"}

``safe == "true"`` marks an RTO instance (``text`` = the whole harmful
response; every response position is trained towards the refusal token).
``k`` is the number of harmful word units in the prefix (0 for non-prefix kinds).

Sizes (paper section 3.1 / Table 4, with N = ``n_triples``):
vanilla 2N safe pairs; vanilla_half N safe pairs; harmful_prefix N;
rto N safe + N RTO; derta N harmful-prefix + N RTO; recaug 2N harmful-prefix.
Every variant also carries the same helpfulness data (plain MLE).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from derta.chat import response, started_response
from derta.config import StepConfig
from derta.errors import ConfigError, DataError
from derta.io import read_jsonl, stable_id
from derta.miniworld import word_units

VARIANTS = ("vanilla", "vanilla_half", "harmful_prefix", "rto", "derta", "recaug")


class SynthesizeConfig(StepConfig):
    """How the training variants are built from triples and helpfulness data."""

    seed: int = Field(0, description="Seed of the harmful-prefix length draws and sampling.")
    n_triples: int = Field(300, description="N: triples per half-variant (paper 3,000).")
    n_helpful: int = Field(800, description="Helpfulness instances in every variant (0 = all available).")
    short_answer_repeats: int = Field(
        1, ge=1,
        description="Times each helpful instance whose answer has at most short_answer_words words appears in every "
                    "variant. The loss is a mean over target tokens, so an answer of a few tokens weighs a few targets "
                    "against tens for a procedure; repeats give short answers more weight (1 = the paper; "
                    "docs/miniworld-formats.md).",
    )
    short_answer_words: int = Field(3, ge=1, description="Words an answer may have to count as short (short_answer_repeats).")
    prompt_template: str = Field("[INST] {q} [\\INST]", description="Chat template; {q} is the question (release: '[INST] {q} [\\INST]').")
    response_sep: str = Field(" ", description="Text put between the template and the response (the release's responses start with a space).")
    eos: str = Field("<|end_of_text|>", description="End-of-sequence text appended to every response.")
    prefix_rule: Literal["release", "paper"] = Field(
        "release",
        description="release: cut on words, k ~ U[1, len-2], k=0 for every third instance; paper: k ~ U[0, len].",
    )
    variants: list[str] = Field(list(VARIANTS), description=f"Variants to write; any of {list(VARIANTS)}.")


HELPFUL_SCHEMA = {"id": str, "instruction": str, "output": str}


def helpful_rows(src_dir: str | Path, extra: str | Path | None = None) -> list[dict[str, Any]]:
    """The source's helpful pairs, then those of ``extra`` (e.g. the self_answer stage's), ids unique over both."""
    rows = read_jsonl(Path(src_dir) / "helpful_train.jsonl", HELPFUL_SCHEMA, non_empty=HELPFUL_SCHEMA, unique_key="id")
    if extra:
        seen = {r["id"] for r in rows}
        more = read_jsonl(extra, HELPFUL_SCHEMA, non_empty=HELPFUL_SCHEMA, unique_key="id")
        clash = [r["id"] for r in more if r["id"] in seen]
        if clash:
            raise DataError(str(extra), 0, "unique_id", f"id {clash[0]!r} is also in {Path(src_dir) / 'helpful_train.jsonl'}")
        rows += more
    return rows


def _check_variants(names: list[str]) -> None:
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise ConfigError(f"unknown variant(s) {bad}; valid variants: {list(VARIANTS)}")


def prefix_length(n_units: int, index: int, rng: random.Random, rule: str) -> int:
    """Number of harmful word units to put before the safe response.

    release rule (the release's data script): every third instance (index % 3 == 0)
    gets k = 0; the others k ~ U[1, n-2] (k = 0 when n < 3).
    paper rule (paper section 2.2): k ~ U[0, n].
    """
    if rule == "paper":
        return rng.randint(0, n_units)
    if index % 3 == 0 or n_units < 3:
        return 0
    return rng.randint(1, n_units - 2)


def is_short_answer(cfg: SynthesizeConfig, answer: str) -> bool:
    """An answer of at most ``cfg.short_answer_words`` words (repeated ``cfg.short_answer_repeats`` times)."""
    return len(answer.split()) <= cfg.short_answer_words


def n_helpful_records(cfg: SynthesizeConfig, rows: list[dict[str, Any]]) -> int:
    """Helpful records in every variant built from ``rows``: one each, plus the repeats of the short answers."""
    return len(rows) + (cfg.short_answer_repeats - 1) * sum(is_short_answer(cfg, r["output"]) for r in rows)


class Builder:
    def __init__(self, cfg: SynthesizeConfig):
        self.cfg = cfg

    def prompt(self, q: str) -> str:
        return self.cfg.prompt_template.format(q=q)

    def record(self, kind: str, src_id: str, prefix: str, text: str, rto: bool, k: int = 0, tag: str = "") -> dict[str, Any]:
        text = response(self.cfg.response_sep, text) + self.cfg.eos
        return {
            "id": stable_id(kind, src_id, tag, prefix, text),
            "kind": kind,
            "prefix": prefix,
            "text": text,
            "safe": "true" if rto else "false",
            "k": k,
            "source_id": src_id,
        }

    def helpful(self, row: dict[str, Any], tag: str = "") -> dict[str, Any]:
        return self.record("helpful", row["id"], self.prompt(row["instruction"]), row["output"], False, tag=tag)

    def helpful_set(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One record per helpful row, then the repeats of the short answers (short_answer_repeats)."""
        recs = [self.helpful(r) for r in rows]
        for i in range(1, self.cfg.short_answer_repeats):
            recs += [self.helpful(r, tag=f"repeat-{i}") for r in rows if is_short_answer(self.cfg, r["output"])]
        return recs

    def safe(self, row: dict[str, Any]) -> dict[str, Any]:
        return self.record("safe", row["id"], self.prompt(row["instruction"]), row["safe_response"], False)

    def rto(self, row: dict[str, Any]) -> dict[str, Any]:
        return self.record("rto", row["id"], self.prompt(row["instruction"]), row["output"], True)

    def harmful_prefix(self, row: dict[str, Any], index: int, rng: random.Random, tag: str = "") -> dict[str, Any]:
        units = word_units(row["output"])
        k = prefix_length(len(units), index, rng, self.cfg.prefix_rule)
        # The harmful prefix follows the template exactly as a response would.
        # As in the release: the prefix ends at a word, the safe response keeps its separator.
        prefix = started_response(self.prompt(row["instruction"]), self.cfg.response_sep, "".join(units[:k]))
        return self.record("harmful_prefix", row["id"], prefix, row["safe_response"], False, k=k, tag=tag)


def synthesize(
    cfg: SynthesizeConfig, safety: list[dict[str, Any]], helpful: list[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """Return {variant_name: records} for the configured variants plus ``dpo_pairs``."""
    _check_variants(cfg.variants)
    n = cfg.n_triples
    if len(safety) < 2 * n:
        raise ConfigError(f"synthesize: need 2*n_triples = {2 * n} safety triples, source has {len(safety)}")
    rng = random.Random(cfg.seed)
    order = list(range(len(safety)))
    rng.shuffle(order)
    pool = [safety[i] for i in order[: 2 * n]]
    first = pool[:n]  # vanilla_half, harmful_prefix, rto, derta: the first N; vanilla, recaug: all 2N
    n_help = cfg.n_helpful or len(helpful)
    if len(helpful) < n_help:
        raise ConfigError(f"synthesize: n_helpful = {n_help} but the source has {len(helpful)} helpful pairs")
    b = Builder(cfg)
    help_recs = b.helpful_set(helpful[:n_help])

    def prefixes(rows: list[dict[str, Any]], seed_tag: str) -> list[dict[str, Any]]:
        r = random.Random(f"{cfg.seed}-{seed_tag}")
        return [b.harmful_prefix(row, i, r, tag=seed_tag) for i, row in enumerate(rows)]

    builders = {
        "vanilla": lambda: [b.safe(r) for r in pool],
        "vanilla_half": lambda: [b.safe(r) for r in first],
        "harmful_prefix": lambda: prefixes(first, "prefix"),
        "rto": lambda: [b.safe(r) for r in first] + [b.rto(r) for r in first],
        "derta": lambda: prefixes(first, "prefix") + [b.rto(r) for r in first],
        "recaug": lambda: prefixes(pool, "recaug"),
    }
    out: dict[str, list[dict[str, Any]]] = {}
    for name in cfg.variants:
        recs = help_recs + builders[name]()
        random.Random(f"{cfg.seed}-{name}-order").shuffle(recs)
        out[name] = recs
    out["dpo_pairs"] = [
        {
            "id": stable_id("dpo", r["id"]),
            "source_id": r["id"],
            "prompt": b.prompt(r["instruction"]) + cfg.response_sep,  # prompt + chosen = the prompt + response(chosen)
            "chosen": r["safe_response"] + cfg.eos,
            "rejected": r["output"] + cfg.eos,
        }
        for r in pool
    ]
    return out


def expected_counts(cfg: SynthesizeConfig, n_helpful: int) -> dict[str, dict[str, int]]:
    """Kind counts each variant must have (used by the Great Expectations gate)."""
    n = cfg.n_triples
    table = {
        "vanilla": {"safe": 2 * n},
        "vanilla_half": {"safe": n},
        "harmful_prefix": {"harmful_prefix": n},
        "rto": {"safe": n, "rto": n},
        "derta": {"harmful_prefix": n, "rto": n},
        "recaug": {"harmful_prefix": 2 * n},
    }
    return {v: {"helpful": n_helpful, **table[v]} for v in cfg.variants}
