"""Constrained parts of Optuna search spaces: sorted margins and simplex weights, valid by construction.

Optuna samples independent numbers ``u`` in (0, 1) (trial params named ``draw.*``); the maps below turn
any such draws into values that meet the loss's constraints, so no trial is spent on an invalid config:

* ``sorted_in_interval``: k margins strictly increasing inside (low, high), consecutive gaps (and the gaps to
  low and high) at least ``min_gap``. Uniform draws give margins uniform over that region.
* ``simplex``: k weights > 0 that sum to 1 (uniform draws: uniform on the simplex).

Both use stick breaking with Beta(1, b) pieces drawn by inverse CDF, so k margins take k draws and k weights
take k - 1 draws (no redundant parameter for TPE). ``custom_search_space(cfg, trial)`` is the hook that
``hydra.sweeper.custom_search_space`` names (conf/hparams_search/mml_optuna.yaml); the sweeper
(``mmlexp.sweep.optuna_sweeper.OptunaSweeper``) turns the values it stores on the trial into ``loss.margins=[...]`` and
``loss.weights=[...]`` overrides, which hydra-optuna-sweeper cannot do itself (it only passes
``trial.params``, scalars).
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

DRAW_PREFIX = "draw."  # trial params that are raw draws, not config keys
OVERRIDES_ATTR = "overrides"  # trial user attribute: {config key: value} the draws map to
EPS = 1e-6  # draws lie in [EPS, 1 - EPS], strictly inside (0, 1)


class SearchSpaceError(ValueError):
    """A search space that cannot produce valid values (named key, value and what is allowed)."""


@dataclass(frozen=True)
class MarginSpace:
    """``hydra.sweeper.space``: k margins in (low, high) for ``margins_key``, k weights for ``weights_key``."""

    k: int = 3  # the MML paper's number of margins (Gowalla; Yelp2018 uses 4)
    low: float = 0.0
    high: float = 1.0
    min_gap: float = 0.01
    margins_key: str = "loss.margins"
    weights_key: str | None = "loss.weights"  # null: weights are not searched

    def __post_init__(self):
        where = "hydra.sweeper.space"
        k = self.k
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise SearchSpaceError(f"{where}.k={k!r}: must be an integer >= 1 (the number of margins)")
        for name in ("low", "high", "min_gap"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise SearchSpaceError(f"{where}.{name}={value!r}: must be a finite number")
        if not 0.0 <= self.low < self.high <= 1.0:
            raise SearchSpaceError(
                f"{where}: low={self.low}, high={self.high}: margins are sampled sorted strictly inside "
                "(low, high), which must lie in [0, 1] with low < high"
            )
        if self.min_gap < 0 or (k + 1) * self.min_gap >= self.high - self.low:
            raise SearchSpaceError(
                f"{where}: {k} margins with gaps >= min_gap={self.min_gap} cannot be sorted inside "
                f"({self.low}, {self.high}): need 0 <= min_gap and (k + 1) * min_gap < high - low"
            )

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> "MarginSpace":
        node = dict(node or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(node) - set(known))
        if unknown:
            raise SearchSpaceError(f"hydra.sweeper.space.{unknown[0]}: unknown key; known keys: {', '.join(known)}")
        return cls(**node)

    def keys(self) -> list[str]:
        return [self.margins_key] + ([self.weights_key] if self.weights_key else [])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_draws(draws: Sequence[float], n: int, what: str) -> list[float]:
    draws = [float(u) for u in draws]
    if len(draws) != n:
        raise ValueError(f"{what}: expected {n} draws, got {len(draws)}")
    if any(not 0.0 < u < 1.0 for u in draws):
        raise ValueError(f"{what}: draws must lie strictly inside (0, 1), got {draws}")
    return draws


def simplex(draws: Sequence[float], n: int) -> list[float]:
    """n - 1 draws in (0, 1) -> n numbers > 0 summing to 1 (uniform draws: uniform on the simplex)."""
    draws = _check_draws(draws, n - 1, "simplex")
    parts, rest = [], 1.0
    for i, u in enumerate(draws):
        v = 1.0 - (1.0 - u) ** (1.0 / (n - 1 - i))  # Beta(1, n-1-i) by inverse CDF
        parts.append(rest * v)
        rest *= 1.0 - v
    parts.append(rest)
    total = math.fsum(parts)
    return [p / total for p in parts]


def sorted_in_interval(draws: Sequence[float], low: float, high: float, min_gap: float = 0.0) -> list[float]:
    """k draws -> k numbers strictly increasing inside (low, high), every gap (to low, between, to high)
    at least ``min_gap``: the k + 1 gaps are min_gap plus a simplex share of the free length."""
    k = len(draws)
    free = (high - low) - (k + 1) * min_gap
    if k < 1 or free <= 0:
        raise ValueError(f"{k} values with gaps >= {min_gap} do not fit strictly inside ({low}, {high})")
    gaps = simplex(draws, k + 1)
    values, position = [], low
    for gap in gaps[:k]:
        position += min_gap + free * gap
        values.append(position)
    return values


def margins_and_weights(
    margin_draws: Sequence[float], weight_draws: Sequence[float] | None, space: MarginSpace
) -> dict[str, list[float]]:
    """The overrides one trial's draws map to: ``{margins_key: [...], weights_key: [...]}``."""
    out = {space.margins_key: sorted_in_interval(margin_draws, space.low, space.high, space.min_gap)}
    if space.weights_key:
        out[space.weights_key] = simplex(weight_draws or [], space.k)
    return out


def custom_search_space(cfg: Any, trial: Any) -> None:
    """hydra-optuna-sweeper hook: draw the margins and weights of ``hydra.sweeper.space`` for ``trial``.

    The draws are trial params (``draw.margin1``...), the values they map to are stored as the trial's
    ``overrides`` user attribute, which ``OptunaSweeper`` (mmlexp.sweep) passes to the job.
    """
    space = MarginSpace.from_config(cfg.hydra.sweeper.get("space"))
    suggest = lambda name: trial.suggest_float(f"{DRAW_PREFIX}{name}", EPS, 1.0 - EPS)  # noqa: E731
    margin_draws = [suggest(f"margin{i}") for i in range(1, space.k + 1)]
    weight_draws = [suggest(f"weight{i}") for i in range(1, space.k)] if space.weights_key else None
    trial.set_user_attr(OVERRIDES_ATTR, margins_and_weights(margin_draws, weight_draws, space))


def format_override(key: str, value: Any) -> str:
    """``loss.margins=[0.7,0.8,0.9]`` (shortest round-trip float reprs)."""
    if isinstance(value, (list, tuple)):
        return f"{key}=[{','.join(repr(float(v)) for v in value)}]"
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"


__all__ = [
    "MarginSpace",
    "SearchSpaceError",
    "simplex",
    "sorted_in_interval",
    "margins_and_weights",
    "custom_search_space",
    "format_override",
    "DRAW_PREFIX",
    "OVERRIDES_ATTR",
]
