"""Checks for recipe options: each returns the normalised value or raises ValueError naming the option."""
from __future__ import annotations

from numbers import Real
from typing import Any


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and value == value  # not nan


def endpoints(name: str, value: Any) -> tuple[float, float]:
    """``(first cut, last cut)``: two numbers ≥ 0 (a single number is both)."""
    pair = (value, value) if _number(value) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(_number(v) and v >= 0 for v in pair)):
        raise ValueError(f"{name} takes (first cut, last cut), two numbers ≥ 0, such as (5, 0); got {value!r}")
    return float(pair[0]), float(pair[1])


def between(endpoints: tuple[float, float], t: float) -> float:
    """Linear interpolation from the first cut (t = 0) to the last (t = 1)."""
    return endpoints[0] * (1.0 - t) + endpoints[1] * t


def some_term(lambda1: tuple[float, float], lambda2: tuple[float, float]) -> None:
    """λ1 + λ2 > 0 at both ends (so at every cut in between): every local loss keeps a term."""
    if lambda1[0] + lambda2[0] <= 0 or lambda1[1] + lambda2[1] <= 0:
        raise ValueError(f"lambda1={lambda1} and lambda2={lambda2} leave a cut with no loss term; "
                         "keep λ1 + λ2 > 0 at the first and at the last cut")


def count(name: str, value: Any, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer ≥ {least}, got {value!r}")
    return value


def weight(name: str, value: Any) -> float:
    if not (_number(value) and value >= 0):
        raise ValueError(f"{name} must be a number ≥ 0, got {value!r}")
    return float(value)


def fraction(name: str, value: Any) -> float:
    if not (_number(value) and 0 <= value <= 1):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def momentum(value: Any) -> float:
    if not (_number(value) and 0 <= value < 1):
        raise ValueError(f"momentum must be in [0, 1), got {value!r} (1.0 would never move the EMA copy)")
    return float(value)


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value
