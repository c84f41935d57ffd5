"""The SSM paper's setting (``+experiment=ssm_paper``, paper-reference §6) and the encoder options behind it.

Each option is checked against an independent computation on a tiny example (numpy or dense torch); the defaults
leave today's behaviour alone (the golden digests pin the bits, tests/test_golden.py)."""

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from mmlexp.encoders import LightGCN, MatrixFactorization
from tests.encoders.toy_graph import NEG, POS, TRAIN, USERS
from tests.test_entrypoint import run_cli, runs

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def composed(*overrides: str):
    with initialize_config_dir(config_dir=CONF):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize(("dataset", "tau"), [("gowalla", 0.12), ("yelp2018", 0.14)])
def test_experiment_composes_the_papers_setting(dataset, tau):
    cfg = composed("+experiment=ssm_paper", f"dataset={dataset}")
    assert cfg.encoder._target_.endswith("LightGCN") and cfg.encoder.n_layers == 1 and cfg.encoder.dim == 64
    assert cfg.encoder.init == "xavier_uniform" and cfg.encoder.batch_l2 == 1e-5 and cfg.encoder.dropout == 0
    assert cfg.encoder.eval_similarity == "dot" and cfg.encoder.similarity == "cosine"
    assert cfg.loss._target_.endswith("SampledSoftmaxLoss") and cfg.loss.tau == tau and cfg.loss.reduction == "sum"
    assert cfg.sampler._target_.endswith("InBatchSampler") and cfg.sampler.mask_duplicates is False
    t = cfg.trainer
    assert (t.batch_size, t.lr, t.l2, t.clip_grad_norm) == (2048, 1e-3, 0.0, None)
    assert (t.epochs, t.eval_every, t.patience, t.monitor) == (1000, 1, 15, "recall@20")
    assert cfg.eval.longtail.groups == 10 and cfg.eval.longtail.split == "equal_interactions"  # its Figure 1


def test_experiment_with_mf_keeps_only_the_keys_mf_takes():
    cfg = composed("+experiment=ssm_paper", "dataset=gowalla", "encoder=mf")
    assert cfg.encoder._target_.endswith("MatrixFactorization")
    assert "n_layers" not in cfg.encoder and "propagate_rows" not in cfg.encoder and cfg.encoder.in_batch_scores
    assert cfg.encoder.init == "xavier_uniform" and cfg.encoder.batch_l2 == 1e-5 and cfg.trainer.batch_size == 2048


@pytest.mark.parametrize("encoder", ["lightgcn", "mf"])
def test_experiment_trains_on_sample_through_the_entrypoint(tmp_path, encoder):
    run_cli(tmp_path, "+experiment=ssm_paper", "dataset=sample", f"encoder={encoder}", "trainer.epochs=1",
            "trainer.num_threads=1", "encoder.dim=16")  # fmt: skip
    _, found = runs(tmp_path)
    assert found[0].info.status == "FINISHED" and found[0].data.params["trainer.batch_size"] == "2048"
    assert found[0].data.metrics["best/recall_at_20"] > 0


