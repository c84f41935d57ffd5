"""The sweep of the formula checks: a test that takes ``formula_scores`` runs for each dtype and number of negatives."""

import pytest

from tests.scaffold import DTYPES, N_NEGATIVES, random_scores


@pytest.fixture(params=DTYPES, ids=str)
def dtype(request):
    return request.param


@pytest.fixture(params=N_NEGATIVES)
def n_neg(request):
    return request.param


@pytest.fixture
def formula_scores(dtype, n_neg):
    """The [8, 1 + n_neg] scores of the formula check in ``dtype``, seeded by ``n_neg``."""
    return random_scores(8, 1 + n_neg, seed=n_neg).to(dtype)
