"""Checks shared by the loss and sampler tests; each test file keeps only what is specific to its loss or sampler.

Losses: the value and gradient against an explicit formula (fp32 and fp64, against the formula in fp64), the bf16
pass, and hyper-parameter errors that start with the argument's name and value. Samplers: the chi-square check of a
draw and one real ``train_step`` that must update exactly the rows it touched.
"""

import re
from typing import NamedTuple

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from mmlexp.encoders import MatrixFactorization
from mmlexp.losses import MultiMarginLoss
from mmlexp.optim import make_optimizer
from mmlexp.train import TrainSettings, train_step

# ---------------------------------------------------------------------------------------------------------- losses

#: The dtypes of the formula check (the ``dtype`` fixture of tests/losses/conftest.py); bf16 has its own, looser
#: check: ``assert_finite_in_bfloat16``.
DTYPES = [torch.float32, torch.float64]
#: Numbers of negatives per row in the formula check (the ``n_neg`` fixture): one, a few, many.
N_NEGATIVES = [1, 7, 50]
#: Tolerances of a loss against its formula, per dtype (a test may pass its own).
TOL = {torch.float32: dict(rtol=2e-5, atol=1e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def random_scores(rows, cols, seed, low=-1.12, high=1.12):
    """Float64 scores uniform in [low, high): a little past the cosine range, as dropout can push them."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(rows, cols, generator=g, dtype=torch.float64) * (high - low) + low


def value_and_grad(fn, scores, *args):
    """``fn(scores, *args)`` and its gradient with respect to ``scores``."""
    x = scores.clone().requires_grad_()
    value = fn(x, *args)
    (grad,) = torch.autograd.grad(value, x)
    return value, grad


def assert_matches_formula(loss_fn, formula, scores, *args, tol=None):
    """The loss in the dtype of ``scores`` keeps that dtype and matches, in value and gradient, the explicit
    formula evaluated in float64; ``args`` (users, ...) go to both; ``tol`` replaces TOL for the dtypes it names."""
    tol = {**TOL, **(tol or {})}[scores.dtype]
    value, grad = value_and_grad(loss_fn, scores, *args)
    ref_value, ref_grad = value_and_grad(formula, scores.double(), *args)
    assert value.dtype == scores.dtype
    torch.testing.assert_close(value.double(), ref_value, **tol)
    torch.testing.assert_close(grad.double(), ref_grad, **tol)


def assert_finite_in_bfloat16(loss_fn, *args, reference=None, rel=2e-2, abs=None, seed=1):
    """On [16, 101] bf16 scores the loss stays bf16 with a finite value and gradient; with ``reference`` (the
    formula, or the loss itself) its value is within ``rel``/``abs`` of the reference in float64."""
    scores = random_scores(16, 101, seed=seed).bfloat16()
    value, grad = value_and_grad(loss_fn, scores, *args)
    assert value.dtype == torch.bfloat16 and torch.isfinite(value) and torch.isfinite(grad).all()
    if reference is not None:
        assert value.item() == pytest.approx(reference(scores.double(), *args).item(), rel=rel, abs=abs)


def refused(message, anywhere=False):
    """``pytest.raises(ValueError)`` whose message starts with (or, ``anywhere``, contains) ``message``."""
    return pytest.raises(ValueError, match=("" if anywhere else "^") + re.escape(message))


# -------------------------------------------------------------------------------------------------------- samplers

#: The significance level of the chi-square checks: a correct sampler fails one in a thousand seeds.
ALPHA = 1e-3


def counts(draws, n_items):
    """How many times each of ``n_items`` items was drawn."""
    return np.bincount(np.asarray(draws).ravel(), minlength=n_items)


def assert_chi_square_fits(observed, expected=None):
    """The counts pass a chi-square test at level ALPHA (against ``expected``; uniform when None)."""
    assert chisquare(observed, expected).pvalue > ALPHA


def assert_chi_square_rejects(observed, expected=None):
    """The counts fail the same test: shows that a check above can fail."""
    assert chisquare(observed, expected).pvalue < ALPHA


class Recorder:
    """Wraps a sampler and keeps the last negatives it returned."""

    def __init__(self, inner):
        self.inner, self.negatives = inner, None

    def sample(self, users, items, model=None):
        self.negatives = self.inner.sample(users, items, model)
        return self.negatives


class Step(NamedTuple):
    """What ``train_step_touches_exactly`` saw: the batch's users, the negatives drawn, both tables before the step."""

    users: torch.Tensor
    negatives: torch.Tensor
    user_table: torch.Tensor
    item_table: torch.Tensor


def train_step_touches_exactly(sampler, items=None, model=None) -> Step:
    """One real ``train_step`` of MF (50 users, 30 items) with ``sampler`` on 8 rows, where every negative is
    active: the loss is finite and exactly the rows of the batch's users, positives and drawn negatives change.
    A ``model`` given is used as it is (seed it first); by default a fresh MF seeded with 0."""
    if model is None:
        torch.manual_seed(0)
        model = MatrixFactorization(50, 30)
    recorder = Recorder(sampler)
    users = torch.randint(50, (8,))
    items = torch.randint(30, (8,)) if items is None else items
    before_u, before_i = model.user_table.detach().clone(), model.item_table.detach().clone()
    # margin -1: every negative is active, so every sampled row must receive a gradient
    loss_fn = MultiMarginLoss(margins=[-1.0], weights=[1.0], neg_weight=1.0)
    loss = train_step(
        model, loss_fn, recorder, make_optimizer(model, 1e-2), users, items, TrainSettings(l2=0.0, progress=False)
    )
    assert torch.isfinite(loss)
    negatives = recorder.negatives
    changed_items = set(torch.nonzero((model.item_table != before_i).any(1)).flatten().tolist())
    assert changed_items == set(items.tolist()) | set(negatives.flatten().tolist())
    changed_users = set(torch.nonzero((model.user_table != before_u).any(1)).flatten().tolist())
    assert changed_users == set(users.tolist())
    return Step(users, negatives, before_u, before_i)
