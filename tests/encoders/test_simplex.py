"""SimpleX against explicit per-user loops: histories (cap, leave-target-out), the three aggregators, the
masked softmax and the reference's pads-in-the-denominator quirk, gamma = 1 == MF, configs, bad input."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from mmlexp.encoders import MatrixFactorization, SimpleX
from tests.conftest import CONF

HISTORIES = [[0, 2, 5, 7], [1], [0, 1, 2, 3, 4, 5, 6, 8], [9], [2, 9], [], [3, 4, 8, 9]]
N_USERS, N_ITEMS, LONGEST = len(HISTORIES), 11, 8


def train_matrix() -> sp.csr_matrix:
    rows = np.repeat(np.arange(N_USERS), [len(h) for h in HISTORIES])
    cols = np.concatenate([h for h in HISTORIES if h])
    return sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(N_USERS, N_ITEMS))


def simplex(**kwargs) -> SimpleX:
    torch.manual_seed(0)
    return SimpleX(N_USERS, N_ITEMS, train=train_matrix(), **dict(dim=6, init_std=0.7) | kwargs)


def expected_history(user, target=None, cap=None):
    """The reference's construction: train items in file order, minus the target, the last ``cap`` kept."""
    items = [i for i in HISTORIES[user] if i != target]
    return items if cap is None else items[-cap:]


def expected_raw_vector(model: SimpleX, user: int, history: list[int]) -> torch.Tensor:
    """p_u written out one user at a time (no packing, no masks)."""
    e_u = model.user_table[user]
    table = model.item_table if model.history_table is None else model.history_table
    if model.gamma == 1.0:
        return e_u
    if not history:
        agg = torch.zeros_like(e_u)
    elif model.aggregator == "mean":
        agg = sum(table[i] for i in history) / len(history)
    else:
        scores = []
        for i in history:
            key = torch.tanh(model.w_k.weight @ table[i] + model.w_k.bias)
            scores.append(key @ (e_u if model.aggregator == "user_attention" else model.query[:, 0]))
        exps = [torch.exp(s) for s in scores]
        denom = sum(exps)
        if model.pad_in_softmax_quirk:
            pads = model.pad_length - len(history)
            denom = denom + pads * math.exp(0.0) + 1e-9
        agg = sum(e / denom * table[i] for e, i in zip(exps, history, strict=True))
    return model.gamma * e_u + (1 - model.gamma) * model.w_v.weight @ agg


USERS = torch.tensor([0, 0, 2, 2, 2, 4, 6, 1, 3])
POS = torch.tensor([7, 0, 0, 8, 4, 9, 3, 1, 9])


@pytest.mark.parametrize("cap", [None, 1, 2, 3, 20])
def test_histories_are_capped_and_leave_the_target_out(cap):
    model = simplex(max_history=cap, aggregator="mean")
    seg, ids, counts = model.history(USERS, POS)
    for b, (u, i) in enumerate(zip(USERS.tolist(), POS.tolist(), strict=True)):
        got = ids[seg == b].tolist()
        assert got == expected_history(u, i, cap) and i not in got and counts[b] == len(got)
    seg, ids, counts = model.history(torch.arange(N_USERS))
    for u in range(N_USERS):
        assert ids[seg == u].tolist() == expected_history(u, cap=cap)


@pytest.mark.parametrize("aggregator", ["mean", "user_attention", "self_attention"])
@pytest.mark.parametrize("quirk", [False, True])
@pytest.mark.parametrize("cap, shared", [(None, False), (3, True)])
def test_aggregators_match_explicit_per_user_loops(aggregator, quirk, cap, shared):
    model = simplex(
        aggregator=aggregator, gamma=0.4, max_history=cap, share_history_table=shared, pad_in_softmax_quirk=quirk
    ).eval()
    assert model.pad_length == (cap or LONGEST)
    train_rows = model.raw_user_vectors(USERS, POS, training=False)
    eval_rows = model.raw_user_vectors(torch.arange(N_USERS), None, training=False)
    with torch.no_grad():
        for b, (u, i) in enumerate(zip(USERS.tolist(), POS.tolist(), strict=True)):
            torch.testing.assert_close(train_rows[b], expected_raw_vector(model, u, expected_history(u, i, cap)))
        for u in range(N_USERS):
            torch.testing.assert_close(eval_rows[u], expected_raw_vector(model, u, expected_history(u, cap=cap)))
        # the scores are cosines of p_u and the item rows
        items = torch.cat([POS.unsqueeze(1), torch.tensor([[10, 3]] * 9)], dim=1)
        expected = F.cosine_similarity(train_rows.unsqueeze(1), model.item_table[items], dim=-1)
        torch.testing.assert_close(model(USERS, POS, items[:, 1:]), expected)


def test_quirk_denominator_counts_the_pads():
    """alpha = exp(a) / (sum exp(a) + #pads + 1e-9): with every key score a = 0 and L real items out of a
    padded length P, each weight is 1 / P instead of 1 / L."""
    model = simplex(aggregator="self_attention", gamma=0.0, pad_in_softmax_quirk=True)
    with torch.no_grad():
        model.query.zero_()  # every score 0
        model.w_v.weight.copy_(torch.eye(6))
    table = model.history_table
    for u in (0, 2, 6):
        h = HISTORIES[u]
        got = model.raw_user_vectors(torch.tensor([u]), None, training=False)[0]
        torch.testing.assert_close(got, table[h].sum(0) / (LONGEST + 1e-9))
        proper = simplex(aggregator="self_attention", gamma=0.0)
        proper.load_state_dict(model.state_dict())
        torch.testing.assert_close(
            proper.raw_user_vectors(torch.tensor([u]), None, training=False)[0], table[h].mean(0)
        )


