"""One error type for bad input: it always names the file, the line and the rule."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input. ``str(err)`` reads ``<file>:<line>: [<rule>] <detail>``.

    ``line`` is 1-based; 0 means the whole file (e.g. a checksum mismatch).
    """

    def __init__(self, path: str, line: int, rule: str, detail: str = ""):
        self.path, self.line, self.rule, self.detail = str(path), line, rule, detail
        super().__init__(f"{self.path}:{line}: [{rule}] {detail}".rstrip())


class ConfigError(ValueError):
    """A bad params section, unknown key or unknown registry name."""
