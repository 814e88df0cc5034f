"""Stage `gate_source` / `gate_variants`: Great Expectations gates.

Nothing downstream reads a dataset before its gate passed: later stages
depend on the gate's report. A failing gate writes its report, prints the
dataset, the expectation and offending rows, and exits non-zero.
"""

from __future__ import annotations

from derta.config import load_params, step_config
from derta.validate import GateConfig, run_gate
from steps._common import entry, parser
from steps.synthesize import synth_config


def main() -> None:
    p = parser(__doc__)
    p.add_argument("kind", choices=["source", "variants"])
    p.add_argument("--source", required=True)
    p.add_argument("--variants", default=None)
    p.add_argument("--tokenizer", default=None, help="variants: tokenizer dir (the chat format's 'tokenizer' values)")
    p.add_argument("--helpful", default=None, help="variants: the extra helpful pairs synthesis was given")
    p.add_argument("--report", required=True)
    p.add_argument("--split-dir", default=None, help="also write one report per dataset, DIR/<name>.json")
    a = p.parse_args()
    params = load_params(a.params)
    cfg = step_config(GateConfig, params, "gate", a.profile)
    synth = synth_config(params, a.profile, a.tokenizer) if a.kind == "variants" else None
    report = run_gate(a.kind, a.report, src_dir=a.source, cfg=cfg, variants_dir=a.variants, synth_cfg=synth, helpful_file=a.helpful,
                      split_dir=a.split_dir)
    print({k: v["success"] for k, v in report.items()})


if __name__ == "__main__":
    entry(main)
