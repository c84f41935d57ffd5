"""NGCF: one and two layers against a dense-matrix computation; message dropout in training only; bad input."""

import pytest
import torch
import torch.nn.functional as F

from mmlexp.encoders import NGCF
from tests.encoders.toy_graph import NEG, POS, TRAIN, USERS, dense_adjacency


def dense_ngcf(model: NGCF, user_table, item_table) -> torch.Tensor:
    a, eye = dense_adjacency(), torch.eye(9)
    e = torch.cat([user_table, item_table])
    outputs = [e]
    for w1, w2 in zip(model.w1, model.w2, strict=True):
        e = F.leaky_relu((a + eye) @ e @ w1 + ((a @ e) * e) @ w2, negative_slope=0.2)
        outputs.append(e)
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_layers_match_the_dense_matrix_form(n_layers):
    torch.manual_seed(0)
    model = NGCF(4, 5, dim=6, n_layers=n_layers, init_std=1.0, message_dropout=0.3, train=TRAIN).eval()
    u = model.user_table.detach().clone().requires_grad_()
    i = model.item_table.detach().clone().requires_grad_()
    final = dense_ngcf(model, u, i)
    assert final.shape == (9, 6 * (n_layers + 1))
    users, items = model.all_embeddings()
    torch.testing.assert_close(users, F.normalize(final[:4], dim=1).detach())
    torch.testing.assert_close(items, F.normalize(final[4:], dim=1).detach())
    cols = torch.cat([POS.unsqueeze(1), NEG], 1)
    expected = F.cosine_similarity(final[USERS].unsqueeze(1), final[4 + cols], dim=-1)
    scores = model(USERS, POS, NEG)  # eval mode: no message dropout
    torch.testing.assert_close(scores, expected)
    scores.sum().backward(), expected.sum().backward()
    torch.testing.assert_close(model.user_table.grad, u.grad)
    torch.testing.assert_close(model.item_table.grad, i.grad)


def test_message_dropout_only_in_training():
    torch.manual_seed(0)
    model = NGCF(4, 5, dim=16, n_layers=1, init_std=1.0, message_dropout=0.5, train=TRAIN)
    eval_scores = model.eval()(USERS, POS, NEG)
    assert not torch.allclose(model.train()(USERS, POS, NEG), eval_scores)
    torch.testing.assert_close(model.train().score(USERS, NEG), model.eval().score(USERS, NEG))


def test_zero_layers_keeps_the_tables():
    model = NGCF(4, 5, dim=3, n_layers=0, train=TRAIN)
    users, items = model.all_embeddings()
    torch.testing.assert_close(users, F.normalize(model.user_table, dim=1).detach())
    assert len(model.w1) == 0 and items.shape == (5, 3)


@pytest.mark.parametrize(
    "kwargs, text",
    [
        (dict(n_layers=-2), "n_layers=-2: must be an integer >= 0"),
        (dict(message_dropout=1.0), r"message_dropout=1.0: must lie in \[0, 1\)"),
        (dict(negative_slope=-1), "negative_slope=-1: must be a number >= 0"),
    ],
)
def test_bad_arguments(kwargs, text):
    with pytest.raises(ValueError, match=text):
        NGCF(4, 5, train=TRAIN, **kwargs)
