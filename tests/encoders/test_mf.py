"""MF encoder: cosine scores, dropout only in training, init scale."""

import pytest
import torch
import torch.nn.functional as F

from mmlexp.encoders import MatrixFactorization


def test_scores_are_cosines_of_the_table_rows():
    torch.manual_seed(0)
    mf = MatrixFactorization(5, 7, dim=4, dropout=0.5).eval()
    users, items = torch.tensor([0, 3]), torch.tensor([[1, 2, 6], [0, 0, 4]])
    expected = torch.stack(
        [
            torch.stack([F.cosine_similarity(mf.user_table[u], mf.item_table[i], dim=0) for i in row])
            for u, row in zip(users, items, strict=True)
        ]
    )
    torch.testing.assert_close(mf(users, items[:, 0], items[:, 1:]), expected)
    torch.testing.assert_close(mf.score(users, items), expected)


def test_shared_negatives_score_like_per_row_copies():
    mf = MatrixFactorization(5, 7, dim=4).eval()
    users, pos, shared = torch.tensor([0, 3, 4]), torch.tensor([1, 2, 6]), torch.tensor([[0, 5, 5, 2]])
    torch.testing.assert_close(mf(users, pos, shared), mf(users, pos, shared.expand(3, 4).contiguous()))


def test_dropout_acts_on_the_normalised_user_vector_in_training_only():
    torch.manual_seed(0)
    mf = MatrixFactorization(3, 3, dim=64, dropout=0.5).train()
    u = mf.user_vectors(torch.tensor([0]))
    kept = u != 0
    # kept coordinates are the normalised ones scaled by 1 / (1 - p)
    torch.testing.assert_close(u[kept], (F.normalize(mf.user_table[0], dim=0) * 2)[kept[0]])
    mf.eval()
    assert torch.count_nonzero(mf.user_vectors(torch.tensor([0]))) == 64


def test_all_embeddings_match_eval_scores():
    mf = MatrixFactorization(4, 6, dim=8).eval()
    users, items = mf.all_embeddings()
    torch.testing.assert_close(users @ items.T, mf.score(torch.arange(4), torch.arange(6).expand(4, 6)))


def test_init_scale():
    mf = MatrixFactorization(2000, 10, dim=64, init_std=1e-4)
    assert mf.user_table.std().item() == pytest.approx(1e-4, rel=0.02)


@pytest.mark.parametrize("kwargs, text", [(dict(dim=0), "dim=0"), (dict(dropout=1.0), "dropout=1.0")])
def test_bad_arguments(kwargs, text):
    with pytest.raises(ValueError, match=text):
        MatrixFactorization(2, 2, **kwargs)
