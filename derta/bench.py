"""``derta bench <name>``: micro-benchmarks that print one JSON line.

Extension point: a benchmark is a name, a function that adds its flags to an
argparse parser, and ``run(args) -> dict`` (JSON-serialisable). Register it
with :func:`register_bench`; :func:`add_bench_parser` puts every registered
benchmark under ``bench`` (a benchmark registered after the parser was built
is added to it too). The chosen sub-subcommand's ``args.func(args)`` runs the
benchmark, prints its dict as one JSON line on stdout and returns 0.

``derta bench loss``: the DeRTa loss at LLaMA3's vocabulary, see
:func:`bench_loss`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import ctypes
import gc
import json
import os
import statistics
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# torch and derta.loss are imported inside the benchmark so that building the
# CLI parser stays light (CONVENTIONS 12).

__all__ = ["add_bench_parser", "bench_loss", "main", "register_bench"]


@dataclass(frozen=True)
class _Bench:
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict]
    help: str


_BENCHES: dict[str, _Bench] = {}
# argparse sub-parser actions built by add_bench_parser, for late registration
_LIVE_SUBPARSERS: weakref.WeakSet = weakref.WeakSet()


def _print_result(run: Callable[[argparse.Namespace], dict]) -> Callable[[argparse.Namespace], int]:
    def func(args: argparse.Namespace) -> int:
        print(json.dumps(run(args)), flush=True)
        return 0

    return func


def _add_to(sub: Any, name: str, bench: _Bench) -> None:
    p = sub.add_parser(name, help=bench.help, description=bench.help)
    bench.add_args(p)
    p.set_defaults(func=_print_result(bench.run), bench_run=bench.run)


def register_bench(
    name: str,
    add_args: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], dict],
    help: str = "",
) -> None:
    """Register ``derta bench <name>``; ``run(args)`` returns the JSON dict."""
    if name in _BENCHES:
        raise ValueError(f"benchmark {name!r} already registered; known: {sorted(_BENCHES)}")
    _BENCHES[name] = _Bench(add_args, run, help)
    for sub in _LIVE_SUBPARSERS:
        _add_to(sub, name, _BENCHES[name])


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench`` with one sub-subcommand per registered benchmark."""
    parser = subparsers.add_parser(
        "bench", help="micro-benchmarks; each prints one JSON line",
        description="Micro-benchmarks; each prints one JSON line.",
    )
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    _LIVE_SUBPARSERS.add(sub)
    for name, bench in _BENCHES.items():
        _add_to(sub, name, bench)
    return parser


# --------------------------------------------------------------------------
# bench loss


class _PeakRSS:
    """Peak resident set size (bytes) while the context is open.

    One process cannot reset ``ru_maxrss``, so a daemon thread samples
    ``/proc/self/statm`` (resident pages) every ``interval`` seconds; torch
    kernels release the GIL, so it keeps sampling during long ops. An
    allocation that lives shorter than the interval can be missed.
    """

    _PAGE = os.sysconf("SC_PAGE_SIZE")

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @classmethod
    def rss(cls) -> int:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * cls._PAGE

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> _PeakRSS:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def _release_memory() -> None:
    """Return freed heap to the OS (glibc), so each variant starts level."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _loss_batch(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Seeded synthetic batch: hidden (B,T,H), LM head (V,H), labels (B,T).

    Each row's first ~``prompt_frac`` positions (jittered per row) are prompt
    (IGNORE_INDEX), the rest response; the first half of the rows are RTO.
    """
    import torch

    from derta.loss import IGNORE_INDEX

    g = torch.Generator().manual_seed(args.seed)
    b, t, h, v = args.batch, args.seq, args.hidden, args.vocab
    hidden = torch.randn(b, t, h, generator=g).requires_grad_(True)
    weight = (torch.randn(v, h, generator=g) * h**-0.5).requires_grad_(True)
    labels = torch.randint(0, v, (b, t), generator=g)
    jitter = torch.randint(-t // 20, t // 20 + 1, (b,), generator=g)
    prompt_len = (int(args.prompt_frac * t) + jitter).clamp(1, t - 1)
    labels[torch.arange(t)[None, :] < prompt_len[:, None]] = IGNORE_INDEX
    is_rto = torch.arange(b) < b // 2
    return {"hidden": hidden, "weight": weight, "labels": labels, "is_rto": is_rto}


def _measure(step: Callable[[], None], tensors: list[torch.Tensor]) -> tuple[float, float, int]:
    """One step: (wall seconds, process CPU seconds, peak RSS increase in bytes)."""
    for x in tensors:
        x.grad = None
    _release_memory()
    with _PeakRSS() as mem:
        base = _PeakRSS.rss()
        c0, t0 = time.process_time(), time.perf_counter()
        step()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
    for x in tensors:
        x.grad = None
    return dt, dc, mem.peak - base


def _run_interleaved(
    steps: dict[str, Callable[[], None]], tensors: list[torch.Tensor], repeats: int
) -> dict[str, dict]:
    """One warm-up round, then ``repeats`` rounds; each round runs every variant once.

    Rounds interleave the variants so that load from other processes on a
    shared machine hits them alike. Per variant: median wall time, median
    process CPU time, largest peak RSS increase over the timed rounds.
    """
    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in steps}
    for rnd in range(repeats + 1):
        for name, step in steps.items():
            sample = _measure(step, tensors)
            if rnd:  # round 0 is the warm-up
                samples[name].append(sample)
    return {
        name: {
            "time_s": round(statistics.median(x[0] for x in got), 4),
            "cpu_s": round(statistics.median(x[1] for x in got), 4),
            "peak_mb": round(max(x[2] for x in got) / 2**20, 1),
        }
        for name, got in samples.items()
    }


