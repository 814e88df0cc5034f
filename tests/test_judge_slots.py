"""The mini-world's slot vocabulary reaches the guideline judge: evaluate (from the source's manifest) and the
promotion gate's re-scoring (from params ``data``) build the same judge; the release gives none."""

import json

import pytest

from derta.errors import ConfigError
from derta.judges import get_judge
from derta.miniworld import data_slots, slot_vocabulary, source_slots


def _manifest(tmp_path, source, config):
    (tmp_path / "manifest.json").write_text(json.dumps({"source": source, "config": config}))
    return tmp_path


def test_source_slots_follow_the_manifest(tmp_path):
    assert source_slots(_manifest(tmp_path, "miniworld", {"household": False})) == slot_vocabulary()
    assert source_slots(_manifest(tmp_path, "miniworld", {"household": True})) == slot_vocabulary(household=True)
    assert source_slots(_manifest(tmp_path, "release", {})) == {}
    assert source_slots(tmp_path / "missing") == {}


def test_evaluate_gives_slots_to_judges_that_read_them(tmp_path):
    from steps.evaluate import _judge

    slots = source_slots(_manifest(tmp_path, "miniworld", {}))
    assert _judge("guideline", {}, "Sorry", slots).cfg.slots == slots
    assert _judge("guideline", {}, "Sorry", {}).cfg.slots == {}
    _judge("keyword", {}, "Sorry", slots)  # no slots field: nothing injected, no error
    with pytest.raises(ConfigError, match="come from the data source"):
        _judge("guideline", {"slots": {"x": "object:y"}}, "Sorry", slots)  # one place: the world, not params


@pytest.mark.parametrize("data", [{"source": "miniworld", "miniworld": {}}, {"source": "miniworld", "miniworld": {"household": True}},
                                  {"source": "release"}])
def test_gate_rebuilds_the_judge_evaluate_used(data):
    from steps.register import version_judges

    slots = data_slots(data)
    fp = get_judge("guideline", {"slots": slots} if slots else {}).fingerprint()
    params = {"profile": "", "data": data, "eval": {"judge": "guideline"}, "profiles": {}}
    assert version_judges({"direct": fp}, params, "")["direct"].fingerprint() == fp
