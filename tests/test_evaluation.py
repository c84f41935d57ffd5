"""Full-ranking evaluation against hand-computed values and a per-user numpy reference."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmlexp.evaluation import METRICS, evaluate_embeddings, metric_key_for_mlflow, rank_top_k
from mmlexp.evaluation import ranking as ev

METHODS = ("bf16", "blocked", "topk")


@pytest.fixture(params=METHODS)
def method(request, monkeypatch):
    """Run evaluate_embeddings through each ranking path (it always asks for 'auto')."""
    monkeypatch.setattr(ev, "_resolve_method", lambda m, device: request.param)
    return request.param


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 4 items, groups of 2 blocks: the block/group machinery on small catalogues."""
    monkeypatch.setattr(ev, "_BLOCK", 4)
    monkeypatch.setattr(ev, "_GROUP", 2)


def csr(rows, n_items):
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(rows), n_items))


# ---------------------------------------------------------------- hand-made case

# item i = e_i, so score(u, i) = user_emb[u, i]
HAND_USERS = torch.tensor(
    [
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],  # u0: order 0 1 2 3 4 5; train {0} -> ranking 1 2 3 4 5
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # u1: order 5 4 3 2 1 0; train {4, 5} -> ranking 3 2 1 0
        [9.0, 8.0, 7.0, 6.0, 5.0, 4.0],  # u2: no test item -> skipped
    ]
)
HAND_TRAIN = [[0], [4, 5], [0, 1, 2]]
HAND_TEST = [[1, 3], [2], []]
L3, L4 = math.log2(3), math.log2(4)
HAND_EXPECTED = {
    # K=1: u0 R=[1] hit, |T|=2: recall 1/2, prec 1, ndcg (1/log2 2)/(1/log2 2) = 1
    #      u1 R=[3] miss: all 0
    "recall@1": (1 / 2 + 0) / 2,
    "precision@1": (1 + 0) / 2,
    "hit@1": (1 + 0) / 2,
    "ndcg@1": (1 + 0) / 2,
    # K=2: u0 R=[1,2] hits [1,0]: recall 1/2, prec 1/2, DCG 1, IDCG 1 + 1/log2 3
    #      u1 R=[3,2] hits [0,1]: recall 1, prec 1/2, DCG 1/log2 3, IDCG (min(2,1)=1) 1
    "recall@2": (1 / 2 + 1) / 2,
    "precision@2": (1 / 2 + 1 / 2) / 2,
    "hit@2": 1.0,
    "ndcg@2": (1 / (1 + 1 / L3) + (1 / L3) / 1) / 2,
    # K=3: u0 R=[1,2,3] hits [1,0,1]: recall 2/2, prec 2/3, DCG 1 + 1/log2 4, IDCG 1 + 1/log2 3
    #      u1 R=[3,2,1] hits [0,1,0]: recall 1, prec 1/3, DCG 1/log2 3, IDCG 1
    "recall@3": (1 + 1) / 2,
    "precision@3": (2 / 3 + 1 / 3) / 2,
    "hit@3": 1.0,
    "ndcg@3": ((1 + 1 / L4) / (1 + 1 / L3) + (1 / L3) / 1) / 2,
}


def test_hand_made_case(method):
    got = evaluate_embeddings(HAND_USERS, torch.eye(6), csr(HAND_TRAIN, 6), csr(HAND_TEST, 6), ks=(1, 2, 3))
    assert list(got) == [f"{m}@{k}" for k in (1, 2, 3) for m in METRICS]
    assert all(type(v) is float for v in got.values())
    for key, want in HAND_EXPECTED.items():
        assert got[key] == pytest.approx(want, abs=1e-12), key


def test_hand_made_ranking(method):
    top = rank_top_k(HAND_USERS, torch.eye(6), csr(HAND_TRAIN, 6), 3, method=method)
    assert top.dtype == torch.long and top.device.type == "cpu"
    assert top.tolist() == [[1, 2, 3], [3, 2, 1], [3, 4, 5]]
    top = rank_top_k(HAND_USERS, torch.eye(6), csr(HAND_TRAIN, 6), 2, users=[1, 0], method=method)
    assert top.tolist() == [[3, 2], [1, 2]]


# ---------------------------------------------------------------- random case vs per-user reference