def bench_loss(args: argparse.Namespace) -> dict:
    """Time and peak memory of forward + backward of the loss from hidden states.

    One process, one seeded batch (hidden (B,T,H) and LM head (V,H), fp32,
    both requiring grad), three variants run in turn:
      naive: full logits ``hidden @ W.T`` + :func:`release_reference_loss`
             (the release's per-sample relabel loop), half the rows RTO;
      plain: chunked :func:`derta_loss` on the batch with no RTO rows (SFT);
      derta: :func:`rto_labels` (keep ``--keep-ratio``) + chunked
             :func:`derta_loss`, half the rows RTO.
    Variants run interleaved: one warm-up round, then ``--repeats`` rounds of
    naive, plain, derta. time_s: median wall time of the timed steps (cpu_s:
    median process CPU time, less sensitive to other load on the machine).
    peak_mb: the largest increase of RSS over the RSS right before the step
    (sampled every 5 ms by a thread, after ``gc`` and ``malloc_trim``) over
    the timed steps; it includes the gradients the step allocates (W.grad,
    hidden.grad) but not the inputs. Ratios are derta / naive and derta / plain.
    """
    import torch

    from derta.loss import IGNORE_INDEX

    torch.set_num_threads(args.threads)
    batch = _loss_batch(args)
    if not 0 <= args.refusal_id < args.vocab:
        raise ValueError(f"--refusal-id {args.refusal_id} not in [0, vocab={args.vocab})")
    variants = _loss_steps(args, batch)
    only = args.only.split(",") if args.only else list(variants)
    unknown = sorted(set(only) - set(variants))
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; valid: {sorted(variants)}")
    out: dict[str, Any] = {
        "vocab": args.vocab,
        "hidden": args.hidden,
        "batch": args.batch,
        "seq": args.seq,
        "tokens": args.batch * args.seq,
        "target_tokens": int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()),
        "chunk_size": args.chunk_size,
        "keep_ratio": args.keep_ratio,
        "threads": args.threads,
        "repeats": args.repeats,
    }
    out.update(_run_interleaved({k: variants[k] for k in only}, [batch["hidden"], batch["weight"]], args.repeats))
    return _with_ratios(out)


def _loss_steps(args: argparse.Namespace, batch: dict[str, Any]) -> dict[str, Callable[[], None]]:
    """The three forward + backward steps bench_loss times, on one batch."""
    import torch

    from derta.loss import derta_loss, release_reference_loss, rto_labels

    hidden, weight, labels, is_rto = batch["hidden"], batch["weight"], batch["labels"], batch["is_rto"]
    no_rto = torch.zeros_like(is_rto)
    gen = torch.Generator().manual_seed(args.seed + 1)

    def naive() -> None:
        logits = hidden @ weight.T
        release_reference_loss(logits, labels, is_rto, args.refusal_id).backward()

    def plain() -> None:
        derta_loss(hidden, labels, no_rto, lm_head_weight=weight, chunk_size=args.chunk_size).loss.backward()

    def derta() -> None:
        rto = rto_labels(labels, is_rto, args.refusal_id, args.keep_ratio, generator=gen)
        derta_loss(hidden, rto, is_rto, lm_head_weight=weight, chunk_size=args.chunk_size).loss.backward()

    return {"naive": naive, "plain": plain, "derta": derta}


