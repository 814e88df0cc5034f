"""`derta bench generate`: batched generation gives the same greedy outputs as one-by-one, and a JSON line."""

import argparse

from derta.bench import bench_generate


def test_bench_generate_small():
    res = bench_generate(argparse.Namespace(model="", prompts=6, max_new_tokens=6, batch_size=3))
    assert res["prompts"] == 6
    assert res["batched"]["tokens_per_s"] > 0 and res["one_by_one"]["tokens_per_s"] > 0
    # Left padding must not change greedy decoding.
    assert res["same_outputs"] == 6
