"""Judges: name -> class registry (``keyword``, ``guideline``, ``llm``, ``classifier``).

Contract (``derta.judges.base``): ``get_judge(name, cfg_dict).judge(list[JudgeInput])
-> list[Verdict]``, one verdict per input, in order. Heavy libraries
(transformers, httpx) are imported only when a judge that needs them is built.
"""

from derta.judges.base import JUDGES, Judge, JudgeInput, Verdict, get_judge, list_judges, register

# Importing the modules registers their judges.
from derta.judges import classifier, guideline, keyword, llm  # noqa: E402,F401  isort: skip

__all__ = ["JUDGES", "Judge", "JudgeInput", "Verdict", "get_judge", "list_judges", "register"]
