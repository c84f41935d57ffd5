"""mmlexp.search_space: draws in (0, 1) -> sorted margins inside (low, high) and weights on the simplex."""

import math
from itertools import pairwise

import numpy as np
import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from mmlexp.search_space import (
    DRAW_PREFIX,
    EPS,
    OVERRIDES_ATTR,
    MarginSpace,
    SearchSpaceError,
    custom_search_space,
    format_override,
    margins_and_weights,
    simplex,
    sorted_in_interval,
)

rng = np.random.default_rng(0)
EDGES = [EPS, 1 - EPS]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])
def test_any_draws_give_strictly_sorted_margins_inside_the_interval_with_min_gap(k):
    draws = [list(u) for u in rng.uniform(EPS, 1 - EPS, size=(300, k))]
    draws += [[e] * k for e in EDGES] + [[EDGES[i % 2]] * k for i in range(2)]  # extreme corners
    for low, high, gap in [(0.0, 1.0, 0.0), (0.0, 1.0, 0.01), (0.5, 0.95, 0.02)]:
        if (k + 1) * gap >= high - low:
            continue
        for u in draws:
            m = sorted_in_interval(u, low, high, gap)
            assert len(m) == k
            assert low < m[0] and m[-1] < high
            assert all(b > a for a, b in pairwise(m))
            edges = [low, *m, high]
            assert min(b - a for a, b in pairwise(edges)) >= gap - 1e-12


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_any_draws_give_positive_weights_summing_to_one(n):
    for u in [list(x) for x in rng.uniform(EPS, 1 - EPS, size=(300, n - 1))] + [[e] * (n - 1) for e in EDGES]:
        w = simplex(u, n)
        assert len(w) == n and all(x > 0 for x in w)
        assert math.fsum(w) == pytest.approx(1.0, abs=1e-12)


def test_uniform_draws_are_uniform_on_the_simplex_and_over_sorted_margins():
    """Stick breaking with Beta(1, b) pieces: every weight has mean 1/n, every gap the same mean."""
    draws = rng.uniform(size=(20000, 3))
    weights = np.array([simplex(u, 4) for u in draws])
    assert np.allclose(weights.mean(axis=0), 0.25, atol=0.01)
    margins = np.array([sorted_in_interval(u, 0.0, 1.0) for u in draws])
    assert np.allclose(margins.mean(axis=0), [0.25, 0.5, 0.75], atol=0.01)  # order statistics of 3 uniforms


def test_the_papers_setting_is_reachable():
    """Gowalla margins [0.7, 0.8, 0.9] lie in the space: the k+1 gaps (0.7, .1, .1, .1) are a simplex point."""
    space = MarginSpace()
    target = [0.7, 0.8, 0.9]
    # invert the map: gaps -> stick-breaking fractions -> draws (inverse of u -> 1 - (1-u)^(1/b))
    free = 1.0 - 4 * space.min_gap
    gaps = [(g - space.min_gap) / free for g in np.diff([0.0, *target, 1.0])]
    draws, rest = [], 1.0
    for i, g in enumerate(gaps[:-1]):
        v = g / rest
        draws.append(1 - (1 - v) ** (3 - i))
        rest -= g
    assert sorted_in_interval(draws, 0.0, 1.0, space.min_gap) == pytest.approx(target)


@pytest.mark.parametrize(
    "node, message",
    [
        ({"k": 0}, "hydra.sweeper.space.k=0: must be an integer >= 1"),
        ({"k": 2.5}, "hydra.sweeper.space.k=2.5"),
        ({"low": 0.9, "high": 0.5}, "low=0.9, high=0.5"),
        ({"high": 1.5}, "must lie in [0, 1]"),
        ({"low": -0.1}, "must lie in [0, 1]"),
        ({"k": 20, "min_gap": 0.05}, "20 margins with gaps >= min_gap=0.05 cannot be sorted inside (0.0, 1.0)"),
        ({"min_gap": -0.1}, "need 0 <= min_gap"),
        ({"kk": 3}, "hydra.sweeper.space.kk: unknown key"),
    ],
)
def test_spaces_that_cannot_hold_sorted_margins_are_refused_with_the_key(node, message):
    with pytest.raises(SearchSpaceError) as err:
        MarginSpace.from_config(node)
    assert message in str(err.value)


def test_bad_draws_are_refused():
    with pytest.raises(ValueError):
        simplex([0.0, 0.5], 3)
    with pytest.raises(ValueError):
        simplex([0.5], 3)
    with pytest.raises(ValueError):
        sorted_in_interval([0.5] * 3, 0.0, 1.0, 0.3)


def test_hook_samples_draws_and_stores_the_overrides_they_map_to():
    cfg = OmegaConf.create({"hydra": {"sweeper": {"space": {"k": 4, "low": 0.5, "high": 0.99}}}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        custom_search_space(cfg, trial)
        assert sorted(trial.params) == [f"{DRAW_PREFIX}margin{i}" for i in range(1, 5)] + [
            f"{DRAW_PREFIX}weight{i}" for i in range(1, 4)
        ]
        out = trial.user_attrs[OVERRIDES_ATTR]
        assert set(out) == {"loss.margins", "loss.weights"}
        assert 0.5 < out["loss.margins"][0] < out["loss.margins"][-1] < 0.99
        assert math.fsum(out["loss.weights"]) == pytest.approx(1.0)
        study.tell(trial, 0.0)


def test_weights_key_null_searches_margins_only():
    out = margins_and_weights([0.3], None, MarginSpace(k=1, weights_key=None))
    assert list(out) == ["loss.margins"] and 0 < out["loss.margins"][0] < 1


def test_list_overrides_round_trip_through_hydras_parser():
    values = sorted_in_interval([0.123456789, 0.5, 0.987654321], 0.0, 1.0, 0.01)
    line = format_override("loss.margins", values)
    (parsed,) = OverridesParser.create().parse_overrides([line])
    assert parsed.key_or_group == "loss.margins" and parsed.value() == values
    assert format_override("loss.neg_weight", 412.5) == "loss.neg_weight=412.5"
