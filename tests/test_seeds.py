"""Multi-seed aggregation: mean and population std per figure, in the markdown table."""

from steps.seeds import aggregate, markdown


def _summary(asr, helpful, at0):
    return {"variants": {"derta": {"asr": {"completingattack": asr}, "helpfulness": {"miniworld": helpful},
                                   "refusal_position": {"share_at_0": at0, "share_after_30": None}}}}


def test_aggregate_mean_and_spread():
    agg = aggregate({0: _summary(10.0, 5.0, 50.0), 1: _summary(20.0, 7.0, 40.0), 2: _summary(30.0, 6.0, 45.0)})
    row = agg["variants"]["derta"]
    assert row["asr.completingattack"]["mean"] == 20.0
    assert row["asr.completingattack"]["std"] == 8.16  # pstdev(10, 20, 30)
    assert row["helpfulness.miniworld"]["values"] == [5.0, 7.0, 6.0]
    assert "refusal_position.share_after_30" not in row  # None values are skipped
    assert "20.0 ± 8.2" in markdown(agg)