def reference(user_emb, item_emb, train, test, ks):
    """Per-user loop straight from the formulas, in float64."""
    scores = user_emb.double().numpy() @ item_emb.double().numpy().T
    sums = {f"{m}@{k}": [] for k in ks for m in METRICS}
    for u in range(scores.shape[0]):
        truth = set(test.indices[test.indptr[u] : test.indptr[u + 1]].tolist())
        if not truth:
            continue
        s = scores[u].copy()
        s[train.indices[train.indptr[u] : train.indptr[u + 1]]] = -np.inf
        order = np.argsort(-s, kind="stable")
        for k in ks:
            hits = [1.0 if i in truth else 0.0 for i in order[:k]]
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(truth))))
            sums[f"recall@{k}"].append(sum(hits) / len(truth))
            sums[f"ndcg@{k}"].append(dcg / idcg)
            sums[f"precision@{k}"].append(sum(hits) / k)
            sums[f"hit@{k}"].append(float(sum(hits) > 0))
    return {key: float(np.mean(v)) for key, v in sums.items()}


def random_case(n_users=50, n_items=200, d=16, seed=0, dtype=torch.float64, exact=False):
    """Random train/test rows (disjoint; every 5th user without test items) and embeddings with a
    popularity direction (so that there are hits). ``exact``: small-integer embeddings plus a
    tie-break column i / 4096 for item i, so every score is a distinct multiple of 2^-12 below
    2^11, computed exactly in fp32 whatever the summation order: rankings are unambiguous."""
    rng = np.random.default_rng(seed)
    train_rows, test_rows = [], []
    for u in range(n_users):
        items = rng.permutation(n_items)[: rng.integers(0, 40)]
        cut = rng.integers(0, len(items) + 1) if u % 5 else len(items)
        train_rows.append(sorted(items[:cut].tolist()))
        test_rows.append(sorted(items[cut:].tolist()))
    pop = np.bincount(np.concatenate([np.array(r, dtype=np.int64) for r in train_rows + test_rows]), minlength=n_items)
    g = torch.Generator().manual_seed(seed)
    if exact:
        assert n_items <= 4096
        user_emb = torch.randint(-3, 4, (n_users, d), generator=g).double()
        item_emb = torch.randint(-3, 4, (n_items, d), generator=g).double()
        item_emb[:, -1] = torch.arange(n_items) / 4096
        user_emb[:, -1] = 1.0
        item_emb[:, 0] += torch.from_numpy(pop).double()
    else:
        user_emb = torch.randn(n_users, d, generator=g, dtype=torch.float64)
        item_emb = torch.randn(n_items, d, generator=g, dtype=torch.float64)
        item_emb[:, 0] += torch.from_numpy(pop).double() * 0.5
    user_emb[:, 0] = 3.0
    return user_emb.to(dtype), item_emb.to(dtype), csr(train_rows, n_items), csr(test_rows, n_items)


def assert_no_near_ties(user_emb, item_emb, train, k, gap=1e-4):
    """Guard for float cases: the top k+1 scores of every user are >= gap apart, so fp32 and fp64
    (and any summation order) rank them alike."""
    scores = user_emb.double() @ item_emb.double().T
    coo = train.tocoo()
    scores[torch.from_numpy(coo.row).long(), torch.from_numpy(coo.col).long()] = -math.inf
    top = torch.topk(scores, k + 1, dim=1).values
    diff = top[:, :-1] - top[:, 1:]
    assert float(diff[torch.isfinite(diff)].min()) > gap, "near ties: pick another seed"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_random_case_matches_reference(method, small_blocks, dtype):
    user_emb, item_emb, train, test = random_case(dtype=dtype)
    ks = (1, 5, 20)
    assert_no_near_ties(user_emb, item_emb, train, max(ks))
    want = reference(user_emb, item_emb, train, test, ks)
    assert want["recall@20"] > 0.1  # the case has real hits
    got = evaluate_embeddings(user_emb, item_emb, train, test, ks=ks, chunk_size=7)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key


def test_random_case_default_blocks_and_chunks(method):
    # 3000 items: default block/group sizes, several groups per user, default chunk size
    user_emb, item_emb, train, test = random_case(n_users=120, n_items=3000, d=32, seed=1, exact=True)
    ks = (10, 50)
    want = reference(user_emb, item_emb, train, test, ks)
    got = evaluate_embeddings(user_emb, item_emb, train, test, ks=ks)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key