def test_attention_is_stable_for_large_scores_and_empty_histories():
    model = simplex(aggregator="user_attention", gamma=0.5, init_std=50.0)
    for quirk in (False, True):
        model.pad_in_softmax_quirk = quirk
        vecs = model.raw_user_vectors(torch.tensor([0, 1, 5, 2]), torch.tensor([2, 1, 0, 4]), training=False)
        assert torch.isfinite(vecs).all()
        # user 1's only item is the target, user 5 has no train item: the history part is 0
        torch.testing.assert_close(vecs[1:3], 0.5 * model.user_table[[1, 5]])


def test_leave_target_out_ignores_the_positive_history_row():
    """Changing the positive's row of the separate history table leaves that training row's scores alone,
    while the eval-mode scores of the user (full history) do move."""
    model = simplex(aggregator="user_attention", gamma=0.5).eval()
    users, pos, neg = torch.tensor([2]), torch.tensor([4]), torch.tensor([[0, 10]])
    before_train, before_eval = model(users, pos, neg), model.score(users, torch.tensor([[4, 0, 10]]))
    with torch.no_grad():
        model.history_table[4] += 3.0
    torch.testing.assert_close(model(users, pos, neg), before_train)
    assert not torch.allclose(model.score(users, torch.tensor([[4, 0, 10]])), before_eval)


def test_gamma_one_is_mf_on_the_same_weights():
    model = simplex(gamma=1.0, net_dropout=0.3, dim=8)
    mf = MatrixFactorization(N_USERS, N_ITEMS, dim=8, dropout=0.3)
    with torch.no_grad():
        mf.user_table.copy_(model.user_table)
        mf.item_table.copy_(model.item_table)
    neg = torch.randint(0, N_ITEMS, (9, 5), generator=torch.Generator().manual_seed(1))
    for mode in ("train", "eval"):
        getattr(model, mode)(), getattr(mf, mode)()
        torch.manual_seed(3)
        a = model(USERS, POS, neg)
        torch.manual_seed(3)
        b = mf(USERS, POS, neg)
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(model.score(USERS, neg), mf.score(USERS, neg))
    for x, y in zip(model.all_embeddings(), mf.all_embeddings(), strict=True):
        torch.testing.assert_close(x, y)


def test_dropout_acts_on_the_normalised_user_vector_in_training_only():
    model = simplex(net_dropout=0.5, dim=64).train()
    torch.manual_seed(0)
    scores = model(USERS[:1], POS[:1], torch.tensor([[3]]))
    p = model.raw_user_vectors(USERS[:1], POS[:1], training=False)[0]
    item = F.normalize(model.item_table[3], dim=0)
    torch.manual_seed(0)
    mask = F.dropout(torch.ones(1, 64), 0.5, training=True)[0]
    torch.testing.assert_close(scores[0, 1], (F.normalize(p, dim=0) * mask) @ item)


def test_all_embeddings_in_chunks_equal_one_pass():
    one, chunked = simplex(eval_chunk_users=1000), simplex(eval_chunk_users=2)
    for x, y in zip(one.all_embeddings(), chunked.all_embeddings(), strict=True):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize(
    "dataset, expected",
    [
        (
            "gowalla",
            dict(
                aggregator="user_attention",
                gamma=0.8,
                net_dropout=0.1,
                max_history=None,
                share_history_table=False,
                l2=1e-7,
            ),
        ),
        (
            "yelp2018",
            dict(aggregator="mean", gamma=1.0, net_dropout=0.1, max_history=500, share_history_table=True, l2=1e-8),
        ),
    ],
)
def test_paper_settings_per_dataset_instantiate(dataset, expected):
    setting = OmegaConf.load(CONF / "dataset_encoder" / f"{dataset}_simplex.yaml")
    encoder = OmegaConf.merge(OmegaConf.load(CONF / "encoder" / "simplex.yaml"), setting.encoder)
    assert setting.trainer.l2 == expected.pop("l2") and set(setting) == {"encoder", "trainer"}
    assert {k: encoder[k] for k in expected} == expected
    kwargs = {k: v for k, v in OmegaConf.to_container(encoder).items() if k != "_target_"}
    model = SimpleX(N_USERS, N_ITEMS, train=train_matrix(), **kwargs)
    assert (model.history_table is None) == expected["share_history_table"]


def test_parameter_count_of_the_gowalla_setting():
    """RecZoo logged 7,164,992 parameters for SimpleX-Gowalla: ours + its 4 OOV/padding rows of 64."""
    n_users, n_items = 29858, 40981
    train = sp.csr_matrix((np.ones(1, np.float32), ([0], [0])), shape=(n_users, n_items))
    model = SimpleX(n_users, n_items, train=train, aggregator="user_attention", share_history_table=False)
    assert sum(p.numel() for p in model.parameters()) + 4 * 64 == 7_164_992


@pytest.mark.parametrize(
    "kwargs, text",
    [
        (dict(aggregator="max"), "aggregator='max': must be one of mean, user_attention, self_attention"),
        (dict(gamma=1.5), r"gamma=1.5: must be a number in \[0, 1\]"),
        (dict(gamma=-0.1), r"gamma=-0.1: must be a number in \[0, 1\]"),
        (dict(max_history=0), "max_history=0: must be null .no cap. or an integer >= 1"),
        (dict(max_history=2.5), "max_history=2.5: must be null"),
        (dict(net_dropout=1.0), r"net_dropout=1.0: must lie in \[0, 1\)"),
        (dict(share_history_table="yes"), "share_history_table=yes: must be true or false"),
        (dict(pad_in_softmax_quirk=1), "pad_in_softmax_quirk=1: must be true or false"),
    ],
)
def test_bad_arguments(kwargs, text):
    with pytest.raises(ValueError, match=text):
        simplex(**kwargs)
