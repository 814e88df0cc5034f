"""Stage `tokenizer`: train the byte-level BPE on the source's texts.

Input: the validated source dir. Output: a Hugging Face tokenizer dir in
which the refusal word is one token (checked; clear error otherwise).
"""

from __future__ import annotations

from pathlib import Path

from derta.chat import ChatConfig, ChatFormat, chat_config, inject, response
from derta.config import load_params, resolve
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


def run(cfg: TokenizerConfig, src_dir: str | Path, out_dir: str | Path, chat: ChatConfig | None = None):
    """Copy ``cfg.path``'s tokenizer or train the BPE; either way the refusal token is checked in context first.

    ``chat`` (params.yaml ``chat``, default ChatConfig()) names the refusal word; a trained BPE is made to
    hold it as one token.
    """
    chat = chat or ChatConfig()
    cfg = cfg.model_copy(update={"refusal_word": response(chat.response_sep, chat.refusal_word)})
    with atomic_path(out_dir) as tmp:
        if cfg.path:  # a real model's tokenizer: copy it, fail before any GPU time if the refusal word is not one token
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(cfg.path)
        else:
            tok = train_tokenizer(cfg, corpus(src_dir), tmp)
        refusal_token_id(tok, cfg.refusal_word)
        ChatFormat.resolve(chat, tok).refusal_token_id(tok)
        if cfg.path:
            tok.save_pretrained(str(tmp))
    return tok


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--source", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    params = load_params(a.params)
    chat = chat_config(params, a.profile)
    section = inject(resolve(params, "tokenizer", a.profile), {"refusal_word": chat.refusal_word}, "tokenizer")
    tok = run(TokenizerConfig.from_dict(section, where="params.yaml:tokenizer"), a.source, a.out, chat)
    word = response(chat.response_sep, chat.refusal_word)
    print(f"vocab {len(tok)}; refusal word {word!r} -> id {refusal_token_id(tok, word)}")


if __name__ == "__main__":
    entry(main)