def test_methods_return_the_same_ranking():
    user_emb, item_emb, train, _ = random_case(n_users=64, n_items=1000, d=32, seed=2, dtype=torch.float32, exact=True)
    scores = user_emb.double() @ item_emb.double().T
    scores[torch.from_numpy(train.tocoo().row).long(), torch.from_numpy(train.tocoo().col).long()] = -math.inf
    want = torch.topk(scores, 30, dim=1).indices
    for method in ("auto", *METHODS):
        got = rank_top_k(user_emb, item_emb, train, 30, chunk_size=9, method=method)
        assert torch.equal(got, want), method


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("chunk_threads", [True, False])
def test_threading_gives_the_same_ranking_and_restores_threads(monkeypatch, threads, chunk_threads):
    monkeypatch.setattr(ev, "_CHUNK_THREADS", chunk_threads)
    user_emb, item_emb, train, _ = random_case(n_users=64, n_items=1000, d=32, seed=2, exact=True)
    want = rank_top_k(user_emb, item_emb, train, 30, method="topk")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for method in METHODS:
            assert torch.equal(rank_top_k(user_emb, item_emb, train, 30, chunk_size=5, method=method), want)
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_low_precision_inputs():
    user_emb, item_emb, train, test = random_case(seed=3)
    user_emb, item_emb = user_emb.bfloat16(), item_emb.bfloat16()
    assert_no_near_ties(user_emb, item_emb, train, 5)
    want = evaluate_embeddings(user_emb.double(), item_emb.double(), train, test, ks=(5,))
    got = evaluate_embeddings(user_emb, item_emb, train, test, ks=(5,))
    assert got == pytest.approx(want, abs=1e-6)


# ---------------------------------------------------------------- masking and skipping


def test_train_items_are_masked_even_when_best(method, small_blocks):
    user_emb, item_emb, train, test = random_case(seed=4)
    item_emb[7] = user_emb.sum(0) * 100  # item 7 is every user's best item ...
    train = (train + csr([[7]] * train.shape[0], train.shape[1])).astype(bool).astype(np.float64)
    test = test.multiply(csr([[i for i in range(200) if i != 7]] * 50, 200)).tocsr()
    top = rank_top_k(user_emb, item_emb, train, 20)  # ... but in every user's train set
    assert not (top == 7).any()
    got = evaluate_embeddings(user_emb, item_emb, train, test, ks=(20,), chunk_size=5)
    assert got["recall@20"] == pytest.approx(reference(user_emb, item_emb, train, test, (20,))["recall@20"])
    # without masking the unbeatable item would take a slot: the masked result is strictly better
    unmasked = evaluate_embeddings(user_emb, item_emb, sp.csr_matrix(train.shape), test, ks=(1,))
    assert unmasked["hit@1"] == 0.0 and got["recall@20"] > 0


def test_test_items_are_never_masked(method):
    # u0 has item 1 in train AND test: it stays rankable (and is its best item); u1 masks item 0
    users = torch.tensor([[1.0, 5.0, 2.0, 0.0], [5.0, 1.0, 2.0, 0.0]])
    train, test = csr([[0, 1], [0]], 4), csr([[1], [3]], 4)
    got = evaluate_embeddings(users, torch.eye(4), train, test, ks=(1,))
    assert got["hit@1"] == pytest.approx(0.5) and got["recall@1"] == pytest.approx(0.5)


def test_users_without_test_items_are_skipped(method):
    user_emb, item_emb, train, test = random_case(seed=5)
    keep = np.flatnonzero(np.diff(test.indptr))
    assert 0 < len(keep) < test.shape[0]
    full = evaluate_embeddings(user_emb, item_emb, train, test, ks=(5, 20))
    only = evaluate_embeddings(user_emb[keep], item_emb, train[keep], test[keep], ks=(5, 20))
    assert full == pytest.approx(only, abs=1e-12)
    # and counting them as zeros would give a different (smaller) mean
    assert full["hit@20"] > full["hit@20"] * len(keep) / test.shape[0]


