"""Deferred rows of TableAdam (mmlexp.optim.deferred_rows) against the dense path it replaces: the same tables and
moments after many steps on ``sample``, the clip fallback, the norm bound, and a bit-identical resume."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmlexp import _numba
from mmlexp.data import load_dataset
from mmlexp.encoders import LightGCN, MatrixFactorization
from mmlexp.losses import MultiMarginLoss
from mmlexp.optim import choose_deferred_rows, deferred_rows, kernels, make_optimizer
from mmlexp.optim.choose import item_draws
from mmlexp.samplers import HardNegativeSampler, InBatchSampler, PopularitySampler, SharedSampler, UniformSampler
from mmlexp.train import TrainSettings, train_step
from tests.reference import FixedSampler

pytestmark = pytest.mark.skipif(not _numba.AVAILABLE, reason="the deferred path runs on the numba kernels")


@pytest.fixture(scope="module")
def sample():
    data = load_dataset("sample")
    users, items = (torch.from_numpy(a) for a in data.train_pairs())
    return data, users, items


def train(
    sample,
    steps,
    defer=True,
    l2=1e-8,
    clip=10.0,
    lr=1e-3,
    dim=16,
    batch=24,
    sampler_cls=UniformSampler,
    init_std=1e-1,
    state=None,
):
    """``steps`` train_step calls of MF + MML on ``sample`` (dropout on, fixed seeds); the dense path where
    ``defer`` is False.  ``state``: (model, optimizer, gen, first step) to continue."""
    data, users, items = sample
    if state is None:
        torch.manual_seed(0)
        model = MatrixFactorization(data.n_users, data.n_items, dim=dim, init_std=init_std)
        optimizer, gen, first = make_optimizer(model, lr, defer=defer), torch.Generator().manual_seed(0), 0
    else:
        model, optimizer, gen, first = state
    sampler = sampler_cls(20, data.n_items, train=data.train, generator=gen)
    settings = TrainSettings(l2=l2, clip_grad_norm=clip)
    order = torch.randperm(users.shape[0], generator=torch.Generator().manual_seed(1))
    for step in range(first, first + steps):
        torch.manual_seed(step)  # dropout: the same mask whatever happened before
        rows = order[(step * batch) % (users.shape[0] - batch) :][:batch]
        train_step(model, MultiMarginLoss(), sampler, optimizer, users[rows], items[rows], settings)
    return model, optimizer, gen


def assert_same(a, b, exact=True):
    (ma, oa, _), (mb, ob, _) = a, b
    oa.materialize()
    ob.materialize()
    for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True):
        for x, y in [
            (pa, pb),
            (oa.state[pa]["exp_avg"], ob.state[pb]["exp_avg"]),
            (oa.state[pa]["exp_avg_sq"], ob.state[pb]["exp_avg_sq"]),
        ]:
            if exact:
                assert torch.equal(x, y)
            else:
                torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("sampler_cls", [UniformSampler, PopularitySampler, InBatchSampler, SharedSampler])
def test_deferred_equals_dense_after_many_steps(sample, sampler_cls):
    """250 steps (user rows deferred for ~160 steps, item rows for ~6): tables and both moments bit-identical,
    with every sampler that does not score the model (``hard`` does: it takes the dense path, below)."""
    deferred_run = train(sample, 250, sampler_cls=sampler_cls)
    dense_run = train(sample, 250, defer=False, sampler_cls=sampler_cls)
    assert deferred_run[1].deferred_steps == 250 and deferred_run[1].fallback_steps == 0
    assert dense_run[1].deferred_steps == 0
    assert_same(deferred_run, dense_run)


@pytest.mark.parametrize("l2, clip", [(0.3, 0.05), (0.3, 12.0)])  # the clip always acts / acts on some steps
def test_clip_fallback_is_exact(sample, l2, clip):
    """Where the bound cannot prove the clip idle the step is dense (fallback): same bits as the dense path."""
    deferred_run = train(sample, 80, l2=l2, clip=clip, init_std=1.0)
    dense_run = train(sample, 80, defer=False, l2=l2, clip=clip, init_std=1.0)
    opt = deferred_run[1]
    assert opt.fallback_steps > 0 and opt.deferred_steps + opt.fallback_steps == 80
    assert_same(deferred_run, dense_run)


def test_acting_clip_defers_with_the_dense_factor(sample):
    """The paper's start (init 1e-4, l2 1e-8, clip 10): cosine gradients of tiny rows are large, the clip
    acts, and l2^2 ||E||^2 is far below the float32 rounding of coef: deferred, the same bits."""
    kwargs = {"l2": 1e-8, "clip": 10.0, "init_std": 1e-4, "lr": 1e-4}
    deferred_run = train(sample, 60, **kwargs)
    dense_run = train(sample, 60, defer=False, **kwargs)
    opt = deferred_run[1]
    assert opt.clipped_steps > 0 and opt.fallback_steps == 0 and opt.deferred_steps == 60
    assert_same(deferred_run, dense_run)


def test_norm_bound_holds_and_state_dict_sees_every_row(sample):
    model, opt, _ = train(sample, 200)
    bounds = {p: opt._deferred[p].sq_range() for p in model.parameters()}
    assert all(opt._deferred[p].pending for p in model.parameters())
    state = model.state_dict()  # materialises first (make_optimizer's hook)
    assert not any(opt._deferred[p].pending for p in model.parameters())
    for name, p in [("user_table", model.user_table), ("item_table", model.item_table)]:
        exact = float(torch.linalg.vector_norm(state[name], dtype=torch.float64)) ** 2
        assert bounds[p][0] <= exact <= bounds[p][1]


def test_resume_from_state_dicts_is_bit_identical(sample):
    """k steps, model + optimizer state_dict into fresh objects, continue: the same bits as no interruption
    (the clip acting on some steps, so the kept ||E||^2 matters)."""
    kwargs = {"l2": 0.3, "clip": 12.0, "init_std": 1.0}
    straight = train(sample, 120, **kwargs)
    model, opt, gen = train(sample, 70, **kwargs)
    saved = {"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state()}
    torch.manual_seed(123)
    fresh = MatrixFactorization(model.user_table.shape[0], model.item_table.shape[0], dim=16)
    fresh_opt = make_optimizer(fresh, 1e-3, defer=True)
    fresh_opt.load_state_dict(saved["opt"])  # optimizer first, then the model: either order works
    fresh.load_state_dict(saved["model"])
    gen = torch.Generator().manual_seed(99)
    gen.set_state(saved["gen"])
    resumed = train(sample, 50, state=(fresh, fresh_opt, gen, 70), **kwargs)
    assert_same(straight, resumed)


def test_resume_on_the_dense_path_keeps_the_clip_norm(sample):
    kwargs = {"l2": 0.3, "clip": 12.0, "init_std": 1.0, "defer": False}
    straight = train(sample, 60, **kwargs)
    model, opt, gen = train(sample, 30, **kwargs)
    saved = {"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state()}
    assert set(saved["opt"]["param_sq"]) == {0, 1}
    fresh = MatrixFactorization(model.user_table.shape[0], model.item_table.shape[0], dim=16)
    fresh_opt = make_optimizer(fresh, 1e-3)
    fresh.load_state_dict(saved["model"])
    fresh_opt.load_state_dict(saved["opt"])
    gen.set_state(saved["gen"])
    assert_same(straight, train(sample, 30, state=(fresh, fresh_opt, gen, 30), **kwargs))


def test_writing_a_table_with_deferred_rows_raises(sample):
    model, opt, _ = train(sample, 5)
    with torch.no_grad():
        model.item_table.mul_(2.0)
    with pytest.raises(RuntimeError, match="materialize"):
        opt.materialize()


def test_replay_kernel_equals_steps_one_by_one():
    """replay_rows on rows two and three steps behind == the untouched-row formula step by step (numpy)."""
    rng = np.random.default_rng(0)
    p, m = rng.standard_normal((5, 3)), 0.01 * rng.standard_normal((5, 3))
    v = 0.01 * rng.random((5, 3))
    hist = np.array([[0.2 * (s + 1), 0.01, 0.9, 0.1, 0.999, 0.001, 1e-8, 0.3 + 0.1 * s] for s in range(3)])
    done = np.array([0, 1, 3, 0, 2])
    want = [x.copy() for x in (p, m, v)]
    for r in range(5):
        for s in range(done[r], 3):
            a, step, b1, c1, b2, c2, eps, bc = hist[s]
            g = a * want[0][r]
            want[1][r] = b1 * want[1][r] + c1 * g
            want[2][r] = b2 * want[2][r] + c2 * g * g
            want[0][r] = want[0][r] - step * want[1][r] / (np.sqrt(want[2][r]) / bc + eps)
    before = (p**2).sum()
    change = kernels.replay_rows(
        p, m, v, deferred_rows.pending_rows(np.array([4, 0, 1, 0, 2, 3]), done, 3), done, 3, hist
    )
    for got, expected in zip((p, m, v), want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert done.tolist() == [3] * 5 and change == pytest.approx((p**2).sum() - before, rel=1e-9)


def test_rows_read_falls_back_where_deferral_cannot_apply(sample):
    data, users, items = sample
    mf = MatrixFactorization(data.n_users, data.n_items, dim=4)
    neg = torch.tensor([[1, 2], [3, 4]])
    reads = deferred_rows.rows_read(mf, UniformSampler(2, data.n_items), users[:2], items[:2], neg)
    assert reads[mf.user_table] is not None and reads[mf.item_table].tolist() == items[:2].tolist() + [1, 2, 3, 4]
    assert deferred_rows.rows_read(mf, HardNegativeSampler(2, data.n_items), users[:2], items[:2], neg) is None
    gcn = LightGCN(data.n_users, data.n_items, dim=4, train=data.train)
    assert deferred_rows.rows_read(gcn, UniformSampler(2, data.n_items), users[:2], items[:2], neg) is None


def test_adam_ratio_bound_holds_on_adversarial_gradients():
    """|m| / sqrt(v) <= K for any gradient sequence: a burst then silence, alternating signs, noise."""
    b1, b2 = 0.9, 0.999
    bound = deferred_rows.adam_ratio_bound(b1, b2)
    rng = np.random.default_rng(0)
    for grads in [
        np.r_[np.ones(50), np.zeros(200)],
        np.tile([1.0, -1.0], 100),
        rng.standard_normal(500),
        np.r_[np.zeros(10), 1e3, np.full(300, 1e-6)],
    ]:
        m = v = 0.0
        for g in grads:
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            assert v == 0 or abs(m) / np.sqrt(v) <= bound
    assert deferred_rows.adam_ratio_bound(0.99, 0.9) == float("inf")


@pytest.mark.parametrize("n_items, draws", [(40_981, 2_816), (1_000, 50), (500, 1_200)])
def test_auto_share_matches_counted_uniform_draws(n_items, draws):
    """The share of rows ``choose`` expects a step to read, against distinct rows counted in uniform draws."""
    rng = np.random.default_rng(0)
    counted = np.mean([np.unique(rng.integers(0, n_items, draws)).size / n_items for _ in range(200)])
    sampler = UniformSampler(draws // 10 - 1, n_items)  # B = 10 rows: 10 * (1 + N) = draws
    _, why = choose_deferred_rows("auto", sampler, 10, n_items, torch.device("cpu"))
    assert f"about {counted:.0%} of" in why


@pytest.mark.parametrize("negatives, expected", [(10, True), (15, True), (20, False), (100, False), (800, False)])
def test_auto_defers_where_a_step_reads_few_gowalla_rows(negatives, expected):
    """Gowalla's 40,981 items, B=256: deferring pays at 10 negatives (6.6% of the rows read per step), not at 100."""
    sampler = UniformSampler(negatives, 40_981)
    assert choose_deferred_rows("auto", sampler, 256, 40_981, torch.device("cpu"))[0] is expected
    assert choose_deferred_rows("auto", sampler, 256, 40_981, torch.device("cuda"))[0] is False  # a CPU path only


