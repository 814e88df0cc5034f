"""Multi-seed reproduction: `make seeds` (default seeds 0 1 2, two at a time).

Each seed is queued as a DVC experiment named ``seed-S``
(``dvc exp run --queue -S data.seed=S -S synthesize.seed=S -S train.seed=S``)
and ``dvc queue start --jobs N`` runs them, N at once, each in its own
temporary workspace: the user's workspace and params.yaml are not touched.
The seed's ``reports/summary.json`` is read from the experiment's commit, with
each variant's helpfulness per question kind (from its ``eval/VARIANT/helpful.jsonl``
in DVC's cache), and kept as ``reports/seeds/seed-S.json`` with the commit and params it ran from as soon
as that seed has finished (a seed whose file came from the same commit and params is not rerun, so an
interrupted or partly failed run resumes; any other is). Then the mean and spread (population
standard deviation) of every ASR and helpfulness figure go to
``reports/seeds/summary.json`` and ``reports/seeds/summary.md``, which ends
with the plain-words findings (derta/findings.py) read on the mean. With every
seed's file present, ``make seeds`` only re-aggregates.

``--profile NAME`` does the same for a profile's own pipeline (``runs/NAME/dvc.yaml``,
derta/stages.py): experiments ``NAME-seed-S``, results under ``reports/NAME/seeds/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from derta import live, stages
from derta.cli import create_store
from derta.config import load_params
from derta.findings import findings
from derta.helpfulness import accuracy_by_kind
from derta.io import sha256_file, write_json, write_text
from derta.node import live_dvc


def aggregate(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": sorted(per_seed), "variants": {}}
    first = next(iter(per_seed.values()))
    for variant in first["variants"]:
        rows: dict[str, list[float]] = {}
        for s in per_seed.values():
            v = s["variants"][variant]
            for group in ("asr", "helpfulness", "helpfulness_by_kind"):
                for k, x in (v.get(group) or {}).items():
                    if x is not None:
                        rows.setdefault(f"{group}.{k}", []).append(float(x))
            for k in ("share_at_0", "share_after_30", "median"):
                if v["refusal_position"].get(k) is not None:
                    rows.setdefault(f"refusal_position.{k}", []).append(float(v["refusal_position"][k]))
            for k in ("asr_black_box_avg", "asr_white_box_avg", "over_refusal"):
                if v.get(k) is not None:
                    rows.setdefault(k, []).append(float(v[k]))
        out["variants"][variant] = {k: {"mean": round(statistics.fmean(x), 2), "std": round(statistics.pstdev(x), 2), "values": x} for k, x in rows.items()}
        splits = {s["variants"][variant].get("split") for s in per_seed.values()} - {None}
        if len(splits) == 1:
            out.setdefault("split", splits.pop())
    sets = (first.get("provenance") or {}).get("sets")
    if sets:
        out["sets"] = sets
    return out


def mean_summary(agg: dict[str, Any]) -> dict[str, Any]:
    """The seeds' means in ``reports/summary.json``'s shape (what derta.findings reads); a figure that was not
    measured in every seed is the mean of the seeds that measured it."""
    variants: dict[str, Any] = {}
    for name, rows in agg["variants"].items():
        v: dict[str, Any] = {"asr": {}, "helpfulness": {}, "refusal_position": {}, "split": agg.get("split")}
        for key, row in rows.items():
            group, _, k = key.partition(".")
            if k:
                v.setdefault(group, {})[k] = row["mean"]
            else:
                v[group] = row["mean"]
        for k in ("asr_black_box_avg", "asr_white_box_avg"):
            v.setdefault(k, None)
        for k in ("share_at_0", "median"):
            v["refusal_position"].setdefault(k, None)
        variants[name] = v
    return {"variants": variants}


def markdown(agg: dict[str, Any]) -> str:
    keys = sorted({k for v in agg["variants"].values() for k in v})
    lines = [f"# Mean ± std over seeds {agg['seeds']}", ""]
    if agg.get("sets"):
        lines += ["Every seed with the overrides " + ", ".join(f"`{o}`" for o in agg["sets"]) + ".", ""]
    lines += ["| variant | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, v in agg["variants"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v[k]['mean']:.1f} ± {v[k]['std']:.1f}" if k in v else "-" for k in keys) + " |")
    return "\n".join([*lines, "", *findings(mean_summary(agg), seeds=agg["seeds"])]) + "\n"


SEED_KEYS = ("data.seed", "synthesize.seed", "train.seed")


class Pipeline:
    """The pipeline a seed runs: the root ``dvc.yaml`` (``profile`` None) or a profile's own ``runs/NAME/dvc.yaml``,
    with ``sets``: params overrides every seed's experiment gets (``dvc exp run -S``, DVC's Hydra syntax)."""

    def __init__(self, profile: str | None = None, sets: tuple[str, ...] = ()):
        self.profile = profile
        self.sets = tuple(sets)
        seeded = [o for o in self.sets if o.lstrip("+~").split("=", 1)[0] in SEED_KEYS]
        if seeded or any("=" not in o for o in self.sets):
            raise SystemExit(f"--set takes KEY=VALUE overrides of keys other than the seeds {list(SEED_KEYS)}: "
                             f"{seeded or [o for o in self.sets if '=' not in o]}")

    def name(self, seed: int) -> str:
        """``seed-S`` (``NAME-seed-S`` for a profile), ending in a hash of the overrides when there are any,
        so that experiments of other settings do not replace each other."""
        base = f"{self.profile}-seed-{seed}" if self.profile else f"seed-{seed}"
        return f"{base}-{hashlib.sha256(json.dumps(self.sets).encode()).hexdigest()[:8]}" if self.sets else base

    def path(self, rel: str) -> str:
        """A root-pipeline path (``reports/summary.json``) as this pipeline writes it."""
        return stages.move(rel, self.profile) if self.profile else rel

    def exp_run(self, seed: int) -> list[str]:
        """``dvc exp run`` arguments that queue ``seed``. The seeds are the base keys every stage declares as
        params (a profile's stages declare them too), so each seed re-runs the stages that read them."""
        target = [str(stages.stages_path(self.profile))] if self.profile else []
        sets = [arg for key in SEED_KEYS for arg in ("-S", f"{key}={seed}")]
        sets += [arg for override in self.sets for arg in ("-S", override)]
        return ["exp", "run", "--queue", "--name", self.name(seed), *sets, *target]

    def check(self, params_file: str | Path = "params.yaml") -> None:
        """Fail before queuing anything when the profile is unknown, sets a seed itself (the queued ``-S``
        would not reach it), or its committed pipeline is stale; and when an override would not take."""
        check_overrides(self.sets, params_file)
        if not self.profile:
            return
        profiles = load_params(params_file).get("profiles") or {}
        if self.profile not in profiles:
            raise SystemExit(f"{params_file}: no profile {self.profile!r} (profiles: {', '.join(sorted(profiles))})")
        profile = profiles[self.profile] or {}
        own = [key for key in SEED_KEYS if "seed" in (profile.get(key.split(".")[0]) or {})]
        if own:
            raise SystemExit(f"{params_file}: profile {self.profile} sets {', '.join(own)} itself; "
                             "make seeds varies the base keys, so remove them from the profile")
        if not stages.is_current(self.profile, params_file=params_file):
            raise SystemExit(f"{stages.stages_path(self.profile)} is missing or stale: run `python -m derta.cli profile-stages {self.profile}`")


def check_overrides(sets: tuple[str, ...], params_file: str | Path = "params.yaml") -> None:
    """Apply ``sets`` as DVC will (``dvc.utils.hydra.apply_overrides``) to a copy of ``params_file`` and fail,
    naming the override, when DVC refuses one or when its key does not then hold its value: DVC writes an
    override into a section merged from another profile (``<<: *anchor``) nowhere, silently."""
    if not sets:
        return
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "params.yaml"
        copy.write_bytes(Path(params_file).read_bytes())
        try:
            apply_overrides(str(copy), list(sets))
        except InvalidArgumentError as err:
            raise SystemExit(f"--set {' '.join(sets)}: DVC refuses it: {err.__cause__ or err}") from None
        params = yaml.safe_load(copy.read_text())
    for override in sets:
        key, _, value = override.lstrip("+").partition("=")
        if key.startswith("~"):
            continue
        node: Any = params
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        want = yaml.safe_load(value)
        if not _holds(node, want):
            raise SystemExit(f"--set {override}: after DVC applies it, {params_file} has {key} = {node!r}, not {want!r}; "
                             "is that section merged from another profile (<<:)? DVC's -S does not reach into one: "
                             "write the section out in the profile")


def _holds(node: Any, want: Any) -> bool:
    """``node`` has the value ``want`` (a dict: at least its keys, with their values; Hydra merges dicts)."""
    if isinstance(want, dict):
        return isinstance(node, dict) and all(_holds(node.get(k), v) for k, v in want.items())
    return node == want


def queue_seeds(seeds: list[int], jobs: int, dvc: str, timeout_s: float, poll_s: float = 5.0,
                pipeline: Pipeline | None = None,
                keep: Callable[[int, dict[str, Any]], None] = lambda seed, summary: None) -> None:
    """Queue one experiment per seed and run them ``jobs`` at a time. ``keep(seed, summary)`` gets each one's
    ``reports/summary.json`` as soon as that seed's experiment has succeeded, so a seed that fails or a run
    that is stopped later loses none of the seeds that finished before it."""
    pipeline = pipeline or Pipeline()
    for s in seeds:
        forget(dvc, pipeline.name(s))
        _run(dvc, *pipeline.exp_run(s))
    # Queued experiments run in temporary copies of the workspace: a relative SQLite store would be lost with them.
    uri = live.tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        os.environ["MLFLOW_TRACKING_URI"] = uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    create_store(uri)
    seed_of = {pipeline.name(s): s for s in seeds}
    done: list[int] = []
    unread: dict[str, str] = {}

    def collect(name: str) -> None:  # an error here must not stop the seeds still running
        try:
            summary = read_experiment(name, pipeline)
        except Exception as exc:  # noqa: BLE001 - reported with the failed seeds below
            unread[name] = f"{type(exc).__name__}: {exc}"
            return
        keep(seed_of[name], summary)
        done.append(seed_of[name])

    try:
        status = supervise(set(seed_of), lambda n: _run(dvc, "queue", "start", "--jobs", str(n)), queue_status,
                           jobs=jobs, timeout_s=timeout_s, poll_s=poll_s, on_success=collect)
    except SystemExit:
        _print_logs(dvc, sorted(seed_of))
        raise
    finally:
        _run(dvc, "queue", "stop", check=False)
    failed = sorted(n for n, v in status.items() if v != "Success")
    kept = f" (kept: seeds {sorted(done)})" if done else ""
    if failed:
        _print_logs(dvc, failed)
        raise SystemExit(f"seeds failed: {failed}{kept}; see `dvc queue logs {failed[0]}`")
    if unread:
        raise SystemExit(f"seeds ran but their results could not be read: {unread}{kept}")


def read_experiment(name: str, pipeline: Pipeline) -> dict[str, Any]:
    """The ``reports/summary.json`` of the finished experiment ``name``, with helpfulness per question kind."""
    commit = exp_commit(name)
    summary = json.loads(_git("show", f"{commit}:{pipeline.path('reports/summary.json')}"))
    return add_helpfulness_by_kind(summary, read_at(commit), pipeline)


def add_helpfulness_by_kind(summary: dict[str, Any], read: Callable[[str], str], pipeline: Pipeline) -> dict[str, Any]:
    """``summary`` with each variant's helpfulness per question kind (``helpfulness_by_kind``). The evaluation writes
    it since 2026-12-05 (empty where the rows hold one kind); only for a run from before, which lacks the key, it is
    computed from the variant's ``eval/VARIANT/helpful.jsonl`` as ``read(path)`` returns it; a variant whose file
    cannot be read keeps none."""
    for name, v in summary["variants"].items():
        if "helpfulness_by_kind" in v:
            continue
        path = pipeline.path(f"eval/{name}/helpful.jsonl")
        try:
            text = read(path)
        except Exception as exc:  # noqa: BLE001 - DVC raises its own errors for a path it does not track
            print(f"[seeds] no helpfulness per kind for {name}: {path}: {exc}", flush=True)
            continue
        kinds = accuracy_by_kind([json.loads(line) for line in text.splitlines() if line.strip()])
        if kinds:
            v["helpfulness_by_kind"] = kinds
    return summary


def read_at(commit: str) -> Callable[[str], str]:
    """A reader of DVC-tracked files as the experiment at ``commit`` left them (its outputs are in DVC's cache)."""
    import dvc.api

    return lambda path: dvc.api.read(path, rev=commit)


def provenance(sets: tuple[str, ...] = ()) -> dict[str, Any]:
    """What a seed's result was run from: the commit, the sha256 of the workspace's params.yaml
    (``dvc exp run --queue`` runs the workspace's params, committed or not) and the overrides, if any."""
    here: dict[str, Any] = {"commit": _git("rev-parse", "HEAD").strip(), "params_sha256": sha256_file("params.yaml")}
    return {**here, "sets": list(sets)} if sets else here


def reusable(path: Path, here: dict[str, str]) -> dict[str, Any] | None:
    """A seed's kept result, when it was run from this commit and these params (an interrupted run resumes);
    None when there is none or it is another commit's (then the seed runs again, and says why)."""
    if not path.exists():
        return None
    kept = json.loads(path.read_text())
    if kept.get("provenance") == here:
        return kept
    print(f"[seeds] {path} was run from {kept.get('provenance')}, not {here}: running that seed again", flush=True)
    return None


def queue_status(names: set[str]) -> dict[str, str]:
    """DVC's status ("Queued", "Running", "Success", "Failed", ...) of the experiments ``names``."""
    from dvc.repo import Repo

    with Repo() as repo:
        return {t["name"]: t["status"] for t in repo.experiments.celery_queue.status() if t["name"] in names}


def supervise(names: set[str], start: Callable[[int], object], status_of: Callable[[set[str]], dict[str, str]], *,
              jobs: int = 1, timeout_s: float, poll_s: float = 5.0, max_poll_s: float = 60.0, idle_s: float = 60.0,
              on_success: Callable[[str], object] = lambda name: None) -> dict[str, str]:
    """Start ``jobs`` queue workers (``start(n)`` starts n) and wait until no experiment of ``names`` is
    queued or running; ``on_success(name)`` is called once for each experiment as soon as it has succeeded.

    DVC's workers sometimes exit, or never pick a task up, while experiments are still queued
    (treeverse/dvc#10562, #10829): when experiments stay queued with fewer than ``jobs`` running for
    ``idle_s``, the missing workers are started again (what those issues' users do by hand). Past
    ``timeout_s`` the wait ends with an error that shows every experiment's status. Polls start ``poll_s`` apart
    and grow with the time run, to at most ``max_poll_s``: each one opens the repository (about half a second
    of CPU), which every 5 s took 9% of a core from a 3-hour run's experiments.
    """
    start(jobs)
    begun = time.monotonic()
    idle_since: float | None = None
    succeeded: set[str] = set()
    while True:
        status = status_of(names)
        for name in sorted(n for n, v in status.items() if v == "Success" and n not in succeeded):
            on_success(name)
            succeeded.add(name)
        queued = [n for n, v in status.items() if v == "Queued"]
        running = [n for n, v in status.items() if v == "Running"]
        if len(status) == len(names) and not queued and not running:
            return status
        now = time.monotonic()
        missing = min(jobs - len(running), len(queued))
        idle_since = (idle_since or now) if missing > 0 else None
        if idle_since is not None and now - idle_since >= idle_s:
            print(f"[seeds] {sorted(queued)} queued with {len(running)} of {jobs} running for {idle_s:.0f} s: "
                  f"starting {missing} worker(s) again", flush=True)
            start(missing)
            idle_since = None
        if now - begun > timeout_s:
            raise SystemExit(f"seeds did not finish within {timeout_s:.0f} s: {status}; see `dvc queue status` and "
                             f"`dvc queue logs <name>`")
        time.sleep(min(max_poll_s, max(poll_s, (now - begun) / 30)))


def _print_logs(dvc: str, names: list[str], lines: int = 40) -> None:
    """The end of each experiment's log (``dvc queue logs``), so a failure shows its cause where it is reported."""
    for name in names:
        try:
            out = subprocess.run([dvc, "queue", "logs", name], capture_output=True, text=True, timeout=120)
            text = out.stdout + out.stderr
        except subprocess.TimeoutExpired:
            text = "(dvc queue logs did not answer within 120 s)"
        print(f"----- dvc queue logs {name} (last {lines} lines)", *text.splitlines()[-lines:], sep="\n", file=sys.stderr)


def forget(dvc: str, name: str) -> bool:
    """Remove an earlier, unfinished attempt at the experiment ``name`` (queued, failed, kept, or left running by
    a run that was stopped); True when there was one. No attempt is the usual case and is not reported: DVC calls
    it an error."""
    for _ in range(clear_stale(name)):
        _run(dvc, "queue", "kill", name)  # DVC finds the process gone and marks the attempt failed
    done = subprocess.run([dvc, "exp", "remove", name], capture_output=True, text=True, timeout=600)
    if done.returncode == 0:
        print(f"[seeds {time.strftime('%H:%M:%S')}] removed an earlier attempt at {name}", flush=True)
        return True
    if "is not a valid experiment name" not in done.stdout + done.stderr:
        raise SystemExit(f"dvc exp remove {name} failed:\n{done.stdout}{done.stderr}")
    return False


def clear_stale(name: str) -> int:
    """How many attempts at ``name`` DVC shows as running although their process is gone: a machine or session
    that stopped killed the queue's workers, and DVC still says "Running" with no worker active. Each one's
    process file is marked ended, so ``dvc queue kill`` marks it failed without signalling anything (its pid may
    belong to another process by now). An attempt whose process still runs stops ``make seeds``: a second run
    of the same experiment would race the first."""
    from dvc.repo import Repo

    with Repo() as repo:
        queue = repo.experiments.celery_queue
        stale = 0
        for entry in (e for e in queue.iter_active() if e.name == name):
            info = queue.proc.get(entry.stash_rev)
            if info is not None and info.returncode is None and live_dvc({"pid": info.pid}):
                raise SystemExit(f"{name} is running (process {info.pid}): wait for it (`dvc queue status`, "
                                 f"`dvc queue logs {name}`) or stop it (`dvc queue kill {name}`)")
            if info is not None and info.returncode is None:
                info.returncode = -1
                queue.proc[entry.stash_rev] = info
            pid = getattr(info, "pid", "?")
            print(f"[seeds] {name} was left running by a run that stopped (process {pid} is gone): marking it failed",
                  flush=True)
            stale += 1
    return stale


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    print(f"[seeds {time.strftime('%H:%M:%S')}] + dvc", " ".join(cmd[1:]), flush=True)
    return subprocess.run(list(cmd), check=check, timeout=600)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def exp_commit(name: str) -> str:
    """The commit of the experiment ``name`` (its ref ``refs/exps/../<name>``; the newest if several)."""
    refs = [line.split() for line in _git("for-each-ref", "--sort=-committerdate", "--format=%(refname) %(objectname)",
                                          "refs/exps").splitlines()]
    for ref, sha in refs:
        if ref.rsplit("/", 1)[-1] == name:
            return sha
    raise SystemExit(f"no DVC experiment named {name} (dvc exp list)")


def share_cores(jobs: int, environ: dict[str, str] | None = None, cpus: int | None = None) -> int:
    """Give each of ``jobs`` experiments at once its share of the cores as torch threads (``DERTA_THREADS``, read
    by derta.modeling.set_threads) unless the caller set it: ``jobs`` processes each using every core would
    oversubscribe them. Returns the threads per experiment."""
    environ = os.environ if environ is None else environ
    if not environ.get("DERTA_THREADS"):
        environ["DERTA_THREADS"] = str(max(1, (cpus or os.cpu_count() or 1) // max(1, jobs)))
    return int(environ["DERTA_THREADS"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2, help="experiments at once (dvc queue start --jobs)")
    p.add_argument("--profile", help="a profile's own pipeline (runs/NAME/dvc.yaml) instead of the root one")
    p.add_argument("--out", help="where the seeds' results go (default reports/seeds, or reports/NAME/seeds)")
    p.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait for the queued experiments")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a params override for every seed (dvc exp run -S; +KEY=VALUE adds a key params.yaml lacks), "
                        "e.g. --set eval.split=dev; needs --out")
    a = p.parse_args(argv)
    if a.set and not a.out:
        raise SystemExit("--set needs --out: the results of other settings must not replace the committed seeds")
    pipeline = Pipeline(a.profile, tuple(a.set))
    pipeline.check()
    out = Path(a.out or pipeline.path("reports/seeds"))
    out.mkdir(parents=True, exist_ok=True)
    dvc = str(Path(sys.executable).parent / "dvc")
    here = provenance(pipeline.sets)
    per_seed: dict[int, dict[str, Any]] = {}
    todo = []
    for s in a.seeds:
        kept = reusable(out / f"seed-{s}.json", here)
        if kept is not None:
            per_seed[s] = kept
        else:
            todo.append(s)
    if todo:
        jobs = min(a.jobs, len(todo))  # one seed left to run gets every core, not a share meant for --jobs
        threads = share_cores(jobs)
        print(f"[seeds] {jobs} experiment(s) at once, {threads} torch thread(s) each (DERTA_THREADS)", flush=True)

        def keep(seed: int, summary: dict[str, Any]) -> None:
            per_seed[seed] = {"provenance": here, **summary}
            write_json(out / f"seed-{seed}.json", per_seed[seed])
            print(f"[seeds {time.strftime('%H:%M:%S')}] seed {seed} done: {out / f'seed-{seed}.json'}", flush=True)

        queue_seeds(todo, jobs, dvc, a.timeout, pipeline=pipeline, keep=keep)
    agg = aggregate(dict(sorted(per_seed.items())))
    write_json(out / "summary.json", agg)
    write_text(out / "summary.md", markdown(agg))
    print(markdown(agg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