def test_user_with_fewer_candidates_than_k(method):
    # u0 has only items 1 and 4 outside train: they come first, then train items, never padding
    users = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    train = csr([[0, 2, 3, 5], []], 6)
    top = rank_top_k(users, torch.eye(6), train, 4, method=method)
    assert top[0, :2].tolist() == [4, 1] and set(top[0, 2:].tolist()) <= {0, 2, 3, 5}
    assert top[1].tolist() == [0, 1, 2, 3]


def test_train_and_test_matrices_are_not_modified():
    user_emb, item_emb, train, test = random_case(seed=6)
    train.data[:3] = 0.0  # explicit zeros: not interactions
    before = (train.copy(), test.copy())
    evaluate_embeddings(user_emb, item_emb, train, test, ks=(5,))
    assert (train != before[0]).nnz == 0 and (test != before[1]).nnz == 0
    assert train.nnz == before[0].nnz


# ---------------------------------------------------------------- the bf16 pre-filter's safety nets


def test_bf16_prefilter_is_exact_where_bf16_cannot_rank(small_blocks):
    # items differ by 1e-3 relative: far below bf16 resolution (2^-8), so bf16 scores alone give
    # an unrelated order; the candidate window plus fp32 re-scoring must still be exact
    g = torch.Generator().manual_seed(11)
    base = torch.randn(32, generator=g)
    item_emb = base + 1e-3 * torch.randn(300, 32, generator=g)
    user_emb = torch.randn(24, 32, generator=g)
    train = csr([[u, u + 1] for u in range(24)], 300)
    want = rank_top_k(user_emb.double(), item_emb.double(), train, 15, method="topk")
    coarse = (user_emb.bfloat16() @ item_emb.bfloat16().T).float()
    assert not torch.equal(torch.topk(coarse, 15, dim=1).indices, want)  # bf16 alone is wrong
    got = rank_top_k(user_emb, item_emb, train, 15, chunk_size=10, method="bf16")
    assert torch.equal(got, want)


def test_bf16_candidate_window_is_wide_enough(monkeypatch):
    # Bypass bf16 arithmetic: set the coarse (bf16) item matrix by hand, each coarse score within
    # 0.55-0.91 delta of the exact one, the true top-5 pushed down, all others up. Then the true
    # top-5 sit 1.04-1.82 delta below the coarse 5th best: a window of 2 delta must keep them
    monkeypatch.setattr(ev, "_BLOCK", 1)
    monkeypatch.setattr(ev, "_GROUP", 1)
    n_items, k = 64, 5
    exact = 0.9 - 1e-5 * torch.arange(n_items, dtype=torch.float64)  # distinct, descending
    item_emb = torch.zeros(n_items, 4)
    item_emb[:, 0] = exact.float()
    user_emb = torch.zeros(3, 4)
    user_emb[:, 0] = 1.0
    ranker = ev._BlockedTopK(item_emb, k, bf16=True)
    delta = ranker.delta_scale  # |u| = 1
    grid = 2.0**-8  # bf16 spacing in [0.5, 1)
    down = [math.floor((s - 0.55 * delta) / grid) * grid for s in exact[:k].tolist()]
    up = [math.ceil((s + 0.55 * delta) / grid) * grid for s in exact[k:].tolist()]
    coarse = torch.tensor(down + up, dtype=torch.float64)
    assert ((coarse - exact).abs() < 0.91 * delta).all()
    ranker.vc[:n_items, 0] = coarse.bfloat16()
    assert torch.equal(ranker.vc[:n_items, 0].double(), coarse)  # on the bf16 grid
    got = ranker(user_emb, ev._ChunkMask(sp.csr_matrix((3, n_items)), "cpu"), 0, 3)
    assert ranker.exact_fallback is None
    assert got.tolist() == [list(range(k))] * 3


def test_blocked_selection_keeps_few_candidates():
    # the threshold is tight: on random unit vectors about k + a few candidates per user
    g = torch.Generator().manual_seed(12)
    user_emb = torch.nn.functional.normalize(torch.randn(64, 32, generator=g), dim=1)
    item_emb = torch.nn.functional.normalize(torch.randn(4000, 32, generator=g), dim=1)
    mask = ev._ChunkMask(sp.csr_matrix((64, 4000)), "cpu")
    for bf16, most in ((False, 2.0), (True, 5.0)):
        ranker = ev._BlockedTopK(item_emb, 20, bf16=bf16)
        ranker(user_emb, mask, 0, 64)
        assert 20 * 64 <= ranker.n_candidates < most * 20 * 64, (bf16, ranker.n_candidates / 64)