def test_item_draws_follow_the_sampler():
    assert item_draws(UniformSampler(10, 100), 8) == 8 * 11
    train = sp.csr_matrix(np.ones((2, 100)))
    assert item_draws(PopularitySampler(10, 100, train=train, shared=True), 8) == 8 + 10
    assert item_draws(InBatchSampler(), 8) == 8  # the negatives are the batch's own positives


def test_a_sampler_that_declares_nothing_gets_the_safe_defaults(sample):
    """A sampler of one's own without ``scores_model`` may read the model: every row stays current; without
    ``item_draws`` it counts as drawing its ``num_negatives`` per row."""
    data, users, items = sample
    mf = MatrixFactorization(data.n_users, data.n_items, dim=4)
    neg = torch.tensor([[1, 2], [3, 4]])
    own = FixedSampler(neg)
    assert deferred_rows.rows_read(mf, own, users[:2], items[:2], neg) is None
    assert item_draws(own, 8) == 8
    own.num_negatives = 2
    assert item_draws(own, 8) == 8 * 3


@pytest.mark.parametrize("mode, expected", [("on", True), (True, True), ("off", False), (False, False)])
def test_explicit_modes_and_a_bad_value(mode, expected):
    assert choose_deferred_rows(mode, UniformSampler(800, 100), 256, 100, torch.device("cpu"))[0] is expected
    with pytest.raises(ValueError, match=r"trainer.defer_rows='sometimes': must be one of auto, on, off"):
        choose_deferred_rows("sometimes", UniformSampler(8, 100), 256, 100, torch.device("cpu"))


