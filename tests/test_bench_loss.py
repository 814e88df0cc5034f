"""derta bench loss at a small size: the JSON line's keys and values."""

from __future__ import annotations

import argparse
import json
import math

from derta.bench import add_bench_parser, bench_loss, main, register_bench

SMALL = ["bench", "loss", "--vocab", "2000", "--seq", "64", "--repeats", "1", "--chunk-size", "50"]


def _parse(argv):
    parser = argparse.ArgumentParser(prog="derta")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_bench_loss_small_keys_and_values():
    result = bench_loss(_parse(SMALL))
    json.dumps(result)
    assert (result["vocab"], result["hidden"], result["tokens"]) == (2000, 256, 4 * 64)
    assert 0 < result["target_tokens"] < result["tokens"]
    for variant in ("naive", "plain", "derta"):
        for key in ("time_s", "peak_mb"):
            value = result[variant][key]
            assert math.isfinite(value) and value > 0, (variant, key, value)
    for key in ("mem_ratio_vs_naive", "time_ratio_vs_naive", "time_ratio_vs_plain"):
        assert math.isfinite(result[key]) and result[key] > 0, key


def test_main_prints_one_json_line(capsys):
    assert main(SMALL + ["--only", "plain,derta"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert set(result) >= {"plain", "derta", "time_ratio_vs_plain"}
    assert "naive" not in result and result["mem_ratio_vs_naive"] is None


def test_register_bench_adds_a_sub_subcommand_even_after_the_parser_is_built():
    parser = argparse.ArgumentParser(prog="derta")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    register_bench(
        "_test_echo",
        lambda p: p.add_argument("--n", type=int, default=1),
        lambda args: {"n": args.n},
        help="test only",
    )
    try:
        args = parser.parse_args(["bench", "_test_echo", "--n", "5"])
        assert args.bench_run(args) == {"n": 5}
    finally:
        from derta import bench

        bench._BENCHES.pop("_test_echo")
