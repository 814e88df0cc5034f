"""One DVC stage on one node of a cluster, and what the flow needs to fan stages out.

A node is a checkout of this repository at the run's commit, with the
project's venv and a DVC remote shared by all nodes (``dvc remote add -d``).
The flow (``flows/derta_flow.py``) sends each stage to a node together with
the run's pipeline files: ``dvc.yaml``, ``params.yaml``, the ``dvc.lock``
merged so far, and the uncached outputs of finished stages (the small
reports DVC leaves to git, ``cache: false``). The node

1. writes those files into its checkout (:func:`unpack`),
2. pulls exactly the stage's deps from the remote, and its own outs when the
   remote has them (so an unchanged stage is skipped, not recomputed),
3. runs ``dvc repro --single-item <stage>``,
4. pushes the stage's outs, and only after the stage succeeded: a node killed
   mid-stage leaves nothing on the remote,
5. returns the stage's ``dvc.lock`` entry and its uncached outputs
   (:func:`run_stage`), which the flow merges into its own ``dvc.lock``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from derta.errors import ConfigError
from derta.io import write_text

PIPELINE = "dvc.yaml"
LOCK = "dvc.lock"
ENV = {"DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false"}


class RemoteUnreachable(ConfigError):
    """The DVC remote cannot be listed: the message names it and its URL."""


# ---------------------------------------------------------------- the stage graph

def _stages(workdir: Path) -> dict[str, Any]:
    """``dvc.yaml``'s stages (foreach expanded against params.yaml), by name."""
    from dvc.repo import Repo

    pipeline = (Path(workdir) / PIPELINE).resolve()
    with Repo(str(workdir)) as repo:
        return {s.name if s.dvcfile.relpath != PIPELINE else s.addressing: s for s in repo.index.stages
                if Path(s.dvcfile.path).resolve() == pipeline}


def _overlap(a: str, b: str) -> bool:
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def _outs(stage: Any, cached: bool) -> list[str]:
    return [o.def_path for o in stage.outs if bool(o.use_cache) == cached]


def _deps(stage: Any) -> list[str]:
    return [d.def_path for d in stage.deps if not getattr(d, "is_params", False) and d.def_path != "params.yaml"]


def plan(workdir: str | Path, names: Iterable[str]) -> dict[str, list[str]]:
    """Each of ``names`` with the stages among ``names`` it reads an output of (its direct upstream)."""
    stages = _stages(Path(workdir))
    names = list(names)
    missing = [n for n in names if n not in stages]
    if missing:
        raise ConfigError(f"{PIPELINE}: no stage {missing[0]!r}")
    return {n: [u for u in names if u != n and any(_overlap(d, o) for d in _deps(stages[n])
                                                   for o in _outs(stages[u], True) + _outs(stages[u], False))]
            for n in names}


def pull_targets(workdir: str | Path, stage: str) -> list[str]:
    """The cached outputs (or the parts of them) ``stage`` reads: exactly what the node pulls before running it."""
    stages = _stages(Path(workdir))
    targets: list[str] = []
    for dep in _deps(stages[stage]):
        for other in stages.values():
            for out in _outs(other, True):
                if _overlap(dep, out):
                    # a file inside an output directory is pulled on its own (DVC's granular pull)
                    t = dep if len(dep) > len(out) else out
                    if t not in targets:
                        targets.append(t)
    return targets


def uncached_outs(workdir: str | Path, *names: str) -> list[str]:
    """The outputs of ``names`` that DVC leaves to git (``cache: false``): they travel with the stage results."""
    stages = _stages(Path(workdir))
    return [o for n in names for o in _outs(stages[n], False)]


# ---------------------------------------------------------------- files and locks

def pack(workdir: str | Path, paths: Iterable[str]) -> dict[str, dict[str, str]]:
    """``{path: {relative file: base64}}`` of each file or directory in ``paths`` (absent ones left out)."""
    wd = Path(workdir)
    out: dict[str, dict[str, str]] = {}
    for p in paths:
        root = wd / p
        files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else []
        if files:
            out[p] = {("." if f == root else f.relative_to(root).as_posix()): base64.b64encode(f.read_bytes()).decode()
                      for f in files}
    return out


