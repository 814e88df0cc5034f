"""derta.release: the default pins (RELEASE_PINS) against the release's own bytes.

The release's small data files are copied unchanged in the project's shared folder
(``DERTA_RELEASE_COPY``, default /work/shared/release; its MANIFEST.md is the pins'
source). Tests that need those bytes skip when the copy is absent. The helpfulness
and safety files written here are content-free placeholders; nothing reaches the network.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import pytest
from test_release import UNPINNED, _jsonl, make_fake_release, serve

from derta.errors import DataError
from derta.release import (
    HELPFUL_PARTS,
    KNOWN_FILES,
    RELEASE_COMMIT,
    RELEASE_PINS,
    ReleaseConfig,
    _ingest_names,
    fetch,
    ingest,
)

NEWEST_COMMIT = "70bdb52b5e139f32f5a723b5f09d2b0befa81657"  # MANIFEST.md: 2024-10-21, the newest
COPY = Path(os.environ.get("DERTA_RELEASE_COPY", "/work/shared/release"))
needs_copy = pytest.mark.skipif(
    not (COPY / "data").is_dir(),
    reason=f"no copy of the release's data files at {COPY}/data (set DERTA_RELEASE_COPY to a folder holding them)",
)
BY_PATH = {k.path: name for name, k in KNOWN_FILES.items()}
DEFAULTS = ReleaseConfig().files


def copied_files() -> list[str]:
    """Release paths of the files in the shared copy."""
    return sorted(p.relative_to(COPY).as_posix() for p in (COPY / "data").rglob("*") if p.is_file())


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def copy_release(dest: Path) -> Path:
    """Writable copy of the shared release files under ``dest`` (same relative paths)."""
    for rel in copied_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(COPY / rel, dest / rel)
    return dest


def write_fake_training(root: Path) -> None:
    """Placeholder helpfulness parts (2 rows each, part 1's second row a refusal) and safety triples."""
    for i, name in enumerate(HELPFUL_PARTS):
        output = "I'm sorry, I cannot." if i == 1 else f"Placeholder answer {i}-1."
        _jsonl(root / KNOWN_FILES[name].path, [
            {"instruction": f"Placeholder task {i}-0.", "output": f"Placeholder answer {i}-0."},
            {"instruction": f"Placeholder task {i}-1.", "output": output},
        ])
    _jsonl(root / KNOWN_FILES["safety"].path, [
        {"instruction": f"[placeholder request {i}]", "output": "[placeholder harmful response]",
         "safe_response": "Sorry, I cannot help with that."}
        for i in range(3)
    ])


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# (a) ---------------------------------------------------------------------------


def test_default_pins_cover_every_file_at_the_newest_commit():
    assert RELEASE_COMMIT == NEWEST_COMMIT
    assert NEWEST_COMMIT in ReleaseConfig().base_url
    assert set(DEFAULTS) == set(KNOWN_FILES)
    assert {k.path for k in KNOWN_FILES.values()} == set(RELEASE_PINS)
    for name, entry in DEFAULTS.items():
        blob, sha256 = RELEASE_PINS[entry.path]
        assert entry.path == KNOWN_FILES[name].path
        assert (entry.git_blob, entry.sha256) == (blob, sha256)
        assert re.fullmatch(r"[0-9a-f]{40}", entry.git_blob), name
        assert sha256 == "" or re.fullmatch(r"[0-9a-f]{64}", sha256), name
    with_sha = {n for n, e in DEFAULTS.items() if e.sha256}
    assert with_sha == {n for n, k in KNOWN_FILES.items() if k.role in ("test", "extra")}
    assert [KNOWN_FILES[n].path for n in HELPFUL_PARTS] == [
        f"data/train/helpfulness_unsencor_wizardlm_60k_part_{i}.json" for i in range(6)
    ]
    assert KNOWN_FILES["safety"].path == "data/train/safety_beaver_safe_and_unsafe_response.json"
    assert KNOWN_FILES["malicious"].fields == ("prefix", "text")
    # The default config downloads without allow_unpinned: every ingested file is pinned.
    assert _ingest_names(ReleaseConfig()) == [n for n, k in KNOWN_FILES.items() if k.role != "extra"]


# (b) ---------------------------------------------------------------------------


@needs_copy
def test_shared_copy_matches_default_pins():
    present = copied_files()
    assert present, f"{COPY}/data holds no files"
    for rel in present:
        assert rel in BY_PATH, f"{rel} is in the release copy but has no default pin"
        data = (COPY / rel).read_bytes()
        entry = DEFAULTS[BY_PATH[rel]]
        assert git_blob(data) == entry.git_blob, rel
        assert hashlib.sha256(data).hexdigest() == entry.sha256, rel


# (c) ---------------------------------------------------------------------------


def test_fake_training_data_fails_the_default_git_blob(tmp_path):
    root = tmp_path / "release"
    write_fake_training(root)
    dest = tmp_path / "dl"
    cfg = ReleaseConfig.from_dict({"local_dir": str(root)})
    for name in ("helpful_0", "safety"):
        with pytest.raises(DataError) as ei:
            fetch(cfg, name, dest)
        path = root / KNOWN_FILES[name].path
        assert (ei.value.path, ei.value.line, ei.value.rule) == (str(path), 0, "git_blob")
        assert f"expected {DEFAULTS[name].git_blob} got {git_blob(path.read_bytes())}" in ei.value.detail
    assert list(dest.iterdir()) == []


@needs_copy
def test_tampered_local_copy_fails_git_blob_and_writes_nothing(tmp_path):
    root = copy_release(tmp_path / "release")
    write_fake_training(root)
    path = root / KNOWN_FILES["gsm8k"].path
    flip_one_byte(path)
    dest = tmp_path / "dl"
    cfgd = {"local_dir": str(root), "files": {n: dict(UNPINNED) for n in [*HELPFUL_PARTS, "safety"]}}
    with pytest.raises(DataError) as ei:
        fetch(ReleaseConfig.from_dict(cfgd), "gsm8k", dest)
    assert (ei.value.path, ei.value.line, ei.value.rule) == (str(path), 0, "git_blob")
    assert f"expected {DEFAULTS['gsm8k'].git_blob} got {git_blob(path.read_bytes())}" in str(ei.value)
    assert list(dest.iterdir()) == []
    out = tmp_path / "source"
    with pytest.raises(DataError, match=r"\[git_blob\]"):
        ingest(ReleaseConfig.from_dict(cfgd), out)
    assert not out.exists()


def test_sha256_pin_alone_is_checked(tmp_path):
    root = tmp_path / "release"
    cfgd = make_fake_release(root)
    cfgd["files"]["codeattack"] = {"sha256": "0" * 64}  # the default git_blob stays
    with pytest.raises(DataError, match=r"\[git_blob\]"):
        fetch(ReleaseConfig.from_dict(cfgd), "codeattack", tmp_path / "dl")
    cfgd["files"]["codeattack"]["git_blob"] = ""
    with pytest.raises(DataError, match=r"\[sha256\] expected 0{64} got [0-9a-f]{64}"):
        fetch(ReleaseConfig.from_dict(cfgd), "codeattack", tmp_path / "dl")


# (d) ---------------------------------------------------------------------------


@needs_copy
def test_download_with_default_pins(tmp_path):
    root = copy_release(tmp_path / "served")
    served = [BY_PATH[rel] for rel in copied_files()]
    dest = tmp_path / "dl"
    with serve(root) as (srv, url):
        cfg = ReleaseConfig.from_dict({"base_url": url, "timeout_s": 5, "backoff_s": 0.01})
        assert cfg.allow_unpinned is False
        for name in served:
            got = fetch(cfg, name, dest)
            assert got.read_bytes() == (root / KNOWN_FILES[name].path).read_bytes()
        assert sorted(srv.requests) == sorted("/" + KNOWN_FILES[n].path for n in served)

        before = sorted(p.name for p in dest.iterdir())
        flip_one_byte(root / KNOWN_FILES["mmlu"].path)
        (dest / "mmlu.json").unlink()
        with pytest.raises(DataError) as ei:
            fetch(cfg, "mmlu", dest)
        assert (ei.value.path, ei.value.rule) == (url + KNOWN_FILES["mmlu"].path, "git_blob")
        with pytest.raises(DataError, match=r"\[sha256\]"):  # the sha256 pin alone catches it too
            fetch(ReleaseConfig.from_dict({"base_url": url, "files": {"mmlu": {"git_blob": ""}}}), "mmlu", dest)
        assert sorted(p.name for p in dest.iterdir()) == [n for n in before if n != "mmlu.json"]


@needs_copy
def test_ingest_download_default_pins_with_local_training_files(tmp_path):
    root = copy_release(tmp_path / "served")
    train = tmp_path / "train"
    write_fake_training(train)
    files = {n: {"path": str(train / KNOWN_FILES[n].path), **UNPINNED} for n in [*HELPFUL_PARTS, "safety"]}
    with serve(root) as (_, url):
        m = ingest(ReleaseConfig.from_dict({"base_url": url, "files": files, "timeout_s": 5}), tmp_path / "out")
    assert m["inputs"]["gsm8k"] == {
        "location": url + KNOWN_FILES["gsm8k"].path, "git_blob": DEFAULTS["gsm8k"].git_blob,
        "sha256": DEFAULTS["gsm8k"].sha256, "pinned": True,
    }
    assert (m["files"]["eval_harmful"]["records"], m["files"]["dev_harmful"]["records"]) == (150, 50)


# (e) ---------------------------------------------------------------------------


@needs_copy
def test_ingest_local_release_folder(tmp_path):
    root = copy_release(tmp_path / "release")
    write_fake_training(root)
    cfgd = {"local_dir": str(root), "files": {n: dict(UNPINNED) for n in [*HELPFUL_PARTS, "safety"]}}
    out = tmp_path / "source"
    m = ingest(ReleaseConfig.from_dict(cfgd), out)

    counts = {k: v["records"] for k, v in m["files"].items()}
    assert counts["helpful_train"] == 11 and m["dropped"] == {"helpful_refusal": 1, "helpful_over_max": 0}
    assert counts["safety_train"] == 3 and counts["eval_helpful"] == 1000
    assert (counts["eval_harmful"], counts["dev_harmful"], counts["dev_helpful"]) == (150, 50, 0)  # dev_size 50
    assert {b: counts[f"benchmarks/{b}"] for b in ("alpacaeval", "gsm8k", "mmlu", "codeattack")} == {
        "alpacaeval": 300, "gsm8k": 500, "mmlu": 500, "codeattack": 200,
    }
    for name, info in m["inputs"].items():
        pinned = name not in HELPFUL_PARTS and name != "safety"
        assert info["pinned"] is pinned, name
        if pinned:
            assert (info["git_blob"], info["sha256"]) == (DEFAULTS[name].git_blob, DEFAULTS[name].sha256)
    assert "malicious" not in m["inputs"] and "example" not in m["inputs"]

    lines = (out / "helpful_train.jsonl").read_text(encoding="utf-8").splitlines()
    ids = [line.split('"id": "')[1].split('"')[0] for line in lines]
    assert ids[:4] == ["release-helpful-00000", "release-helpful-00001", "release-helpful-00002",
                       "release-helpful-00004"]  # parts concatenated in order; part 1's refusal (index 3) dropped
    assert "Placeholder task 5-1." in lines[-1]