def test_bf16_falls_back_to_exact_when_candidates_explode(monkeypatch, small_blocks):
    monkeypatch.setattr(ev, "_BF16_MAX_CAND_PER_K", 0)
    monkeypatch.setattr(ev, "_BF16_MAX_CAND_EXTRA", 0)
    user_emb, item_emb, train, test = random_case(dtype=torch.float32, seed=7, exact=True)
    want = rank_top_k(user_emb, item_emb, train, 20, method="topk")
    assert torch.equal(rank_top_k(user_emb, item_emb, train, 20, chunk_size=8, method="bf16"), want)


def test_bf16_falls_back_when_its_error_bound_is_broken(monkeypatch, small_blocks):
    # a (wrong) bound 1000x too tight: the run-time check sees candidates beyond it and goes exact
    monkeypatch.setattr(ev, "_BF16_REL_ERR", ev._BF16_REL_ERR / 1000)
    calls = []
    real = ev._BlockedTopK.__init__

    def spy(self, v, k, bf16):
        calls.append(bf16)
        real(self, v, k, bf16)

    monkeypatch.setattr(ev._BlockedTopK, "__init__", spy)
    user_emb, item_emb, train, test = random_case(dtype=torch.float32, seed=8, exact=True)
    want = rank_top_k(user_emb, item_emb, train, 20, method="topk")
    assert torch.equal(rank_top_k(user_emb, item_emb, train, 20, chunk_size=8, method="bf16"), want)
    assert calls[0] and len(calls) >= 2 and not any(calls[1:])  # an exact ranker per worker


def test_bf16_bound_covers_adversarial_rounding():
    # Rounding errors that all point the same way. Inputs: 1 + 0.99*2^-8 rounds down to 1 and
    # (1 + 2^-7)(1 + 0.99*2^-8) down to 1 + 2^-7 (relative error ~2^-8 each, same sign). Output:
    # item "b" (32 components 1 + 2^-7) sums to 64.25, exactly halfway between the bf16 values 64
    # and 64.5: rounds (to even) down by 2^-8 relative. Total ~1.15% of |u||v|, 93% of the bound
    # (incl. its 5% safety factor): the bound must cover it (no fallback); without the output
    # term, or 3x tighter, it must not
    a = 0.99 * 2.0**-8
    user_emb = torch.full((4, 64), 1 + a)
    item_a = torch.full((64,), 1 + a)
    item_b = torch.cat([torch.full((32,), 1.0), torch.full((32,), 1 + 2.0**-7)]) * (1 + a)
    item_emb = torch.stack([item_a, item_a * 0.5, item_b, item_a * 0.75] * 10)
    train = sp.csr_matrix((4, 40))
    ranker = ev._BlockedTopK(item_emb, 5, bf16=True)
    got = ranker(user_emb, ev._ChunkMask(train, "cpu"), 0, 4)
    assert ranker.exact_fallback is None
    assert (got % 4 == 2).all()  # the top-5 are "b" items (tied among themselves)
    coarse = (user_emb.bfloat16() @ item_emb.bfloat16().T).double()
    err = (coarse - user_emb.double() @ item_emb.double().T).abs().max()
    delta = ranker.delta_scale * float(user_emb[0].norm())
    assert delta * 0.9 < float(err) < delta


def test_bf16_bound_holds_on_wide_embeddings():
    # large d and uneven norms: the bf16 scores stay within the bound (no fallback needed)
    g = torch.Generator().manual_seed(9)
    user_emb = torch.randn(40, 512, generator=g) * torch.rand(40, 1, generator=g) * 10
    item_emb = torch.randn(500, 512, generator=g) * torch.rand(500, 1, generator=g)
    train = csr([[i for i in range(0, 500, 7 + u % 5)] for u in range(40)], 500)
    want = rank_top_k(user_emb.double(), item_emb.double(), train, 25, method="topk")
    ranker = ev._BlockedTopK(item_emb, 25, bf16=True)
    mask = ev._ChunkMask(train, "cpu")
    got = torch.cat([ranker(user_emb[s : s + 16], mask, s, min(s + 16, 40)) for s in range(0, 40, 16)])
    assert ranker.exact_fallback is None
    assert torch.equal(got, want)


