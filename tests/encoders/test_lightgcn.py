"""LightGCN: 0 layers == MF on the same weights; layer mean == a dense computation; bad input."""

import pytest
import torch
import torch.nn.functional as F

from mmlexp.encoders import LightGCN, MatrixFactorization
from tests.encoders.toy_graph import NEG, POS, TRAIN, USERS, dense_adjacency


def test_zero_layers_is_mf_on_the_same_weights():
    torch.manual_seed(0)
    lgcn = LightGCN(4, 5, dim=8, n_layers=0, dropout=0.2, train=TRAIN)
    mf = MatrixFactorization(4, 5, dim=8, dropout=0.2)
    mf.load_state_dict(lgcn.state_dict())
    for mode in ("train", "eval"):
        getattr(lgcn, mode)(), getattr(mf, mode)()
        torch.manual_seed(1)
        a = lgcn(USERS, POS, NEG)
        torch.manual_seed(1)
        b = mf(USERS, POS, NEG)
        torch.testing.assert_close(a, b)
        a.sum().backward(), b.sum().backward()
        for p, q in zip(lgcn.parameters(), mf.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad)
            p.grad = q.grad = None
    torch.testing.assert_close(lgcn.score(USERS, NEG), mf.score(USERS, NEG))
    for x, y in zip(lgcn.all_embeddings(), mf.all_embeddings(), strict=True):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("n_layers", [1, 3])
def test_layer_mean_matches_a_dense_computation(n_layers):
    torch.manual_seed(0)
    model = LightGCN(4, 5, dim=6, n_layers=n_layers, init_std=1.0, train=TRAIN).eval()
    a, e = dense_adjacency(), torch.cat([model.user_table, model.item_table]).detach()
    layers = [e]
    for _ in range(n_layers):
        layers.append(a @ layers[-1])
    final = torch.stack(layers).mean(0)
    users, items = model.all_embeddings()
    torch.testing.assert_close(users, F.normalize(final[:4], dim=1))
    torch.testing.assert_close(items, F.normalize(final[4:], dim=1))
    # gradients: the same as autograd through the dense products
    model(USERS, POS, NEG).pow(2).sum().backward()
    u, i = (t.detach().clone().requires_grad_() for t in (model.user_table, model.item_table))
    x, total = torch.cat([u, i]), torch.cat([u, i])
    for _ in range(n_layers):
        x = a @ x
        total = total + x
    total = total / (n_layers + 1)
    cols = torch.cat([POS.unsqueeze(1), NEG], 1)
    F.cosine_similarity(total[USERS].unsqueeze(1), total[4 + cols], dim=-1).pow(2).sum().backward()
    torch.testing.assert_close(model.user_table.grad, u.grad)
    torch.testing.assert_close(model.item_table.grad, i.grad)


def test_adjacency_is_a_sparse_buffer_that_moves_with_the_module():
    model = LightGCN(4, 5, dim=4, train=TRAIN).to(torch.float32)
    assert model.adjacency.layout == torch.sparse_csr and "adjacency" not in model.state_dict()
    torch.testing.assert_close(model.adjacency.to_dense(), dense_adjacency())


@pytest.mark.parametrize(
    "n_layers, text", [(-1, "n_layers=-1: must be an integer >= 0"), (1.5, "n_layers=1.5: must be an integer >= 0")]
)
def test_bad_layers(n_layers, text):
    with pytest.raises(ValueError, match=text):
        LightGCN(4, 5, n_layers=n_layers, train=TRAIN)
