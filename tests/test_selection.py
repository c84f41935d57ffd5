"""eval.selection: the held-out validation split, epoch selection on it, config checks, the entrypoint."""

import numpy as np
import pytest
import scipy.sparse as sp
from mlflow.tracking import MlflowClient

from mmlexp import run as run_module
from mmlexp.config import ConfigError, validate
from mmlexp.data import load_dataset
from mmlexp.data.splits import holdout, valid_counts
from tests.test_entrypoint import run_cli, runs


def random_train(seed=0, n_users=300, n_items=500):
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for u in range(n_users):
        n = int(rng.integers(0, 40)) if u % 7 else int(rng.integers(0, 3))  # some users with 0, 1, 2 items
        items = rng.choice(n_items, size=n, replace=False)
        rows += [u] * n
        cols += items.tolist()
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))


def as_sets(m):
    m = sp.csr_matrix(m)
    return [set(m.indices[m.indptr[u] : m.indptr[u + 1]].tolist()) for u in range(m.shape[0])]


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.9])
def test_holdout_is_disjoint_covers_train_and_follows_the_count_rule(fraction):
    train = random_train()
    rest, valid = holdout(train, fraction, seed=3)
    assert rest.shape == valid.shape == train.shape
    for u, (t, r, v) in enumerate(zip(as_sets(train), as_sets(rest), as_sets(valid), strict=True)):
        assert not (r & v) and (r | v) == t, u
        n = len(t)
        expected = 0 if n <= 1 else min(n - 1, int(np.floor(fraction * n + 0.5)))
        assert len(v) == expected, (u, n)
        if n:
            assert len(r) >= 1  # at least one item stays in training
    # overall share close to the fraction (users' counts rounded)
    assert abs(valid.nnz / train.nnz - fraction) < 0.05


def test_single_item_users_keep_it_in_train():
    train = sp.csr_matrix(np.array([[0, 1, 0], [1, 1, 0], [0, 0, 0]], np.float32))
    rest, valid = holdout(train, 0.5, seed=0)
    assert as_sets(rest)[0] == {1} and as_sets(valid)[0] == set()
    assert len(as_sets(valid)[1]) == 1 and len(as_sets(rest)[1]) == 1
    assert as_sets(valid)[2] == set()
    assert valid_counts(np.array([0, 1, 2, 3, 10, 14, 15]), 0.1).tolist() == [0, 0, 0, 0, 1, 1, 2]


def test_holdout_is_deterministic_and_leaves_global_rng_alone():
    train = random_train(1)
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    a = holdout(train, 0.2, seed=5)
    assert np.array_equal(np.random.get_state()[1], state)
    b = holdout(sp.csr_matrix(train.toarray()), 0.2, seed=5)  # same data built differently
    assert all((x != y).nnz == 0 for x, y in zip(a, b, strict=True))
    c = holdout(train, 0.2, seed=6)
    assert (a[1] != c[1]).nnz > 0  # another seed, another slice
    # pinned values: the split must not change across machines / numpy versions (PCG64 stream)
    small = sp.csr_matrix(np.ones((2, 10), np.float32))
    assert as_sets(holdout(small, 0.3, seed=0)[1]) == PINNED


PINNED = [{1, 2, 3}, {1, 3, 5}]


def test_holdout_rejects_bad_arguments():
    train = random_train()
    for fraction in (0, 1, 1.5, -0.1, True):
        with pytest.raises(ValueError, match=r"must be a number in \(0, 1\)"):
            holdout(train, fraction, 0)
    with pytest.raises(ValueError, match="seed=-1: must be an integer >= 0"):
        holdout(train, 0.1, -1)


@pytest.mark.parametrize(
    "override, message",
    [
        ("eval.selection=foo", "eval.selection='foo': must be one of paper, valid"),
        ("eval.valid_fraction=0", "eval.valid_fraction=0: must be a number in (0, 1)"),
        ("eval.valid_fraction=1.0", "eval.valid_fraction=1.0: must be a number in (0, 1)"),
        ("eval.valid_fraction=abc", "eval.valid_fraction='abc': must be a number in (0, 1)"),
        ("eval.valid_seed=-3", "eval.valid_seed=-3: must be an integer >= 0"),
        ("eval.longtail.enabled=maybe", "eval.longtail.enabled='maybe': must be true or false"),
        ("eval.longtail.groups=0", "eval.longtail.groups=0: must be an integer >= 1"),
        ("eval.longtail.split=equal", "eval.longtail.split='equal': must be one of equal_interactions, equal_items"),
    ],
)
def test_bad_eval_values_name_key_value_and_allowed(make_cfg, override, message):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(override))
    assert message in str(err.value)


def test_defaults_validate(make_cfg):
    cfg = make_cfg()
    validate(cfg)
    assert cfg.eval.selection == "paper" and cfg.eval.longtail.enabled is True
    assert cfg.eval.longtail.split == "equal_interactions" and cfg.eval.longtail.groups == 5


# ---------------------------------------------------------------- selection inside train(cfg)

TINY = ("trainer.epochs=3", "trainer.batch_size=8192", "num_negatives=4", "eval.ks=[20]")
# (valid recall, test recall) per epoch: valid picks epoch 2, test alone would pick epoch 1
SCRIPT = [(0.1, 0.9), (0.5, 0.2), (0.3, 0.8)]


