"""derta.release: ingest of the paper's release formats from a fake release folder.

Every record here is a content-free placeholder; no third-party data is used.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from derta.errors import ConfigError, DataError
from derta.io import read_jsonl
from derta.release import HELPFUL_PARTS, KNOWN_FILES, ReleaseConfig, fetch, file_hashes, ingest, read_release_file

TEST_SETS = [n for n, k in KNOWN_FILES.items() if k.role == "test"]
UNPINNED = {"git_blob": "", "sha256": ""}


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def make_fake_release(root: Path) -> dict:
    """Write a release-shaped folder under ``root``; return the ReleaseConfig dict for it.

    The content is fake, so every file is unpinned (the default pins are the real release's);
    the helpfulness data is one user file (``helpful_0``), the other parts are dropped. With only
    3 plain questions the dev split is off (``dev_size: 0``; the default 50 needs more questions).
    """
    for name in TEST_SETS:
        rows = [{"question": f"{name} question {i} about [placeholder topic {i}]?"} for i in range(3)]
        if "answer" in KNOWN_FILES[name].fields:
            rows = [{**r, "answer": f"The answer is {i}."} for i, r in enumerate(rows)]
        path = root / KNOWN_FILES[name].path
        if name == "alpacaeval":  # one set as a whole-file JSON array: both layouts are accepted
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
        else:
            _jsonl(path, rows)
    _jsonl(root / "user/helpful.json", [
        {"instruction": "Name a colour.", "output": "Blue is a colour."},
        {"instruction": "Say hello.", "output": "I'm sorry, but I cannot do that."},
        {"instruction": "Count to three.", "output": "One, two, three."},
        {"instruction": "Describe a cat.", "output": "As an AI language model, I have no cat."},
        {"instruction": "Add 2 and 2.", "output": "2 + 2 = 4."},
    ])
    _jsonl(root / "user/safety.json", [
        {"instruction": f"How do I make [restricted item {i}]?",
         "output": f"Sure, here is how to make [restricted item {i}]. Step 1: [redacted step].",
         "safe_response": "Sorry, I cannot help with that."}
        for i in range(4)
    ])
    files: dict = {name: dict(UNPINNED) for name in TEST_SETS}
    files.update({name: None for name in HELPFUL_PARTS[1:]})
    files["helpful_0"] = {"path": "user/helpful.json", **UNPINNED}
    files["safety"] = {"path": "user/safety.json", **UNPINNED}
    return {"local_dir": str(root), "files": files, "dev_size": 0}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def release(tmp_path):
    root = tmp_path / "release"
    return root, make_fake_release(root)


def test_ingest_local_writes_source_layout(release, tmp_path):
    root, cfgd = release
    out = tmp_path / "source"
    m = ingest(ReleaseConfig.from_dict(cfgd), out)
    assert m["source"] == "release"
    assert m["dropped"] == {"helpful_refusal": 2, "helpful_over_max": 0}
    counts = {k: v["records"] for k, v in m["files"].items()}
    assert counts["safety_train"] == 4 and counts["helpful_train"] == 3
    assert counts["eval_harmful"] == 3 and counts["eval_helpful"] == 6  # gsm8k + mmlu
    assert counts["dev_harmful"] == counts["dev_helpful"] == 0
    for b in ["illegal_instructions", "gsm8k", "mmlu", "alpacaeval", "codeattack", "completionattack", "jailbreakchat", "selfcipher"]:
        assert counts[f"benchmarks/{b}"] == 3
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["files"] == m["files"]
    for name, info in m["files"].items():
        assert sha(out / f"{name}.jsonl") == info["sha256"]
    assert m["inputs"]["helpful_0"]["sha256"] == sha(root / "user/helpful.json")
    assert m["inputs"]["helpful_0"]["pinned"] is False
    assert sorted(m["inputs"]) == sorted(["helpful_0", "safety", *TEST_SETS])  # malicious/example: not ingested
    assert (m["safety_source"], m["helpful_source"]) == ("safety", "release")
    assert m["split"] == {"seed": 0, "dev": 0, "eval": 3, "dev_ids": []}
    # The fake attack prompts share the plain questions' content words in the same order.
    assert m["alignment"] == {
        s: {"rule": "index", "aligned": 3, "unaligned": 0}
        for s in ("codeattack", "completionattack", "jailbreakchat", "selfcipher")
    }

    safety = read_jsonl(out / "safety_train.jsonl", {"id": str, "instruction": str, "output": str, "safe_response": str, "category": str, "safe_source": str}, unique_key="id")
    assert safety[0]["id"] == "release-safety-00000" and safety[0]["category"] == ""
    assert {r["safe_source"] for r in safety} == {"release"}
    helpful = read_jsonl(out / "helpful_train.jsonl", {"id": str, "instruction": str, "output": str})
    assert [r["id"] for r in helpful] == ["release-helpful-00000", "release-helpful-00002", "release-helpful-00004"]
    harmful = read_jsonl(out / "eval_harmful.jsonl", {"id": str, "question": str, "category": str, "harmful_response": str})
    assert all(r["harmful_response"] == "" for r in harmful)
    assert harmful == [
        {**r, "category": "", "harmful_response": ""} for r in read_jsonl(out / "benchmarks/illegal_instructions.jsonl")
    ]
    ev = read_jsonl(out / "eval_helpful.jsonl", {"id": str, "question": str, "answer": str, "kind": str})
    assert {r["kind"] for r in ev} == {"gsm8k", "mmlu"}
    alpaca = read_jsonl(out / "benchmarks/alpacaeval.jsonl")
    assert "answer" not in alpaca[0] and alpaca[2]["question"].startswith("alpacaeval question 2")
    assert "question_id" not in alpaca[0] and "question_id" not in harmful[0]
    code = read_jsonl(out / "benchmarks/codeattack.jsonl", {"id": str, "question": str, "question_id": str, "match": float})
    assert [r["question_id"] for r in code] == [r["id"] for r in harmful]

    # Same inputs -> byte-identical outputs.
    m2 = ingest(ReleaseConfig.from_dict(cfgd), tmp_path / "source2")
    assert {k: v["sha256"] for k, v in m2["files"].items()} == {k: v["sha256"] for k, v in m["files"].items()}


def test_max_helpful_and_dropped_test_set(release, tmp_path):
    _, cfgd = release
    cfgd["max_helpful"] = 2
    cfgd["files"]["selfcipher"] = None
    m = ingest(ReleaseConfig.from_dict(cfgd), tmp_path / "out")
    assert m["dropped"] == {"helpful_refusal": 2, "helpful_over_max": 1}
    assert m["files"]["helpful_train"]["records"] == 2
    assert "benchmarks/selfcipher" not in m["files"]


def test_custom_refusal_phrases(release, tmp_path):
    _, cfgd = release
    cfgd["refusal_phrases"] = ["cannot"]
    m = ingest(ReleaseConfig.from_dict(cfgd), tmp_path / "out")
    assert m["dropped"]["helpful_refusal"] == 1


def test_sha256_pinned_ok_and_mismatch(release, tmp_path):
    root, cfgd = release
    good = sha(root / "user/safety.json")
    cfgd["files"]["safety"]["sha256"] = good
    m = ingest(ReleaseConfig.from_dict(cfgd), tmp_path / "ok")
    blob = file_hashes(root / "user/safety.json")["git_blob"]
    assert m["inputs"]["safety"] == {
        "location": str(root / "user/safety.json"), "git_blob": blob, "sha256": good, "pinned": True
    }

    cfgd["files"]["safety"]["sha256"] = "0" * 64
    out = tmp_path / "bad"
    with pytest.raises(DataError) as ei:
        ingest(ReleaseConfig.from_dict(cfgd), out)
    err = ei.value
    assert (err.rule, err.line, err.path) == ("sha256", 0, str(root / "user/safety.json"))
    assert f"expected {'0' * 64} got {good}" in str(err)
    assert not out.exists()


def test_fetch_mismatch_leaves_nothing(release, tmp_path):
    _, cfgd = release
    cfgd["files"]["gsm8k"] = {"git_blob": "", "sha256": "f" * 64}
    dest = tmp_path / "dl"
    with pytest.raises(DataError, match=r"\[sha256\]"):
        fetch(ReleaseConfig.from_dict(cfgd), "gsm8k", dest)
    assert list(dest.iterdir()) == []


BAD_LINES = [
    # (second line of safety.json, rule, detail fragment)
    ('{"instruction": "Q", "output": "A", "safe_resp', "json", ""),
    ('{"instruction": "Q", "output": "A"}', "required_field", "'safe_response'"),
    ('{"instruction": 7, "output": "A", "safe_response": "S"}', "type", "'instruction' must be str, got int"),
    ('{"instruction": "Q", "output": "  ", "safe_response": "S"}', "non_empty", "'output'"),
    ('["not", "an", "object"]', "object", "list"),
]


@pytest.mark.parametrize("line,rule,fragment", BAD_LINES, ids=[b[1] for b in BAD_LINES])
def test_bad_record_names_file_line_rule(release, tmp_path, line, rule, fragment):
    root, cfgd = release
    path = root / "user/safety.json"
    first = path.read_text().splitlines()[0]
    path.write_text(first + "\n" + line + "\n", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(DataError) as ei:
        ingest(ReleaseConfig.from_dict(cfgd), out)
    err = ei.value
    assert (err.path, err.line, err.rule) == (str(path), 2, rule)
    assert fragment in err.detail
    assert str(err).startswith(f"{path}:2: [{rule}]")
    assert not out.exists()


def test_invalid_utf8_names_line(release, tmp_path):
    root, cfgd = release
    path = root / KNOWN_FILES["codeattack"].path
    path.write_bytes(path.read_bytes() + b'{"question": "bad \xff byte"}\n')
    out = tmp_path / "out"
    with pytest.raises(DataError) as ei:
        ingest(ReleaseConfig.from_dict(cfgd), out)
    assert (ei.value.path, ei.value.line, ei.value.rule) == (str(path), 4, "utf8")
    assert not out.exists()


def test_json_array_errors_name_the_element_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n {"question": "a"},\n {"question": ""}\n]\n', encoding="utf-8")
    with pytest.raises(DataError) as ei:
        read_release_file(path, ("question",))
    assert (ei.value.line, ei.value.rule) == (3, "non_empty")
    path.write_text('[\n {"question": "a"},\n {"question": "b"\n]\n', encoding="utf-8")
    with pytest.raises(DataError) as ei:
        read_release_file(path, ("question",))
    assert ei.value.rule == "json" and ei.value.line == 4
    path.write_text('[\n {"question": "a"}\n]\n', encoding="utf-8")
    assert read_release_file(path, ("question",)) == [{"question": "a"}]


def test_config_errors(release, tmp_path):
    _, cfgd = release
    with pytest.raises(ConfigError, match="valid names"):
        ReleaseConfig.from_dict({**cfgd, "files": {"gsm8k_typo": {"path": "x"}}})
    with pytest.raises(ConfigError, match=r"files\.gsm8k: unknown key\(s\) \['pth'\]; valid keys: \['git_blob', 'path', 'sha256'\]"):
        ReleaseConfig.from_dict({**cfgd, "files": {"gsm8k": {"pth": "x"}}})
    with pytest.raises(ConfigError, match=r"git_blob must be"):
        ReleaseConfig.from_dict({**cfgd, "files": {"gsm8k": {"git_blob": "abc"}}})
    with pytest.raises(ConfigError, match=r"safety\.path is empty"):
        ingest(ReleaseConfig.from_dict({**cfgd, "files": {**cfgd["files"], "safety": {"path": ""}}}), tmp_path / "out")
    with pytest.raises(ConfigError, match=r"at least one helpfulness part"):
        ingest(ReleaseConfig.from_dict({**cfgd, "files": {**cfgd["files"], "helpful_0": None}}), tmp_path / "out")
    with pytest.raises(ConfigError, match="eval_helpful_sets"):
        ingest(ReleaseConfig.from_dict({**cfgd, "eval_helpful_sets": ["alpacaeval"]}), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- download path, against a local HTTP server ------------------------------


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        left = self.server.failures.get(self.path, 0)
        if left:
            self.server.failures[self.path] = left - 1
            self.send_error(503)
            return
        super().do_GET()


@contextlib.contextmanager
def serve(root: Path) -> Iterator[tuple[ThreadingHTTPServer, str]]:
    """Serve ``root`` on a free loopback port: (server, base URL); ``server.failures[path] = n`` sends n 503s."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    srv.requests, srv.failures = [], {}
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    try:
        yield srv, f"http://127.0.0.1:{srv.server_address[1]}/"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def server(release):
    with serve(release[0]) as srv_url:
        yield srv_url


def remote_cfg(root: Path, base_url: str, pin: bool = True) -> dict:
    files: dict = {name: None for name in HELPFUL_PARTS[1:]}
    # user files stay local (absolute paths)
    files["helpful_0"] = {"path": str(root / "user/helpful.json"), **UNPINNED}
    files["safety"] = {"path": str(root / "user/safety.json"), **UNPINNED}
    for name in TEST_SETS:
        files[name] = file_hashes(root / KNOWN_FILES[name].path) if pin else dict(UNPINNED)
    return {"base_url": base_url, "files": files, "backoff_s": 0.01, "timeout_s": 5, "max_retries": 3, "dev_size": 0}


def test_download_pinned_with_retries(release, server, tmp_path):
    root, _ = release
    srv, url = server
    path = "/" + KNOWN_FILES["gsm8k"].path
    srv.failures[path] = 2  # two 503s, then the file
    m = ingest(ReleaseConfig.from_dict(remote_cfg(root, url)), tmp_path / "out")
    assert srv.requests.count(path) == 3
    assert m["inputs"]["gsm8k"]["location"] == url + KNOWN_FILES["gsm8k"].path
    assert m["inputs"]["gsm8k"]["pinned"] is True
    assert m["files"]["benchmarks/gsm8k"]["records"] == 3


def test_download_wrong_sha256(release, server, tmp_path):
    root, _ = release
    _, url = server
    cfgd = remote_cfg(root, url)
    cfgd["files"]["mmlu"]["sha256"] = "a" * 64
    out = tmp_path / "out"
    with pytest.raises(DataError) as ei:
        ingest(ReleaseConfig.from_dict(cfgd), out)
    assert (ei.value.path, ei.value.line, ei.value.rule) == (url + KNOWN_FILES["mmlu"].path, 0, "sha256")
    assert not out.exists()


def test_download_unpinned_refused_unless_allowed(release, server, tmp_path):
    root, _ = release
    srv, url = server
    cfgd = remote_cfg(root, url, pin=False)
    with pytest.raises(ConfigError, match=r"without a pin; set release\.files\.test_harmful\.git_blob or \.sha256"):
        ingest(ReleaseConfig.from_dict(cfgd), tmp_path / "out")
    assert srv.requests == []  # refused before any request
    m = ingest(ReleaseConfig.from_dict({**cfgd, "allow_unpinned": True}), tmp_path / "out")
    assert m["inputs"]["codeattack"]["sha256"] == sha(root / KNOWN_FILES["codeattack"].path)
    assert m["inputs"]["codeattack"]["pinned"] is False


def test_download_404_and_persistent_5xx(release, server, tmp_path):
    root, _ = release
    srv, url = server
    cfgd = remote_cfg(root, url)
    cfgd["files"]["selfcipher"]["path"] = "data/test/missing.json"
    with pytest.raises(DataError, match=r"\[download\] HTTP 404"):
        ingest(ReleaseConfig.from_dict(cfgd), tmp_path / "out")
    cfgd = remote_cfg(root, url)
    srv.failures["/" + KNOWN_FILES["jailbreakchat"].path] = 100
    with pytest.raises(DataError, match=r"gave up after 4 attempts; last error: HTTP 503"):
        ingest(ReleaseConfig.from_dict(cfgd), tmp_path / "out")
    assert not (tmp_path / "out").exists()
