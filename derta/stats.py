"""Rates with their uncertainty: the 95% Wilson score interval.

Wilson (1927), "Probable inference, the law of succession, and statistical
inference": for k successes in n trials, p = k/n and z the normal quantile,

    centre = (p + z^2 / 2n) / (1 + z^2 / n)
    half   = z * sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)

Unlike the normal (Wald) interval it stays inside [0, 1] and is not empty at
k = 0 or k = n, which is where a safety-tuned model's ASR lives.
"""

from __future__ import annotations

import math
from typing import Any

Z95 = 1.959963984540054  # Phi^-1(0.975)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval (as fractions) for ``k`` of ``n``; ``None`` when ``n == 0``."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return None
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # Exact ends at k = 0 and k = n (the formula gives them up to rounding).
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def wilson_pct(k: int, n: int) -> list[float] | None:
    """95% Wilson interval in percent, 2 decimals (``[lo, hi]``, JSON-friendly); ``None`` when ``n == 0``."""
    ci = wilson(k, n)
    return None if ci is None else [round(100.0 * ci[0], 2), round(100.0 * ci[1], 2)]


def pct(k: int, n: int) -> float | None:
    """``100 k / n`` rounded to 2 decimals; ``None`` when ``n == 0``."""
    return round(100.0 * k / n, 2) if n else None


def rate_detail(k: int, n: int, errors: int = 0, key: str = "rate", count_key: str = "k") -> dict[str, Any]:
    """``{key: pct, "n": n, count_key: k, "errors": errors, "ci95": [lo, hi]}``; ``n`` counts decided items only."""
    return {key: pct(k, n), "n": n, count_key: k, "errors": errors, "ci95": wilson_pct(k, n)}