@pytest.fixture
def scripted_eval(monkeypatch):
    """evaluate_embeddings replaced by a script; records what each call ranked against."""
    data = load_dataset("sample")
    calls = []

    def fake(user_emb, item_emb, train, test, ks=(20,), *, chunk_size=None, progress=False, longtail=None):
        on_test = test.nnz == data.test.nnz and (test != data.test).nnz == 0
        epoch = sum(1 for c in calls if c["on_test"] == on_test)
        calls.append({"on_test": on_test, "train": train, "test": test, "longtail": longtail})
        value = SCRIPT[epoch][1 if on_test else 0]
        return {"recall@20": value, "ndcg@20": value / 2, "precision@20": 0.0, "hit@20": 1.0}

    monkeypatch.setattr(run_module, "evaluate_embeddings", fake)
    return data, calls


def logged_run(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("mmlexp").experiment_id])
    return client, run


def test_valid_selection_picks_by_valid_and_reports_test_of_that_epoch(make_cfg, tmp_path, scripted_eval):
    data, calls = scripted_eval
    returned = run_module.train(make_cfg("eval.selection=valid", *TINY))
    assert returned == 0.5  # the objective (sweeps) is the validation metric, never the test one
    client, run = logged_run(tmp_path)
    m = run.data.metrics
    assert m["best_epoch"] == 2
    assert m["best/recall_at_20"] == 0.2 and m["best/valid/recall_at_20"] == 0.5  # test at the valid-best epoch
    assert [h.value for h in client.get_metric_history(run.info.run_id, "recall_at_20")] == [0.9, 0.2, 0.8]
    assert [h.value for h in client.get_metric_history(run.info.run_id, "valid/recall_at_20")] == [0.1, 0.5, 0.3]
    assert run.data.tags["selection"] == "valid" and run.data.params["eval.selection"] == "valid"
    assert run.data.params["eval.valid_fraction"] == "0.1"

    # what was ranked: test against the full train mask; the slice against train minus the slice
    rest, valid = holdout(data.train, 0.1, 2019)
    test_calls = [c for c in calls if c["on_test"]]
    valid_calls = [c for c in calls if not c["on_test"]]
    assert len(test_calls) == len(valid_calls) == 3
    assert (test_calls[0]["train"] != data.train).nnz == 0 and test_calls[0]["longtail"] is not None
    assert (valid_calls[0]["train"] != rest).nnz == 0 and (valid_calls[0]["test"] != valid).nnz == 0
    assert int(run.data.tags["valid.interactions"]) == valid.nnz


def test_paper_selection_picks_by_test(make_cfg, tmp_path, scripted_eval):
    _, calls = scripted_eval
    returned = run_module.train(make_cfg(*TINY))
    assert returned == 0.9
    _, run = logged_run(tmp_path)
    assert run.data.metrics["best_epoch"] == 1 and run.data.metrics["best/recall_at_20"] == 0.9
    assert not any(k.startswith("valid/") or k.startswith("best/valid/") for k in run.data.metrics)
    assert run.data.tags["selection"] == "paper"
    assert all(c["on_test"] for c in calls)


def test_valid_training_never_sees_the_slice(make_cfg, monkeypatch):
    """The rows trained on, the sampler's and the encoder's train matrix are train minus the slice."""
    seen = {}
    real_fit = run_module.fit

    def spy_fit(model, loss_fn, sampler, optimizer, users, items, *args, **kwargs):
        seen["pairs"] = set(zip(users.tolist(), items.tolist(), strict=True))
        return real_fit(model, loss_fn, sampler, optimizer, users, items, *args, **kwargs)

    monkeypatch.setattr(run_module, "fit", spy_fit)
    run_module.train(
        make_cfg("eval.selection=valid", "trainer.max_steps=1", "num_negatives=4", "tracking.enabled=false")
    )
    data = load_dataset("sample")
    rest, valid = holdout(data.train, 0.1, 2019)
    vu, vi = valid.nonzero()
    assert len(seen["pairs"]) == rest.nnz and not seen["pairs"] & set(zip(vu.tolist(), vi.tolist(), strict=True))


def test_entrypoint_runs_with_valid_selection(tmp_path):
    proc = run_cli(tmp_path, "eval.selection=valid", "trainer.epochs=2", "trainer.batch_size=8192", "num_negatives=10")
    assert "best epoch" in proc.stdout and "valid/recall@20" in proc.stdout
    client, (run,) = runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["selection"] == "valid"
    m = run.data.metrics
    for key in (
        "best/recall_at_20",
        "best/valid/recall_at_20",
        "best/tail_recall_at_20_g0",
        "best/avg_popularity_at_50",
        "best/coverage_at_20",
        "valid/ndcg_at_50",
        "tail_recall_at_50_g4",
    ):
        assert key in m, key
    assert sum(m[f"best/tail_recall_at_20_g{g}"] for g in range(5)) == pytest.approx(m["best/recall_at_20"])
    assert len(client.get_metric_history(run.info.run_id, "valid/recall_at_20")) == 2
