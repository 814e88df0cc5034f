"""steps._common.entry: exit codes, and the process group of a launched rank torn down on success only."""

from __future__ import annotations

import pytest

from derta.errors import DataError
from steps._common import end_distributed, entry


@pytest.fixture
def group(tmp_path):
    """A one-rank gloo process group, as a launcher's rank has (torch.distributed started)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield dist
    if dist.is_initialized():
        dist.destroy_process_group()


def test_a_stage_that_succeeds_tears_down_its_process_group(group):
    entry(lambda: None)
    assert not group.is_initialized()


def test_a_failed_stage_leaves_the_group_alone_and_exits_2(group, capsys):
    def bad():
        raise DataError("data/x.jsonl", 3, "rule")

    with pytest.raises(SystemExit) as exc:
        entry(bad)
    assert exc.value.code == 2 and "data/x.jsonl:3: [rule]" in capsys.readouterr().err
    assert group.is_initialized()  # no barrier a failed rank could hang in


def test_end_distributed_without_a_group_is_a_no_op():
    end_distributed()
    end_distributed()
