"""dvc.yaml's params name what each stage reads, so a change re-runs only what it touches."""

import yaml

from steps.evaluate import EvalConfig
from tests.pipeline_helpers import REPO


def test_evaluate_depends_on_every_eval_key_but_the_variant_list():
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate"]["do"]
    keys = {p for p in stage["params"] if isinstance(p, str)}
    assert "eval" not in keys and "eval.variants" not in keys  # adding a variant must not re-run the others
    # Every other EvalConfig field is a param (a new field must be added here and to params.yaml),
    # except alpacaeval, which stays out of params.yaml until a judge endpoint is configured.
    fields = set(EvalConfig.model_fields) - {"variants", "alpacaeval"}
    assert {f"eval.{f}" for f in fields} <= keys, sorted({f"eval.{f}" for f in fields} - keys)
    params = yaml.safe_load((REPO / "params.yaml").read_text())["eval"]
    assert {k.split(".", 1)[1] for k in keys if k.startswith("eval.")} <= set(params)  # DVC needs each key present


def test_source_depends_on_the_attack_renderers_the_world_writes_with():
    """The mini-world's code and cipher pages are the attacks' own renderings (derta/miniworld.py imports them):
    a change to one must re-run the source stage, or the locked world is not what the code now writes."""
    import ast

    tree = ast.parse((REPO / "derta" / "miniworld.py").read_text())
    used = {f"derta/attacks/{a.name}.py" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "derta.attacks"
            for a in n.names}
    assert used >= {"derta/attacks/codeattack.py", "derta/attacks/selfcipher.py"}
    deps = set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["source"]["deps"])
    assert used <= deps, sorted(used - deps)
