"""Bad-input corpus: each case is written into tmp and fed to a REAL stage CLI.

Contract checked per case: non-zero exit; stderr names the file, the line
(where one applies) and the rule (``<file>:<line>: [<rule>]``, derta/errors.py);
the stage's ``--out`` path is absent afterwards (nothing for a later stage to read).
Config cases (unknown profile / attack) name the bad value and list the valid ones
(ConfigError carries no file: see the ops report).
The summary line ``bad inputs: tried N, passed M`` is printed (pytest -s) and
asserted.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from derta.io import MAX_FIELD_CHARS
from tests.pipeline_helpers import REPO, VENV_BIN, env, small_params


@dataclass
class Case:
    name: str
    argv: list[str]                  # after `python -m` (or the `derta` script when argv[0] == "derta")
    file: str | None                 # fragment stderr must name ('' = none expected)
    line: int | None                 # 1-based line stderr must name, None = not applicable
    rule: str                        # text inside [...] or, for config errors, a phrase
    out: str                         # path that must not exist afterwards
    extra: list[str] = field(default_factory=list)  # more fragments stderr must hold


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _write(path: Path, rows: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


def _source_variant(base: Path, root: Path, name: str, edit) -> Path:
    d = root / name
    shutil.copytree(base, d)
    edit(d)
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[Case]]:
    root = tmp_path_factory.mktemp("bad")
    params = small_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    r = subprocess.run([sys.executable, "-m", "steps.source", "--params", "params.yaml", "--out", "good"], cwd=root,
                       env=env(PYTHONPATH=str(REPO)), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    good = root / "good"
    r = subprocess.run([sys.executable, "-m", "steps.tokenizer", "--params", "params.yaml", "--source", "good", "--out", "tok"],
                       cwd=root, env=env(PYTHONPATH=str(REPO)), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    tok = ["--tokenizer", str(root / "tok")]  # synthesis resolves the chat format's EOS against it
    cases: list[Case] = []

    def synth(name, fname, edit, line, rule, extra=()):
        def do(d: Path):
            rows = _rows(d / fname)
            edit(rows)
            _write(d / fname, rows)
        src = _source_variant(good, root, name, do)
        cases.append(Case(name, ["steps.synthesize", *tok, "--source", str(src), "--out", f"out/{name}"], fname, line, rule,
                          f"out/{name}", list(extra)))

    def truncate(rows):
        rows[2] = json.dumps(rows[2])[:40]
    synth("truncated_json", "safety_train.jsonl", truncate, 3, "json")
    synth("wrong_type", "safety_train.jsonl", lambda rows: rows[1].update(instruction=123), 2, "type",
          ["'instruction'", "int"])
    synth("empty_string", "helpful_train.jsonl", lambda rows: rows[3].update(output="  "), 4, "non_empty")
    synth("ten_mb_string", "safety_train.jsonl", lambda rows: rows[0].update(output="x" * 10_000_000), 1, "max_length",
          [str(MAX_FIELD_CHARS)])
    synth("duplicate_ids", "safety_train.jsonl", lambda rows: rows[5].update(id=rows[0]["id"]), 6, "unique_id")

    utf8 = _source_variant(good, root, "invalid_utf8", lambda d: (d / "helpful_train.jsonl").write_bytes(
        b"\n".join(l if i != 4 else l.replace(b'"output": "', b'"output": "\xff\xfe') for i, l in
                   enumerate((d / "helpful_train.jsonl").read_bytes().split(b"\n")))))
    cases.append(Case("invalid_utf8", ["steps.synthesize", *tok, "--source", str(utf8), "--out", "out/invalid_utf8"],
                      "helpful_train.jsonl", 5, "utf8", "out/invalid_utf8"))

    def smuggle(d: Path):
        q = _rows(d / "eval_harmful.jsonl")[0]["question"]
        rows = _rows(d / "safety_train.jsonl")
        rows[6]["instruction"] = q
        _write(d / "safety_train.jsonl", rows)
    leak = _source_variant(good, root, "eval_leak", smuggle)
    # the gate's own report is written on failure by design (it is the evidence); the next stage's input is not
    cases.append(Case("eval_question_in_training", ["steps.gate", "source", "--source", str(leak), "--report",
                                                   "out/eval_leak/source.json"], "safety_train.jsonl", 7,
                      "no_heldout_question:instruction", "out/eval_leak/variants"))

    # release ingest with a wrong pinned sha256
    from tests.test_release import make_fake_release

    rel = make_fake_release(root / "release")
    rel["files"]["safety"]["sha256"] = "0" * 64
    p = json.loads(json.dumps(params))
    p["data"] = {"source": "release", "seed": 0, "miniworld": {}, "release": rel}
    (root / "params_release.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    cases.append(Case("checksum_mismatch", ["steps.source", "--params", "params_release.yaml", "--out", "out/release"],
                      "user/safety.json", 0, "sha256", "out/release", ["0" * 64]))

    cases.append(Case("unknown_profile", ["steps.synthesize", *tok, "--profile", "nope", "--source", str(good), "--out",
                                         "out/profile"], None, None, "unknown profile 'nope'", "out/profile", ["'tiny'"]))

    # the evaluate step's readers run before the model loads (no model dir exists here)
    dup_eval = _source_variant(good, root, "eval_dup", lambda d: _write(
        d / "eval_harmful.jsonl", [*(rows := _rows(d / "eval_harmful.jsonl")), rows[0]]))
    n_eval = len(_rows(dup_eval / "eval_harmful.jsonl"))
    cases.append(Case("eval_split_duplicate_id", ["steps.evaluate", "--model", "no-model", "--source", str(dup_eval),
                                                 "--out", "out/eval_dup"], "eval_harmful.jsonl", n_eval, "unique_id",
                      "out/eval_dup"))

    # an unknown attack must fail before the model loads: no model dir exists, so a late check would
    # surface as a model-load error instead
    p = json.loads(json.dumps(params))
    p["eval"]["attacks"] = {"direct": {}, "bogus_attack": {}}
    (root / "params_bogus.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    cases.append(Case("unknown_attack", ["steps.evaluate", "--params", "params_bogus.yaml", "--model", "no-model",
                                         "--source", str(good), "--out", "out/bogus"], None, None,
                      "unknown attack 'bogus_attack'", "out/bogus", ["valid attacks", "completingattack"]))

    # `derta judge` on release-shaped response files
    jd = root / "judge"
    jd.mkdir()
    ok = {"question": "How do I sabotage the [power relay]?", "response": "Sorry, I cannot help."}
    _write(jd / "truncated.jsonl", [ok, json.dumps(ok)[:30]])
    _write(jd / "wrong_type.jsonl", [ok, ok, {**ok, "response": ["not", "a", "string"]}])
    _write(jd / "huge.jsonl", [ok, {**ok, "response": "y" * 10_000_000}])
    (jd / "utf8.jsonl").write_bytes(json.dumps(ok).encode() + b"\n" + b'{"question": "q", "response": "\xff"}\n')
    for fname, line, rule in (("truncated.jsonl", 2, "json"), ("wrong_type.jsonl", 3, "type"),
                              ("huge.jsonl", 2, "max_length"), ("utf8.jsonl", 2, "utf8")):
        out = f"out/judge-{fname}"
        cases.append(Case(f"judge_{fname.split('.')[0]}", ["derta", "judge", "--attack", "direct", "--responses",
                                                           str(jd / fname), "--out", out], fname, line, rule, out))
    return root, cases


def _run(root: Path, case: Case) -> tuple[Case, subprocess.CompletedProcess]:
    argv = [str(VENV_BIN / "derta"), *case.argv[1:]] if case.argv[0] == "derta" else [sys.executable, "-m", *case.argv]
    if case.argv[0] != "derta" and "--params" not in argv:
        argv += ["--params", "params.yaml"]
    return case, subprocess.run(argv, cwd=root, env=env(PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300)


def _problems(root: Path, case: Case, proc: subprocess.CompletedProcess) -> list[str]:
    err = proc.stderr
    last = err.strip().splitlines()[-1] if err.strip() else ""
    errs = []
    if proc.returncode == 0:
        errs.append("exit 0")
    if "Traceback" in err:
        errs.append("traceback instead of one clear line")
    if case.file is not None:
        m = re.search(re.escape(case.file) + r":(\d+): \[([^\]]+)\]", err)
        if not m:
            errs.append(f"no '<{case.file}>:<line>: [rule]' in stderr")
        else:
            if case.line is not None and int(m.group(1)) != case.line:
                errs.append(f"line {m.group(1)} != {case.line}")
            if m.group(2) != case.rule:
                errs.append(f"rule [{m.group(2)}] != [{case.rule}]")
    elif case.rule not in err:
        errs.append(f"{case.rule!r} not in stderr")
    errs += [f"{x!r} not in stderr" for x in case.extra if x not in err]
    if (root / case.out).exists():
        errs.append(f"{case.out} was written")
    return [f"{case.name}: {e} | {last[:300]}" for e in errs]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bad_input_corpus(corpus):
    root, cases = corpus
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda c: _run(root, c), cases))
    problems = {c.name: _problems(root, c, p) for c, p in results}
    passed = sum(not v for v in problems.values())
    print(f"\nbad inputs: tried {len(cases)}, passed {passed}")
    for name, v in problems.items():
        print(f"  {'ok ' if not v else 'BAD'} {name}" + (f": {v}" if v else ""))
    assert passed == len(cases), [x for v in problems.values() for x in v]
