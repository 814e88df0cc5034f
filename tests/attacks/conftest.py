"""Make ``tests/helpers_openai_server.py`` importable from tests/attacks/ (no packages under tests/)."""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent.parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
