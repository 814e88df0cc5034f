"""Stage `pretrain`: train the tiny base model on the mini-world web text.

Inputs: source dir (web.jsonl), tokenizer dir. Output: a base model dir
(model/ with safetensors + tokenizer, train_log.json). This "base model" is
where every variant starts. With ``model.path`` set (a real base model) the
stage copies nothing: it writes ``source.json``, the path and the size and
sha256 of every file loading the model reads there, so that new weights at the
same path change this output and DVC re-runs everything downstream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from derta import live
from derta.config import StepConfig, load_params, step_config
from derta.errors import ConfigError
from derta.io import read_jsonl, sha256_file, write_json
from derta.modeling import ModelConfig, build_model, set_threads
from derta.train import TrainConfig, pack_documents, train
from steps._common import entry, parser


class PretrainConfig(StepConfig):
    """Pretraining of the tiny base model."""

    block_size: int = Field(128, ge=1, description="Tokens per packed training block (at most the model's max_position_embeddings).")
    packing: Literal["concat", "whole"] = Field(
        "concat", description="'concat': the web text cut every block_size tokens, a document may straddle two "
                              "blocks; 'whole': a document that fits in a block is never cut (the mini-world's code and "
                              "cipher pages are longer than 128 tokens: with concat their question and answer are never "
                              "learned in one context)")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields for pretraining.")


# Top-level files that `from_pretrained` (safetensors only, see derta.modeling)
# and the tokenizer read: weights, index/config/tokenizer JSON, sentencepiece or
# tiktoken vocabularies, BPE merges, chat templates, remote code. *.bin / *.pth
# are never loaded (use_safetensors=True), so they are not hashed.
SOURCE_SUFFIXES = (".safetensors", ".json", ".model", ".tiktoken", ".txt", ".jinja", ".py")


def model_dir(path: str) -> tuple[Path, str | None]:
    """``model.path`` as a local directory: itself, or the cached snapshot of a hub id.

    Returns (directory, snapshot commit or None). Offline only: a hub id that is
    not in the Hugging Face cache is an error, as is a path that does not exist.
    """
    if Path(path).is_dir():
        return Path(path), None
    from huggingface_hub import snapshot_download

    try:
        snap = Path(snapshot_download(path, local_files_only=True))
    except ValueError:  # HFValidationError: not a repo id either
        raise ConfigError(f"model.path {path!r}: no such directory") from None
    except OSError as err:
        raise ConfigError(
            f"model.path {path!r}: no such directory, and not a hub id in the local Hugging Face cache "
            f"(download it first: huggingface-cli download {path}) [{type(err).__name__}]"
        ) from None
    return snap, snap.name


def source_manifest(path: str) -> dict[str, Any]:
    """What the weights at ``model.path`` are: {path, revision, files: [{name, size, sha256}]} sorted by name."""
    root, revision = model_dir(path)
    files = sorted(f for f in root.iterdir() if f.is_file() and f.name.endswith(SOURCE_SUFFIXES))
    if not any(f.name.endswith(".safetensors") for f in files):
        raise ConfigError(f"model.path {path!r}: no *.safetensors in {root} (models are loaded from safetensors only)")
    return {
        "path": path,
        "revision": revision,
        "files": [{"name": f.name, "size": f.stat().st_size, "sha256": sha256_file(f)} for f in files],
    }


def run(cfg: PretrainConfig, model_cfg: ModelConfig, src_dir: str | Path, tokenizer_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    set_threads()
    out_dir = Path(out_dir)
    tcfg = TrainConfig.from_dict(cfg.train, where="params.yaml:pretrain.train")
    if model_cfg.path:  # a real base model: nothing to pretrain; record which weights
        manifest = source_manifest(model_cfg.path)
        write_json(out_dir / "source.json", manifest)
        write_json(out_dir / "train_log.json", {"base_model": model_cfg.path, "pretrained": False})
        return {"base_model": model_cfg.path, "source": manifest}
    if cfg.block_size > model_cfg.max_position_embeddings:
        raise ConfigError(f"params.yaml: pretrain.block_size {cfg.block_size} is longer than the model's "
                          f"max_position_embeddings {model_cfg.max_position_embeddings}")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    docs = [r["text"] for r in read_jsonl(Path(src_dir) / "web.jsonl", {"text": str}, non_empty=["text"])]
    examples = pack_documents(docs, tok, cfg.block_size, whole=cfg.packing == "whole")
    model = build_model(model_cfg, tok, seed=tcfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    summary = train(tcfg, model, tok, examples, out_dir)
    summary["n_params"] = n_params
    write_json(out_dir / "train_log.json", live.split_timings(summary)[0])
    return summary


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--source", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    params = load_params(a.params)
    cfg = step_config(PretrainConfig, params, "pretrain", a.profile)
    with live.stage_run("pretrain", a.profile or params.get("profile", ""), params=cfg.model_dump(mode="json"),
                        datasets={"web": str(Path(a.source) / "web.jsonl")}):
        s = run(cfg, step_config(ModelConfig, params, "model", a.profile), a.source, a.tokenizer, a.out)
    print({k: s.get(k) for k in ("n_params", "global_step", "train_loss", "train_runtime_s", "train_tokens")})


if __name__ == "__main__":
    entry(main)
