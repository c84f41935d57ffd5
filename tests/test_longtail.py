"""Long-tail metrics (SSM paper, Eq. 29): popularity groups, group recalls, avg popularity, coverage,
against brute-force per-user loops."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmlexp.evaluation import METRICS, LongTail, evaluate_embeddings, popularity_groups
from mmlexp.evaluation import ranking as ev


@pytest.fixture(params=("bf16", "blocked", "topk"))
def method(request, monkeypatch):
    """Every ranking path (evaluate_embeddings always asks for 'auto')."""
    monkeypatch.setattr(ev, "_resolve_method", lambda m, device: request.param)
    monkeypatch.setattr(ev, "_BLOCK", 4)  # block machinery on a small catalogue
    monkeypatch.setattr(ev, "_GROUP", 2)
    return request.param


def random_data(seed, n_users=40, n_items=60, d=8):
    rng = np.random.default_rng(seed)
    # popularity-skewed interactions: item i drawn with weight ~ 1/(i+1)
    w = 1.0 / np.arange(1, n_items + 1)
    w /= w.sum()
    train = np.zeros((n_users, n_items), bool)
    test = np.zeros((n_users, n_items), bool)
    for u in range(n_users):
        items = rng.choice(n_items, size=rng.integers(2, 15), replace=False, p=w)
        cut = max(1, len(items) // 3)
        test[u, items[:cut]] = True
        train[u, items[cut:]] = True
    test[rng.integers(n_users)] = False  # one user without test items: skipped
    user_emb = torch.from_numpy(rng.standard_normal((n_users, d)))  # float64: no ties
    item_emb = torch.from_numpy(rng.standard_normal((n_items, d)))
    return user_emb, item_emb, sp.csr_matrix(train.astype(np.float32)), sp.csr_matrix(test.astype(np.float32))


def brute_force(user_emb, item_emb, train, test, k, groups, pop, n_groups):
    """Per-user loop over dense numpy arrays, straight from the definitions."""
    scores = user_emb.numpy() @ item_emb.numpy().T
    tr, te = train.toarray() > 0, test.toarray() > 0
    tail = np.zeros(n_groups)
    recall, avg_pop, seen, n = 0.0, 0.0, set(), 0
    for u in range(tr.shape[0]):
        t = set(np.flatnonzero(te[u]).tolist())
        if not t:
            continue
        n += 1
        s = scores[u].copy()
        s[tr[u] & ~te[u]] = -np.inf
        top = [int(i) for i in np.argsort(-s, kind="stable")[:k]]
        recall += len(t.intersection(top)) / len(t)
        for g in range(n_groups):
            tail[g] += sum(1 for i in top if i in t and groups[i] == g) / len(t)
        avg_pop += sum(pop[i] for i in top) / k
        seen.update(top)
    return {"recall": recall / n, "tail": tail / n, "avg_pop": avg_pop / n, "coverage": len(seen) / tr.shape[1]}


@pytest.mark.parametrize("split", ["equal_interactions", "equal_items"])
@pytest.mark.parametrize("seed", [0, 1])
def test_longtail_metrics_equal_a_per_user_loop(method, split, seed):
    user_emb, item_emb, train, test = random_data(seed)
    lt = LongTail.from_train(train, n_groups=4, split=split)
    # training interactions per item, computed independently
    pop = np.asarray((train != 0).sum(axis=0)).ravel().astype(np.int64)
    np.testing.assert_array_equal(lt.popularity, pop)
    ks = (5, 20)
    out = evaluate_embeddings(user_emb, item_emb, train, test, ks=ks, longtail=lt)
    for k in ks:
        ref = brute_force(user_emb, item_emb, train, test, k, lt.groups, pop, 4)
        assert out[f"recall@{k}"] == pytest.approx(ref["recall"], abs=1e-12)
        for g in range(4):
            assert out[f"tail_recall@{k}_g{g}"] == pytest.approx(ref["tail"][g], abs=1e-12), (k, g)
        assert out[f"avg_popularity@{k}"] == pytest.approx(ref["avg_pop"], abs=1e-12)
        assert out[f"coverage@{k}"] == pytest.approx(ref["coverage"], abs=1e-12)


@pytest.mark.parametrize("split", ["equal_interactions", "equal_items"])
def test_group_recalls_sum_to_recall(method, split):
    user_emb, item_emb, train, test = random_data(7, n_users=80, n_items=100)
    lt = LongTail.from_train(train, n_groups=5, split=split)
    out = evaluate_embeddings(user_emb, item_emb, train, test, ks=(10, 50), longtail=lt)
    for k in (10, 50):
        total = sum(out[f"tail_recall@{k}_g{g}"] for g in range(5))
        assert total == pytest.approx(out[f"recall@{k}"], abs=1e-12)
        assert out[f"recall@{k}"] > 0
    assert set(out) == {f"{m}@{k}" for m in METRICS for k in (10, 50)} | {
        f"tail_recall@{k}_g{g}" for k in (10, 50) for g in range(5)
    } | {f"{m}@{k}" for m in ("avg_popularity", "coverage") for k in (10, 50)}


def test_without_longtail_the_keys_are_unchanged():
    user_emb, item_emb, train, test = random_data(3)
    out = evaluate_embeddings(user_emb, item_emb, train, test, ks=(5,))
    assert set(out) == {"recall@5", "ndcg@5", "precision@5", "hit@5"}
    with_lt = evaluate_embeddings(user_emb, item_emb, train, test, ks=(5,), longtail=LongTail.from_train(train, 3))
    assert {k: with_lt[k] for k in out} == out


def test_hand_case_groups_popularity_coverage():
    # item i = e_i so score(u, i) = user_emb[u, i]; popularity from train columns
    train = sp.csr_matrix(np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]], np.float32))  # pop 3 2 1 0
    test = sp.csr_matrix(np.array([[0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]], np.float32))
    user_emb = torch.tensor([[9.0, 1.0, 3.0, 2.0], [0.0, 0.0, 1.0, 2.0], [0.0, 0.0, 0.0, 1.0]])
    item_emb = torch.eye(4)
    lt = LongTail.from_train(train, n_groups=2, split="equal_items")  # sorted pop 0 1 | 2 3: items {3,2} {1,0}
    assert lt.groups.tolist() == [1, 1, 0, 0]
    out = evaluate_embeddings(user_emb, item_emb, train, test, ks=(1,), longtail=lt)
    # top-1: u0 -> item 2 (item 0 masked), u1 -> 3, u2 -> 3. hits: u0 1/2, u1 1, u2 1 (all group 0)
    assert out["recall@1"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert out["tail_recall@1_g0"] == pytest.approx((0.5 + 1 + 1) / 3) and out["tail_recall@1_g1"] == 0
    assert out["avg_popularity@1"] == pytest.approx((1 + 0 + 0) / 3)  # raw counts of items 2, 3, 3
    assert out["coverage@1"] == pytest.approx(2 / 4)  # items {2, 3}


def brute_groups(pop, n_groups, split):
    order = sorted(range(len(pop)), key=lambda i: (pop[i], i))
    groups = [0] * len(pop)
    total, before = sum(pop), 0
    for pos, i in enumerate(order):
        if split == "equal_items":
            groups[i] = pos * n_groups // len(pop)
        else:
            groups[i] = 0 if total == 0 else min(n_groups - 1, int((before + pop[i] / 2) * n_groups // total))
        before += pop[i]
    return groups


@pytest.mark.parametrize("split", ["equal_interactions", "equal_items"])
@pytest.mark.parametrize("n_groups", [1, 3, 5, 10])
def test_popularity_groups_follow_the_rule(split, n_groups):
    rng = np.random.default_rng(n_groups)
    pop = rng.zipf(1.6, size=200).clip(max=500) - 1  # long-tailed, with zeros and ties
    groups = popularity_groups(pop, n_groups, split)
    assert groups.tolist() == brute_groups(pop.tolist(), n_groups, split)
    # g0 least popular: every item of a lower group is at most as popular as any item of a higher one
    for g in range(n_groups - 1):
        lo, hi = pop[groups <= g], pop[groups > g]
        if lo.size and hi.size:
            assert lo.max() <= hi.min()
    sizes = np.bincount(groups, minlength=n_groups)
    shares = np.bincount(groups, weights=pop, minlength=n_groups) / pop.sum()
    if split == "equal_items":
        assert sizes.max() - sizes.min() <= 1
    else:
        # each group's share is 1/G up to the one item straddling each boundary
        assert np.all(np.abs(shares - 1 / n_groups) <= 2 * pop.max() / pop.sum() + 1e-12)
        assert sizes[0] >= sizes[-1]  # the tail group holds the most items


def test_longtail_errors_name_the_value():
    train = sp.csr_matrix(np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="split='nope': must be one of equal_interactions, equal_items"):
        LongTail.from_train(train, 2, "nope")
    with pytest.raises(ValueError, match="n_groups=0: must be an integer >= 1"):
        LongTail.from_train(train, 0)
    lt = LongTail.from_train(sp.csr_matrix(np.eye(4, dtype=np.float32)), 2)
    with pytest.raises(ValueError, match="longtail covers 4 items, but the embeddings have n_items=3"):
        evaluate_embeddings(torch.eye(3), torch.eye(3), train, train, ks=(1,), longtail=lt)


def decile_of_every_interaction(pop, n_groups):
    """The SSM paper's Figure 1 grouping computed another way: list every training interaction, items sorted by
    popularity (ties by id), cut the list into ``n_groups`` slices of equal length; an item belongs to the slice that
    holds the middle of its run of interactions (an item of no interaction: the slice at its place in the list)."""
    pop = [int(p) for p in pop]
    order = sorted(range(len(pop)), key=lambda i: (pop[i], i))
    listed = [i for i in order for _ in range(pop[i])]  # one entry per interaction
    total = len(listed)
    groups, start = {}, 0
    for i in order:
        middle = start + pop[i] / 2  # the item's interactions are listed[start : start + pop[i]]
        groups[i] = min(n_groups - 1, int(middle * n_groups / total)) if total else 0
        assert all(listed[j] == i for j in range(start, start + pop[i]))
        start += pop[i]
    return [groups[i] for i in range(len(pop))]


def test_ten_groups_of_equal_interactions_on_a_toy_example():
    # 20 items; popularity 1..10 (twice each) -> 110 interactions, 11 a decile
    pop = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10] * 2)
    groups = popularity_groups(pop, 10, "equal_interactions")
    assert groups.tolist() == decile_of_every_interaction(pop, 10)
    # by hand: sorted 1 1 2 2 3 3 ... 10 10 (ids 0, 10, 1, 11, ...); the middle of each item's interactions:
    # 0.5 1.5 3 5 7.5 10.5 14 18 22.5 27.5 33 39 45.5 52.5 60 68 76.5 85.5 95 105, decile = floor(middle / 11)
    middles = [0.5, 1.5, 3, 5, 7.5, 10.5, 14, 18, 22.5, 27.5, 33, 39, 45.5, 52.5, 60, 68, 76.5, 85.5, 95, 105]
    order = sorted(range(20), key=lambda i: (pop[i], i))
    assert [groups[i] for i in order] == [int(m // 11) for m in middles]
    shares = np.bincount(groups, weights=pop, minlength=10) / pop.sum()
    assert np.abs(shares - 0.1).max() < 10 / 110  # each decile within one item of a tenth of the interactions
    # a long-tailed toy catalogue with zeros and ties
    rng = np.random.default_rng(28)
    pop = rng.zipf(1.4, size=300).clip(max=2000) - 1
    assert popularity_groups(pop, 10, "equal_interactions").tolist() == decile_of_every_interaction(pop, 10)


@pytest.mark.parametrize("seed", [0, 5])
def test_five_groups_are_pairs_of_deciles(seed):
    """The report's 5-group panel sums adjacent deciles: exact, since floor(5x) = floor(floor(10x) / 2)."""
    user_emb, item_emb, train, test = random_data(seed, n_users=60, n_items=90)
    ten, five = (LongTail.from_train(train, n, "equal_interactions") for n in (10, 5))
    assert (five.groups == ten.groups // 2).all()
    a = evaluate_embeddings(user_emb, item_emb, train, test, ks=(20,), longtail=ten)
    b = evaluate_embeddings(user_emb, item_emb, train, test, ks=(20,), longtail=five)
    for g in range(5):
        pair = a[f"tail_recall@20_g{2 * g}"] + a[f"tail_recall@20_g{2 * g + 1}"]
        assert b[f"tail_recall@20_g{g}"] == pytest.approx(pair, abs=1e-12)
