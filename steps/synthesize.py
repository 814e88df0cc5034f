"""Stage `synthesize`: write every training variant and the DPO pairs.

Inputs: the validated source dir (safety_train, helpful_train). Output: a
directory with ``<variant>.jsonl`` per configured variant, ``dpo_pairs.jsonl``
and ``counts.json``. Same params and seed -> byte-identical files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from derta.chat import inject
from derta.config import load_params, resolve
from derta.io import atomic_path, read_jsonl, write_json, write_jsonl
from derta.variants import SynthesizeConfig, helpful_rows, synthesize
from steps._common import chat_format, entry, parser


def synth_config(params: dict[str, Any], profile: str | None, tokenizer_dir: str | None) -> SynthesizeConfig:
    """params.yaml ``synthesize`` with the prompt format and EOS of ``chat`` (resolved against the tokenizer)."""
    fields = chat_format(params, profile, tokenizer_dir).synthesize_fields()
    return SynthesizeConfig.from_dict(inject(resolve(params, "synthesize", profile), fields, "synthesize"),
                                      where="params.yaml:synthesize")

SAFETY_SCHEMA = {"id": str, "instruction": str, "output": str, "safe_response": str}
HELPFUL_SCHEMA = {"id": str, "instruction": str, "output": str}


def run(cfg: SynthesizeConfig, src_dir: str | Path, out_dir: str | Path, helpful_file: str | Path | None = None) -> dict[str, Any]:
    src = Path(src_dir)
    safety = read_jsonl(src / "safety_train.jsonl", SAFETY_SCHEMA, non_empty=SAFETY_SCHEMA, unique_key="id")
    helpful = helpful_rows(src, helpful_file)
    out = synthesize(cfg, safety, helpful)
    counts: dict[str, Any] = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name, recs in out.items():
            write_jsonl(tmp / f"{name}.jsonl", recs)
            kinds: dict[str, int] = {}
            for r in recs:
                kinds[r.get("kind", "pair")] = kinds.get(r.get("kind", "pair"), 0) + 1
            counts[name] = {"total": len(recs), "kinds": kinds}
        write_json(tmp / "counts.json", counts)
    return counts


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--source", required=True)
    p.add_argument("--tokenizer", default=None, help="tokenizer dir: resolves the chat format's 'tokenizer' values")
    p.add_argument("--helpful", default=None, help="extra helpful pairs (JSON lines {id, instruction, output})")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    params = load_params(a.params)
    counts = run(synth_config(params, a.profile, a.tokenizer), a.source, a.out, a.helpful)
    print({k: v["kinds"] for k, v in counts.items()})


if __name__ == "__main__":
    entry(main)