# ---------------------------------------------------------------- validation and helpers


@pytest.mark.parametrize(
    "ks, match",
    [
        ((), "empty"),
        ([0], "0"),
        ((-1,), "-1"),
        ((7,), "7.*n_items \\(6\\)"),
        ((2.5,), "2.5"),
        ((True,), "True"),
        ("20", "'2'"),
        (None, "None"),
    ],
)
def test_bad_ks_are_rejected(ks, match):
    with pytest.raises(ValueError, match=match):
        evaluate_embeddings(HAND_USERS, torch.eye(6), csr(HAND_TRAIN, 6), csr(HAND_TEST, 6), ks=ks)


def test_ks_may_be_one_int_and_duplicates_are_merged():
    a = evaluate_embeddings(HAND_USERS, torch.eye(6), csr(HAND_TRAIN, 6), csr(HAND_TEST, 6), ks=2)
    b = evaluate_embeddings(HAND_USERS, torch.eye(6), csr(HAND_TRAIN, 6), csr(HAND_TEST, 6), ks=[2, 2])
    assert a == b and list(a) == ["recall@2", "ndcg@2", "precision@2", "hit@2"]


def test_shape_mismatches_are_rejected():
    train, test = csr(HAND_TRAIN, 6), csr(HAND_TEST, 6)
    with pytest.raises(ValueError, match=r"train has shape \(3, 6\).*\(3, 7\)"):
        evaluate_embeddings(HAND_USERS, torch.eye(7)[:, :6], train, test, ks=(2,))
    with pytest.raises(ValueError, match=r"test has shape \(2, 6\)"):
        evaluate_embeddings(HAND_USERS, torch.eye(6), train, test[:2], ks=(2,))
    with pytest.raises(ValueError, match="d=6.*d=5"):
        evaluate_embeddings(HAND_USERS, torch.eye(6)[:, :5], train, test, ks=(2,))
    with pytest.raises(ValueError, match="2-D"):
        evaluate_embeddings(HAND_USERS[0], torch.eye(6), train, test, ks=(2,))
    with pytest.raises(ValueError, match="NaN"):
        evaluate_embeddings(HAND_USERS * float("nan"), torch.eye(6), train, test, ks=(2,))
    with pytest.raises(ValueError, match="no interactions"):
        evaluate_embeddings(HAND_USERS, torch.eye(6), train, csr([[], [], []], 6), ks=(2,))
    with pytest.raises(ValueError, match="chunk_size"):
        evaluate_embeddings(HAND_USERS, torch.eye(6), train, test, ks=(2,), chunk_size=0)
    with pytest.raises(TypeError, match="scipy.sparse"):
        evaluate_embeddings(HAND_USERS, torch.eye(6), train.toarray(), test, ks=(2,))
    with pytest.raises(ValueError, match="k_max"):
        rank_top_k(HAND_USERS, torch.eye(6), train, 7)
    with pytest.raises(ValueError, match="method"):
        rank_top_k(HAND_USERS, torch.eye(6), train, 2, method="fast")
    with pytest.raises(ValueError, match="users"):
        rank_top_k(HAND_USERS, torch.eye(6), train, 2, users=[0, 3])


def test_progress_bar_runs(capsys):
    got = evaluate_embeddings(
        HAND_USERS, torch.eye(6), csr(HAND_TRAIN, 6), csr(HAND_TEST, 6), ks=(2,), progress=True, chunk_size=1
    )
    assert got["recall@2"] == pytest.approx(HAND_EXPECTED["recall@2"])


def test_metric_key_for_mlflow():
    assert metric_key_for_mlflow("recall@20") == "recall_at_20"
    assert metric_key_for_mlflow("ndcg@5") == "ndcg_at_5"
    with pytest.raises(ValueError, match="name@K"):
        metric_key_for_mlflow("recall20")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    user_emb, item_emb, train, test = random_case(
        n_users=200, n_items=3000, d=32, seed=10, dtype=torch.float32, exact=True
    )
    cpu = evaluate_embeddings(user_emb, item_emb, train, test, ks=(20, 50))
    gpu = evaluate_embeddings(user_emb.cuda(), item_emb.cuda(), train, test, ks=(20, 50))
    assert gpu == pytest.approx(cpu, abs=1e-6)