def unpack(workdir: str | Path, packed: dict[str, dict[str, str]]) -> None:
    """Write what :func:`pack` read; a directory is replaced whole (no stale file survives to change its hash)."""
    wd = Path(workdir)
    for p, files in packed.items():
        root = wd / p
        if set(files) == {"."}:
            root.parent.mkdir(parents=True, exist_ok=True)
            tmp = root.with_name(root.name + ".part")
            tmp.write_bytes(base64.b64decode(files["."]))
            os.replace(tmp, root)
            continue
        tmp = root.with_name(root.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        for rel, data in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(base64.b64decode(data))
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)


def read_lock(workdir: str | Path) -> dict[str, Any]:
    path = Path(workdir) / LOCK
    lock = yaml.safe_load(path.read_text()) if path.exists() else None
    return (lock or {}).get("stages") or {}


def lock_text(stages: dict[str, Any]) -> str:
    """``dvc.lock`` (DVC's schema 2.0) holding ``stages``."""
    return yaml.safe_dump({"schema": "2.0", "stages": stages}, sort_keys=False)


def write_lock(workdir: str | Path, entries: dict[str, Any]) -> None:
    """Merge stage entries into ``dvc.lock``; atomic."""
    write_text(Path(workdir) / LOCK, lock_text({**read_lock(workdir), **entries}))


# ---------------------------------------------------------------- the remote

def check_remote(workdir: str | Path, name: str | None = None) -> str:
    """The DVC remote's URL; :class:`RemoteUnreachable` (naming it) when none is set or it cannot be listed."""
    from dvc.repo import Repo

    with Repo(str(workdir)) as repo:
        name = name or repo.config["core"].get("remote")
        if not name:
            raise RemoteUnreachable(f"{workdir}: no DVC remote to move stage inputs and outputs between nodes "
                                    "(dvc remote add -d store s3://bucket/derta, or a shared directory)")
        if name not in repo.config["remote"]:
            raise RemoteUnreachable(f"{workdir}: no DVC remote named {name!r} (dvc remote list)")
        url = repo.config["remote"][name]["url"]
        try:
            store = repo.cloud.get_remote(name)
            # an object store has no empty "directories": its bucket must exist; a directory remote, the directory
            local = store.fs.protocol in ("local", "file") or "local" in (store.fs.protocol or ())
            store.fs.info(store.path if local else store.path.split("/", 1)[0])
        except FileNotFoundError:
            raise RemoteUnreachable(f"DVC remote {name!r} ({url}) does not exist (create it, or fix its url: "
                                    f"dvc remote modify {name} url ...)") from None
        except Exception as err:  # noqa: BLE001 - any client error means the same to the user
            raise RemoteUnreachable(f"DVC remote {name!r} ({url}) is unreachable: {type(err).__name__}: {err}") from None
        return url


# ---------------------------------------------------------------- one stage on this node

def dvc(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, **ENV, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(bin_dir / "dvc"), *args], cwd=workdir, env=env, capture_output=True, text=True)
    if check and proc.returncode:
        raise RuntimeError(f"{workdir}: dvc {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def head_commit(workdir: str | Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=workdir, check=True, capture_output=True,
                          text=True).stdout.strip()


