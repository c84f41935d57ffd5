"""Argument checks shared by the losses: each error names the argument, the value and what is allowed."""

import math
from collections.abc import Sequence
from itertools import pairwise


def check_margins(name: str, margins: Sequence[float]) -> list[float]:
    values = [float(m) for m in margins]
    if not values:
        raise ValueError(f"{name}={values}: at least one margin is required")
    if any(not math.isfinite(m) or not -1.0 <= m <= 1.0 for m in values):
        raise ValueError(f"{name}={values}: every margin must lie in [-1, 1] (cosine scores)")
    if any(b <= a for a, b in pairwise(values)):
        raise ValueError(f"{name}={values}: margins must be strictly increasing")
    return values


def check_weight(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value}: must be a finite number >= 0")
    return value


def _as_float(name: str, value, allowed: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: {allowed}") from None


def check_temperature(name: str, value: float) -> float:
    """A softmax temperature: finite and > 0."""
    allowed = "must be a finite number > 0 (a temperature)"
    value = _as_float(name, value, allowed)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value}: {allowed}")
    return value


def check_range(name: str, value: float, low: float, high: float, why: str = "") -> float:
    """A finite number in the closed interval [low, high]; ``why`` says what the bounds mean."""
    allowed = f"must be a number in [{low:g}, {high:g}]" + (f" ({why})" if why else "")
    value = _as_float(name, value, allowed)
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name}={value}: {allowed}")
    return value


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r}: must be one of {', '.join(choices)}")
    return value
