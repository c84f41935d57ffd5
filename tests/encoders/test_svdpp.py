"""SVD++ against an explicit per-user loop; the implicit table is trained; bad input."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from mmlexp.encoders import SVDPlusPlus

HISTORIES = [[0, 2, 5, 7], [1], [0, 1, 2, 3, 4, 5, 6, 8], [9], [2, 9], [], [3, 4, 8, 9]]


def model(**kwargs) -> SVDPlusPlus:
    rows = np.repeat(np.arange(7), [len(h) for h in HISTORIES])
    cols = np.concatenate([h for h in HISTORIES if h])
    train = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(7, 11))
    torch.manual_seed(0)
    return SVDPlusPlus(7, 11, train=train, **dict(dim=5, init_std=0.5) | kwargs)


def loop_user_vector(m: SVDPlusPlus, user: int) -> torch.Tensor:
    history = HISTORIES[user]
    implicit = sum((m.implicit_table[j] for j in history), torch.zeros(5))
    return m.user_table[user] + (len(history) ** -0.5 if history else 0.0) * implicit


def test_user_vectors_and_scores_match_an_explicit_loop():
    m = model().eval()
    users, pos, neg = torch.tensor([0, 2, 5, 1, 2]), torch.tensor([5, 8, 0, 1, 0]), torch.tensor([[10, 3]] * 5)
    expected = torch.stack([loop_user_vector(m, u) for u in users.tolist()])
    torch.testing.assert_close(m.raw_user_vectors(users), expected)
    items = torch.cat([pos.unsqueeze(1), neg], dim=1)
    cosines = F.cosine_similarity(expected.unsqueeze(1), m.item_table[items], dim=-1)
    torch.testing.assert_close(m(users, pos, neg), cosines)
    dots = (expected.unsqueeze(1) * m.item_table[items]).sum(-1)
    dot_model = model(similarity="dot").eval()
    torch.testing.assert_close(dot_model(users, pos, neg), dots)
    all_users, _ = m.all_embeddings()
    torch.testing.assert_close(all_users, F.normalize(torch.stack([loop_user_vector(m, u) for u in range(7)]), dim=1))


def test_implicit_gradient_is_the_normalised_sum_gradient():
    m = model(dim=3)
    users = torch.tensor([0, 6, 0])
    m.raw_user_vectors(users).sum().backward()
    expected = torch.zeros(11, 3)
    for u in users.tolist():
        for j in HISTORIES[u]:
            expected[j] += len(HISTORIES[u]) ** -0.5
    torch.testing.assert_close(m.implicit_table.grad, expected)
    assert [t.shape for t in m.embedding_tables()] == [(7, 3), (11, 3), (11, 3)]


@pytest.mark.parametrize(
    "kwargs, text",
    [(dict(dropout=-0.1), r"dropout=-0.1: must lie in \[0, 1\)"), (dict(dim=2.5), "dim=2.5: must be an integer >= 1")],
)
def test_bad_arguments(kwargs, text):
    with pytest.raises(ValueError, match=text):
        model(**kwargs)