def test_entrypoint_deferred_run_equals_the_dense_run(make_cfg, tmp_path, monkeypatch):
    """``python -m mmlexp`` with trainer.defer_rows=on and =off: the same metrics, bit-identical tables and moments."""
    from mmlexp.checkpoint import CHECKPOINT_FILE
    from mmlexp.config import ConfigError
    from mmlexp.run import train as run_train

    monkeypatch.chdir(tmp_path)
    replays = []
    replay = deferred_rows.DeferredTable.replay
    monkeypatch.setattr(deferred_rows.DeferredTable, "replay", lambda *a, **k: (replays.append(1), replay(*a, **k))[1])
    states, results, replayed = {}, {}, {}
    for mode in ("on", "off"):
        cfg = make_cfg(
            "num_negatives=10",
            "trainer.epochs=2",
            "trainer.num_threads=1",
            "tracking.enabled=false",
            f"trainer.defer_rows={mode}",
        )
        before = set(tmp_path.glob(f"outputs/*/*/{CHECKPOINT_FILE}"))
        replays.clear()
        results[mode] = run_train(cfg)
        replayed[mode] = len(replays)
        (path,) = set(tmp_path.glob(f"outputs/*/*/{CHECKPOINT_FILE}")) - before  # this run's own directory
        states[mode] = torch.load(path, weights_only=True)
    assert replayed["on"] > 0 and replayed["off"] == 0  # the deferred path ran, and only where asked
    assert results["on"] == results["off"]
    on, off = states["on"], states["off"]
    assert on["model"].keys() == off["model"].keys()
    for key in on["model"]:
        assert torch.equal(on["model"][key], off["model"][key]), key
    for a, b in zip(on["optimizer"]["state"].values(), off["optimizer"]["state"].values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    with pytest.raises(ConfigError, match=r"trainer.defer_rows='maybe'.*one of auto, on, off"):
        run_train(make_cfg("trainer.defer_rows=maybe", "tracking.enabled=false"))
