"""The interface every encoder keeps (forward / score / all_embeddings / embedding_tables, cosine or dot,
train=), gradients reaching every parameter, the configs, and one epoch on ``sample`` beating random."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmlexp.data import load_dataset
from mmlexp.encoders import NGCF, LightGCN, MatrixFactorization, SimpleX, SVDPlusPlus
from mmlexp.evaluation import evaluate_embeddings
from mmlexp.losses import MultiMarginLoss
from mmlexp.optim import make_optimizer
from mmlexp.run import OWN_TARGETS, build
from mmlexp.samplers import UniformSampler
from mmlexp.train import TrainSettings, fit
from tests.conftest import CONF

HISTORIES = [[0, 2, 5, 7], [1], [0, 1, 2, 3, 4, 5, 6, 8], [9], [2, 9], [], [3, 4, 8, 9]]  # item 10: never seen
N_USERS, N_ITEMS = len(HISTORIES), 11


def tiny_train() -> sp.csr_matrix:
    rows = np.repeat(np.arange(N_USERS), [len(h) for h in HISTORIES])
    cols = np.concatenate([h for h in HISTORIES if h])
    return sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(N_USERS, N_ITEMS))


ENCODERS = {
    "mf": (MatrixFactorization, {}),
    "simplex": (SimpleX, dict(gamma=0.5)),
    "simplex_mean_shared": (SimpleX, dict(aggregator="mean", gamma=0.3, share_history_table=True, max_history=2)),
    "simplex_self_attention_quirk": (
        SimpleX,
        dict(aggregator="self_attention", pad_in_softmax_quirk=True, attention_dropout=0.2),
    ),
    "svdpp": (SVDPlusPlus, dict(dropout=0.1)),
    "lightgcn": (LightGCN, dict(n_layers=2, dropout=0.1)),
    "ngcf": (NGCF, dict(n_layers=2)),
}
NEEDS_TRAIN = [name for name in ENCODERS if name != "mf"]


def make(name, similarity="cosine", **extra):
    cls, kwargs = ENCODERS[name]
    torch.manual_seed(0)
    options = dict(dim=8, init_std=0.5, similarity=similarity) | kwargs | extra
    return cls(N_USERS, N_ITEMS, train=tiny_train(), **options)


USERS = torch.tensor([0, 2, 2, 4, 6, 1])
POS = torch.tensor([5, 0, 8, 9, 3, 1])  # each row's positive is one of the user's train items
NEG = torch.tensor([[1, 10, 3], [7, 7, 9], [10, 0, 4], [0, 1, 2], [5, 6, 10], [0, 9, 2]])


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_scores_shapes_shared_negatives_and_full_ranking_agree(name, similarity):
    model = make(name, similarity).eval()
    scores = model(USERS, POS, NEG)
    assert scores.shape == (6, 4) and torch.isfinite(scores).all()
    shared = torch.tensor([[3, 10, 0, 0, 7]])
    torch.testing.assert_close(model(USERS, POS, shared), model(USERS, POS, shared.expand(6, 5).contiguous()))
    user_vecs, item_vecs = model.all_embeddings()
    assert user_vecs.shape[0] == N_USERS and item_vecs.shape[0] == N_ITEMS
    items = torch.cat([POS.unsqueeze(1), NEG], dim=1)
    torch.testing.assert_close(model.score(USERS, items), (user_vecs[USERS].unsqueeze(1) * item_vecs[items]).sum(-1))
    everything = torch.arange(N_ITEMS).expand(6, -1)  # B*C > n_items: the whole-catalogue path
    torch.testing.assert_close(model.score(USERS, everything), user_vecs[USERS] @ item_vecs.T)
    norms = torch.cat([user_vecs.norm(dim=1), item_vecs.norm(dim=1)])
    if similarity == "cosine":
        nonzero = norms > 0  # a user without history and zero table row cannot be normalised: never here
        torch.testing.assert_close(norms[nonzero], torch.ones(int(nonzero.sum())))
    else:
        assert not torch.allclose(norms, torch.ones_like(norms))
    if not name.startswith("simplex"):  # SimpleX training rows leave the target out: their scores differ
        torch.testing.assert_close(scores, model.score(USERS, items))


@pytest.mark.parametrize("name", ENCODERS)
def test_score_is_eval_mode_whatever_the_module_mode(name):
    model = make(name)
    items = torch.cat([POS.unsqueeze(1), NEG], dim=1)
    in_training = model.train().score(USERS, items)
    torch.testing.assert_close(in_training, model.eval().score(USERS, items))
    assert not in_training.requires_grad


@pytest.mark.parametrize("name", ENCODERS)
def test_gradients_reach_every_parameter(name):
    model = make(name).train()
    scores = model(USERS, POS, NEG)
    (scores[:, 1:].pow(2).sum() - scores[:, 0].sum()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, pname
    tables = model.embedding_tables()
    params = {id(p) for p in model.parameters()}
    assert tables and all(id(t) in params and t.dim() == 2 and t.shape[0] in (N_USERS, N_ITEMS) for t in tables)


@pytest.mark.parametrize("name", ENCODERS)
def test_state_dict_holds_parameters_only_and_round_trips(name):
    model, other = make(name), make(name, init_std=2.0)
    assert set(model.state_dict()) == {n for n, _ in model.named_parameters()}
    other.load_state_dict(model.state_dict())
    items = torch.cat([POS.unsqueeze(1), NEG], dim=1)
    torch.testing.assert_close(other.score(USERS, items), model.score(USERS, items))


@pytest.mark.parametrize("name", NEEDS_TRAIN)
def test_train_is_required_and_checked(name):
    cls, kwargs = ENCODERS[name]
    with pytest.raises(ValueError, match="train=None: must be the training interactions"):
        cls(N_USERS, N_ITEMS, **kwargs)
    with pytest.raises(ValueError, match=r"train.shape=\(7, 11\): must be .* \(8, 11\)"):
        cls(8, N_ITEMS, train=tiny_train(), **kwargs)


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize(
    "kwargs, text",
    [
        (dict(similarity="euclid"), "similarity='euclid': must be one of cosine, dot"),
        (dict(dim=0), "dim=0: must be an integer >= 1"),
        (dict(dim=2.5), "dim=2.5: must be an integer >= 1"),
        (dict(dim=True), "dim=True: must be an integer >= 1"),
        (dict(init_std=0.0), "init_std=0.0: must be > 0"),
    ],
)
def test_common_bad_arguments(name, kwargs, text):
    cls, own = ENCODERS[name]
    with pytest.raises(ValueError, match=text):
        cls(N_USERS, N_ITEMS, train=tiny_train(), **own | kwargs)


@pytest.mark.parametrize("name", [name for name, (cls, _) in ENCODERS.items() if cls is not SimpleX])
def test_user_dropout_is_checked(name):
    cls, own = ENCODERS[name]
    with pytest.raises(ValueError, match=r"dropout=1.0: must lie in \[0, 1\)"):
        cls(N_USERS, N_ITEMS, train=tiny_train(), **own | dict(dropout=1.0))


@pytest.mark.parametrize("name", ENCODERS)
def test_tables_are_drawn_user_first_then_item(name):
    """Seeded runs and checkpoints rely on the draw order: P ~ N(0, s) first, then Q, from the seed."""
    torch.manual_seed(0)
    users, items = torch.randn(N_USERS, 8) * 0.5, torch.randn(N_ITEMS, 8) * 0.5
    model = make(name)  # seed 0, dim 8, init_std 0.5
    assert torch.equal(model.user_table, users) and torch.equal(model.item_table, items)
    first_two = model.embedding_tables()[:2]
    assert first_two[0] is model.user_table and first_two[1] is model.item_table


@pytest.mark.parametrize("encoder", sorted(p.stem for p in (CONF / "encoder").glob("*.yaml")))
def test_every_encoder_config_builds_with_the_training_matrix(make_cfg, encoder):
    cfg = make_cfg(f"encoder={encoder}")
    model = build("encoder", cfg.encoder, OWN_TARGETS, n_users=N_USERS, n_items=N_ITEMS, train=tiny_train())
    assert model(USERS, POS, NEG).shape == (6, 4)


@pytest.fixture
def one_thread():
    """The test machine is shared: one intra-op thread avoids OpenMP oversubscription (10x slower steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("simplex", {}),
        ("svdpp", {}),
        ("lightgcn", {}),
        ("ngcf", dict(n_layers=2)),
    ],
)
def test_one_epoch_on_sample_beats_random_ranking(name, kwargs, one_thread):
    """MML, uniform N=50, batch 512, lr 1e-3, one epoch; Recall@20 >= 3x that of a random ranking."""
    data = load_dataset("sample")
    torch.manual_seed(0)
    model = ENCODERS[name][0](data.n_users, data.n_items, train=data.train, **kwargs)
    gen = torch.Generator().manual_seed(0)
    users, items = (torch.from_numpy(a) for a in data.train_pairs())
    result = fit(
        model,
        MultiMarginLoss(),
        UniformSampler(50, data.n_items, generator=gen),
        make_optimizer(model, 1e-3),
        users,
        items,
        lambda: evaluate_embeddings(*model.all_embeddings(), data.train, data.test, ks=[20]),
        TrainSettings(epochs=1, batch_size=512, lr=1e-3, progress=False),
        gen,
    )
    assert result.best_metrics["recall@20"] > 3 * 20 / data.n_items


@pytest.mark.parametrize("sampler", sorted(p.stem for p in (CONF / "sampler").glob("*.yaml")))
def test_every_encoder_takes_a_training_step_with_every_sampler(make_cfg, sampler):
    from mmlexp.train import train_step

    cfg = make_cfg(f"sampler={sampler}", "num_negatives=3")
    for name in ENCODERS:
        model = make(name).train()
        s = build(
            "sampler",
            cfg.sampler,
            OWN_TARGETS,
            n_items=N_ITEMS,
            train=tiny_train(),
            generator=torch.Generator().manual_seed(0),
            device="cpu",
        )
        before = [p.detach().clone() for p in model.parameters()]
        loss = train_step(model, MultiMarginLoss(), s, make_optimizer(model, 1e-2), USERS, POS, TrainSettings(l2=1e-4))
        assert torch.isfinite(loss)
        assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True)), name