def _with_ratios(out: dict[str, Any]) -> dict[str, Any]:
    """derta / naive memory and time, derta / plain time (None where a variant did not run)."""
    def ratio(a: str, b: str, key: str) -> float | None:
        if a in out and b in out and out[b][key] > 0:
            return round(out[a][key] / out[b][key], 4)
        return None

    out["mem_ratio_vs_naive"] = ratio("derta", "naive", "peak_mb")
    out["time_ratio_vs_naive"] = ratio("derta", "naive", "time_s")
    out["time_ratio_vs_plain"] = ratio("derta", "plain", "time_s")
    return out


def _add_loss_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vocab", type=int, default=128256, help="LM-head rows V (LLaMA3: 128256)")
    p.add_argument("--hidden", type=int, default=256, help="hidden size H")
    p.add_argument("--batch", type=int, default=4, help="batch size B (first half RTO)")
    p.add_argument("--seq", type=int, default=1024, help="sequence length T")
    p.add_argument("--chunk-size", type=int, default=1024, help="rows per LM-head chunk")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per variant after a warm-up")
    p.add_argument("--keep-ratio", type=float, default=1.0, help="RTO keep ratio of the derta variant")
    p.add_argument("--prompt-frac", type=float, default=0.3, help="share of each row that is prompt")
    p.add_argument("--refusal-id", type=int, default=1, help="synthetic refusal target id (< vocab)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic batch")
    p.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)),
        help="torch intra-op threads (default: CPUs available to this process)",
    )
    p.add_argument("--only", default="", help="comma-separated subset of naive,plain,derta")


register_bench(
    "loss",
    _add_loss_args,
    bench_loss,
    help="DeRTa loss from hidden states: naive release loss vs chunked SFT vs chunked DeRTa",
)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``python -m derta.bench bench loss [flags]``."""
    parser = argparse.ArgumentParser(prog="derta")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())


# --- derta bench generate ------------------------------------------------------

def _add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="", help="model dir with model/ (default: a tiny Llama built from config)")
    p.add_argument("--prompts", type=int, default=64, help="number of prompts")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=32)


def bench_generate(args: argparse.Namespace) -> dict:
    """Tokens/s of batched greedy generation (left padding, length-sorted) vs one prompt at a time."""
    import time

    import torch

    from derta.generate import GenerationConfig, HFTarget
    from derta.miniworld import MiniWorldConfig, generate

    torch.manual_seed(0)
    world = generate(MiniWorldConfig(n_safety_train=10, n_helpful_train=10, n_eval_harmful=args.prompts, n_eval_helpful=5,
                                     n_dev_harmful=5, n_dev_helpful=5, web_harmful_docs=200, web_chatter_docs=50,
                                     web_faq_docs=100, n_entities=30))
    texts = [f"[INST] {r['question']} [\\INST]" for r in world["eval_harmful"]][: args.prompts]
    if args.model:
        from derta.modeling import load_model

        model, tok = load_model(Path(args.model) / "model")
    else:
        import tempfile

        from derta.modeling import ModelConfig, TokenizerConfig, build_model, train_tokenizer

        corpus = [d["text"] for d in world["web"]] + [r["instruction"] for r in world["safety_train"]]
        tok = train_tokenizer(TokenizerConfig(vocab_size=600), corpus, tempfile.mkdtemp())
        model = build_model(ModelConfig(), tok)
    target = HFTarget(model, tok, GenerationConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens))

    def timed(fn):
        t0 = time.perf_counter()
        outs = fn()
        dt = time.perf_counter() - t0
        n_tok = sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in outs)
        return outs, dt, n_tok

    batched, t_b, n_b = timed(lambda: target.generate_texts(texts, skip_special_tokens=False))
    single_target = HFTarget(model, tok, GenerationConfig(batch_size=1, max_new_tokens=args.max_new_tokens))
    single, t_s, n_s = timed(lambda: single_target.generate_texts(texts, skip_special_tokens=False))
    return {
        "prompts": len(texts), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "batched": {"time_s": round(t_b, 3), "tokens": n_b, "tokens_per_s": round(n_b / t_b, 1)},
        "one_by_one": {"time_s": round(t_s, 3), "tokens": n_s, "tokens_per_s": round(n_s / t_s, 1)},
        "speedup": round((n_b / t_b) / (n_s / t_s), 2),
        "same_outputs": sum(a == b for a, b in zip(batched, single)),
    }


register_bench("generate", _add_generate_args, bench_generate, help="batched vs one-by-one greedy generation (tokens/s)")