def run_stage(workdir: str | Path, stage: str, files: dict[str, str], uncached: dict[str, dict[str, str]],
              commit: str | None = None, remote: str | None = None) -> dict[str, Any]:
    """Run one stage here: returns ``{"status": "ran"|"cached", "entry": <dvc.lock entry>, "uncached": pack}``.

    ``files`` are the run's pipeline files (path -> text); ``uncached`` the
    finished stages' uncached outputs; ``commit`` the code the run is at
    (a checkout at another commit refuses the stage: its code would differ).
    """
    wd = Path(workdir).resolve()
    if commit and head_commit(wd) != commit:
        raise ConfigError(f"{wd}: checkout is at {head_commit(wd)[:12]}, the run is at {commit[:12]} "
                          f"(git fetch && git checkout {commit[:12]})")
    clear_stale_locks(wd)
    for rel, text in files.items():
        write_text(wd / rel, text)
    unpack(wd, uncached)
    remote_args = ["--remote", remote] if remote else []
    targets = pull_targets(wd, stage)
    if targets:
        dvc(wd, "pull", *remote_args, *targets)
    dvc(wd, "pull", "--allow-missing", *remote_args, stage, check=False)  # its own outs, if already computed
    proc = dvc(wd, "repro", "--single-item", stage)
    dvc(wd, "push", *remote_args, stage)
    return {"status": "cached" if "didn't change, skipping" in proc.stdout else "ran",
            "entry": read_lock(wd)[stage], "uncached": pack(wd, uncached_outs(wd, stage)), "log": proc.stdout[-4000:]}


def enter_checkout() -> dict[str, str]:
    """Prefect pull step of the ``derta-stage/stage`` deployment: work in this node's checkout.

    Every node's worker is started with ``DERTA_CHECKOUT`` (its own clone), so
    one deployment serves every node; ``prefect.yaml`` names this step.
    """
    path = os.environ.get("DERTA_CHECKOUT")
    if not path or not (Path(path) / PIPELINE).is_file():
        raise ConfigError(f"DERTA_CHECKOUT={path!r} is not a checkout of this repository: start each node's worker as "
                          "DERTA_CHECKOUT=/path/to/its/clone prefect worker start --pool derta-nodes --limit 1")
    os.chdir(path)
    return {"directory": path}


def live_dvc(info: dict[str, Any]) -> bool:
    """Whether the pid of ``info`` (an rwlock entry, a DVC task's process file) is a running dvc process."""
    import psutil

    try:
        return any("dvc" in part for part in psutil.Process(int(info["pid"])).cmdline())
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def _drop_dead_entries(lock: dict[str, Any]) -> list[str]:
    """Remove, in place, the rwlock entries (one or a list per output) whose pid is no running dvc; say which."""
    removed: list[str] = []
    for mode in ("read", "write"):
        for out, infos in list((lock.get(mode) or {}).items()):
            many = isinstance(infos, list)
            keep = [i for i in (infos if many else [infos]) if live_dvc(i)]
            removed += [f"{mode} {out} (pid {i.get('pid')}: {i.get('cmd')})" for i in (infos if many else [infos]) if i not in keep]
            if not keep:
                del lock[mode][out]
            else:
                lock[mode][out] = keep if many else keep[0]
    return removed


def clear_stale_locks(workdir: Path) -> list[str]:
    """Remove what a killed ``dvc repro`` left in ``.dvc/tmp``; return what was removed.

    DVC drops an rwlock entry whose pid is dead by itself (dvc/rwlock.py), and
    its repo lock (``.dvc/tmp/lock``, an fcntl lock) dies with the process.
    Two leftovers it does not handle: an entry whose pid now belongs to another
    process (containers restart pids from 1) and an rwlock file cut short by a
    kill during DVC's in-place rewrite (every later run then fails with
    "RWLock-file ... corrupted"). Touches nothing while the repo lock is held,
    i.e. while a dvc command runs in this workspace.
    """
    import zc.lockfile

    tmp = workdir / ".dvc" / "tmp"
    path = tmp / "rwlock"
    if not path.exists():
        return []
    try:
        guard = zc.lockfile.LockFile(str(tmp / "lock"))
    except zc.lockfile.LockError:
        return []
    try:
        try:
            lock = json.loads(path.read_text(encoding="utf-8") or "{}")
        except (ValueError, UnicodeDecodeError):
            path.unlink()
            return [f"{path} (corrupted)"]

        removed = _drop_dead_entries(lock)
        if removed:
            write_text(path, json.dumps(lock))
        return removed
    finally:
        guard.close()
