"""Stage `tokenizer`: train the byte-level BPE on the source's texts.

Input: the validated source dir. Output: a Hugging Face tokenizer dir in
which the refusal word is one token (checked; clear error otherwise).
"""

from __future__ import annotations

from pathlib import Path

from derta.config import load_params, step_config
from derta.io import atomic_path, read_jsonl
from derta.modeling import TokenizerConfig, refusal_token_id, train_tokenizer
from steps._common import entry, parser


def corpus(src_dir: str | Path) -> list[str]:
    src = Path(src_dir)
    texts: list[str] = []
    if (src / "web.jsonl").exists():
        texts += [r["text"] for r in read_jsonl(src / "web.jsonl")]
    for r in read_jsonl(src / "safety_train.jsonl"):
        texts += [r["instruction"], r["output"], " " + r["safe_response"]]
    for r in read_jsonl(src / "helpful_train.jsonl"):
        texts += [r["instruction"], " " + r["output"]]
    return texts


def run(cfg: TokenizerConfig, src_dir: str | Path, out_dir: str | Path):
    with atomic_path(out_dir) as tmp:
        if cfg.path:  # a real model's tokenizer: copy it, fail before any GPU time if the refusal word is not one token
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(cfg.path)
            refusal_token_id(tok, cfg.refusal_word)
            tok.save_pretrained(str(tmp))
        else:
            tok = train_tokenizer(cfg, corpus(src_dir), tmp)
    return tok


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--source", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    cfg = step_config(TokenizerConfig, load_params(a.params), "tokenizer", a.profile)
    tok = run(cfg, a.source, a.out)
    print(f"vocab {len(tok)}; refusal word {cfg.refusal_word!r} -> id {refusal_token_id(tok, cfg.refusal_word)}")


if __name__ == "__main__":
    entry(main)