def test_layer_mean_of_one_layer_by_hand():
    """E = mean(E0, A_hat E0), A_hat = D^-1/2 A D^-1/2 of the bipartite graph, computed with numpy."""
    torch.manual_seed(0)
    model = LightGCN(4, 5, dim=3, n_layers=1, init="xavier_uniform", eval_similarity="dot", train=TRAIN).eval()
    r = TRAIN.toarray().astype(np.float64)
    a = np.block([[np.zeros((4, 4)), r], [r.T, np.zeros((5, 5))]])
    deg = a.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0.0)
    e0 = np.concatenate([model.user_table.detach().numpy(), model.item_table.detach().numpy()]).astype(np.float64)
    expect = (e0 + (inv[:, None] * a * inv[None, :]) @ e0) / 2
    assert inv[4 + 3] == 0  # item 3 has no interaction: its row is E0's alone, halved
    users, items = model.all_embeddings()  # eval_similarity=dot: the vectors themselves
    np.testing.assert_allclose(users.numpy(), expect[:4], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(items.numpy(), expect[4:], rtol=1e-5, atol=1e-7)


def test_eval_similarity_dot_ranks_by_raw_dot_products_and_training_stays_cosine():
    torch.manual_seed(0)
    cos = LightGCN(4, 5, dim=3, n_layers=1, init_std=1.0, train=TRAIN)
    dot = LightGCN(4, 5, dim=3, n_layers=1, init_std=1.0, eval_similarity="dot", train=TRAIN)
    dot.load_state_dict(cos.state_dict())
    (cu, ci), (du, di) = cos.all_embeddings(), dot.all_embeddings()
    torch.testing.assert_close(cu, F.normalize(du, dim=1))
    torch.testing.assert_close(ci, F.normalize(di, dim=1))
    assert not torch.allclose(di.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(dot.score(USERS, NEG), (du[USERS].unsqueeze(1) * di[NEG]).sum(-1))
    torch.testing.assert_close(cos(USERS, POS, NEG), dot(USERS, POS, NEG))  # training scores: cosine in both


@pytest.mark.parametrize("cls", [MatrixFactorization, LightGCN])
def test_xavier_uniform_tables_have_the_expected_range_and_variance(cls):
    torch.manual_seed(0)
    kwargs = {"train": sp.random(3000, 2000, density=0.001, format="csr", random_state=0)}
    model = cls(3000, 2000, dim=64, init="xavier_uniform", **kwargs)
    for table in (model.user_table, model.item_table):
        rows = table.shape[0]
        bound, var = np.sqrt(6 / (rows + 64)), 2 / (rows + 64)
        assert float(table.detach().abs().max()) <= bound
        assert abs(float(table.detach().var()) / var - 1) < 0.02  # 128k-192k draws: the variance within 2%


@pytest.mark.parametrize("cls", [MatrixFactorization, LightGCN])
def test_default_init_is_the_same_draw_as_before(cls):
    torch.manual_seed(3)
    model = cls(4, 5, dim=8, train=TRAIN)
    torch.manual_seed(3)
    p, q = torch.randn(4, 8) * 1e-4, torch.randn(5, 8) * 1e-4
    assert torch.equal(model.user_table.detach(), p) and torch.equal(model.item_table.detach(), q)


@pytest.mark.parametrize("cls", [MatrixFactorization, LightGCN])
def test_batch_l2_adds_the_gradient_of_the_batch_rows_penalty(cls):
    """grad(with batch_l2=w) - grad(without) = w * P[u] per occurrence of u in the batch (and Q[i] for positives):
    the gradient of (w/2) sum_b ||P[u_b]||^2 + ||Q[i_b]||^2, computed here with numpy."""
    w = 0.3
    extra = {"dropout": 0.0, "init_std": 1.0} | ({"n_layers": 1, "train": TRAIN} if cls is LightGCN else {})
    grads = []
    for weight in (0.0, w):
        torch.manual_seed(0)
        model = cls(4, 5, dim=3, batch_l2=weight, **extra)
        model(USERS, POS, NEG).sum().backward()
        grads.append((model.user_table.grad.clone(), model.item_table.grad.clone(), model))
    p, q = (t.detach().numpy() for t in (grads[1][2].user_table, grads[1][2].item_table))
    expect_p, expect_q = np.zeros_like(p), np.zeros_like(q)
    for u, i in zip(USERS.tolist(), POS.tolist(), strict=True):  # user 0 and item 4 twice: counted twice
        expect_p[u] += w * p[u]
        expect_q[i] += w * q[i]
    np.testing.assert_allclose((grads[1][0] - grads[0][0]).numpy(), expect_p, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose((grads[1][1] - grads[0][1]).numpy(), expect_q, rtol=1e-5, atol=1e-7)


def _batch(n: int = 64):
    from mmlexp.data import load_dataset

    data = load_dataset("sample")
    users, items = (torch.from_numpy(a) for a in data.train_pairs())
    rows = torch.randperm(users.numel(), generator=torch.Generator().manual_seed(0))[:n]
    return data, users[rows], items[rows]


@pytest.mark.parametrize(("in_batch", "rows"), [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("n_layers", [0, 1, 2])
def test_speed_options_give_the_same_scores_and_gradients(in_batch, rows, n_layers):
    """in_batch_scores / propagate_rows: the numbers of the default path up to float summation order."""
    from mmlexp.samplers.in_batch import InBatchSampler

    data, users, pos = _batch()
    negatives = InBatchSampler().sample(users, pos)
    out = []
    for options in ({}, {"in_batch_scores": in_batch, "propagate_rows": rows}):
        torch.manual_seed(0)
        model = LightGCN(data.n_users, data.n_items, dim=8, n_layers=n_layers, init="xavier_uniform",
                         batch_l2=0.1, train=data.train, **options)  # fmt: skip
        scores = model(users, pos, negatives)
        scores.pow(2).sum().backward()
        out.append((scores.detach(), model.user_table.grad, model.item_table.grad))
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


@pytest.mark.parametrize("shared", [False, True])
def test_propagate_rows_with_sampled_negatives(shared):
    data, users, pos = _batch()
    negatives = torch.randint(0, data.n_items, (1 if shared else users.numel(), 5), generator=torch.Generator())
    out = []
    for rows in (False, True):
        torch.manual_seed(0)
        model = LightGCN(data.n_users, data.n_items, dim=8, n_layers=1, propagate_rows=rows, train=data.train)
        scores = model(users, pos, negatives)
        scores.pow(2).sum().backward()
        out.append((scores.detach(), model.user_table.grad, model.item_table.grad))
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


def test_mf_in_batch_scores_give_the_same_scores_and_gradients():
    from mmlexp.samplers.in_batch import InBatchSampler

    data, users, pos = _batch()
    negatives = InBatchSampler().sample(users, pos)
    out = []
    for in_batch in (False, True):
        torch.manual_seed(0)
        model = MatrixFactorization(data.n_users, data.n_items, dim=8, dropout=0.0, init="xavier_uniform",
                                    batch_l2=0.1, in_batch_scores=in_batch)  # fmt: skip
        scores = model(users, pos, negatives)
        scores.pow(2).sum().backward()
        out.append((scores.detach(), model.user_table.grad, model.item_table.grad))
    assert not model.supports_graph_capture
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


def test_in_batch_scores_refuse_other_negatives():
    data, users, pos = _batch(8)
    model = LightGCN(data.n_users, data.n_items, dim=4, n_layers=1, in_batch_scores=True, train=data.train)
    with pytest.raises(ValueError, match="in_batch_scores=true"):
        model(users, pos, torch.randint(0, data.n_items, (8, 7)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"init": "he"}, "init='he'"),
        ({"batch_l2": -1.0}, "batch_l2=-1.0"),
        ({"eval_similarity": "l2"}, "similarity='l2'"),
        ({"in_batch_scores": "yes"}, "in_batch_scores=yes"),
        ({"propagate_rows": 1}, "propagate_rows=1"),
    ],
)
def test_bad_options_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LightGCN(4, 5, dim=4, train=TRAIN, **kwargs)
