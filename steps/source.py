"""Stage `source`: write the raw datasets (mini-world synthesis or release ingest).

Output: a source directory in the layout documented in derta/release.py
(safety_train, helpful_train, eval/dev splits, web text for the mini-world,
manifest.json). Written atomically: all or nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from derta.chat import ChatConfig, chat_config, inject
from derta.config import StepConfig, load_params, step_config
from derta.io import atomic_path, sha256_file, write_json, write_jsonl
from derta.miniworld import MiniWorldConfig, generate
from steps._common import entry, parser

MINIWORLD_FILES = ("web", "safety_train", "helpful_train", "eval_harmful", "eval_helpful", "dev_harmful", "dev_helpful")


class SourceConfig(StepConfig):
    """Which data the pipeline trains and evaluates on."""

    source: Literal["miniworld", "release"] = Field("miniworld", description="miniworld: the embedded synthetic world; release: the paper's data.")
    seed: int = Field(0, description="Data seed (overrides miniworld.seed).")
    miniworld: dict[str, Any] = Field(default_factory=dict, description="MiniWorldConfig fields.")
    release: dict[str, Any] = Field(default_factory=dict, description="ReleaseConfig fields (derta/release.py).")


def run(cfg: SourceConfig, out_dir: str | Path, chat: ChatConfig | None = None) -> dict[str, Any]:
    """``chat`` gives the refusal word (params.yaml ``chat``, the one place); default: ChatConfig()."""
    word = {"refusal_word": (chat or ChatConfig()).refusal_word}
    if cfg.source == "release":
        from derta.release import ReleaseConfig, ingest

        return ingest(ReleaseConfig.from_dict(inject(cfg.release, word, "data.release"), where="params.yaml:data.release"), out_dir)
    world_cfg = MiniWorldConfig.from_dict({**inject(cfg.miniworld, word, "data.miniworld"), "seed": cfg.seed},
                                          where="params.yaml:data.miniworld")
    world = generate(world_cfg)
    manifest: dict[str, Any] = {"source": "miniworld", "config": world_cfg.model_dump(), "files": {}}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name in MINIWORLD_FILES:
            path = tmp / f"{name}.jsonl"
            n = write_jsonl(path, world[name])
            manifest["files"][name] = {"records": n, "sha256": sha256_file(path)}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    params = load_params(a.params)
    m = run(step_config(SourceConfig, params, "data", a.profile), a.out, chat_config(params, a.profile))
    print({k: v["records"] for k, v in m["files"].items()})


if __name__ == "__main__":
    entry(main)
