"""The composed config: every group option instantiates, paper settings are picked, bad values are named."""

import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hydra.utils import instantiate

from mmlexp.config import OWN_TARGETS, ConfigError, build, check_keys, check_ks, validate
from mmlexp.encoders import MatrixFactorization
from tests.conftest import CONF

GROUPS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in ("loss", "sampler", "encoder")}


@pytest.mark.parametrize("loss", GROUPS["loss"])
def test_every_loss_follows_the_contract(make_cfg, loss):
    cfg = make_cfg(f"loss={loss}")
    module = instantiate(cfg.loss, _execution_whitelist_=OWN_TARGETS)
    assert isinstance(module, torch.nn.Module)
    scores = (torch.rand(6, 11) * 2 - 1).requires_grad_()
    value = module(scores, users=torch.arange(6))
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("sampler", GROUPS["sampler"])
def test_every_sampler_instantiates(make_cfg, sampler):
    cfg = make_cfg(f"sampler={sampler}", "num_negatives=17")
    train = sp.random(4, 50, density=0.2, format="csr", random_state=0, dtype=np.float32)
    train.data[:] = 1
    s = build("sampler", cfg.sampler, OWN_TARGETS, n_items=50, train=train, generator=torch.Generator(), device="cpu")
    negatives = s.sample(torch.arange(4), torch.arange(4), MatrixFactorization(4, 50))
    assert negatives.shape == {"in_batch": (4, 3), "shared": (1, 17)}.get(sampler, (4, 17))


@pytest.mark.parametrize("encoder", GROUPS["encoder"])
def test_every_encoder_instantiates(make_cfg, encoder):
    cfg = make_cfg(f"encoder={encoder}")
    train = sp.random(5, 9, density=0.4, format="csr", random_state=0, dtype=np.float32)
    train.data[:] = 1
    model = build("encoder", cfg.encoder, OWN_TARGETS, n_users=5, n_items=9, train=train)
    scores = model(torch.arange(3), torch.zeros(3, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long))
    assert scores.shape == (3, 5)


def test_simplex_paper_settings_are_picked_by_dataset(make_cfg):
    cfg = make_cfg("encoder=simplex", "dataset=gowalla")
    assert cfg.encoder.aggregator == "user_attention" and cfg.encoder.gamma == 0.8 and cfg.trainer.l2 == 1e-7
    assert cfg.encoder.pad_in_softmax_quirk is True  # the reference's softmax, as SimpleX_gowalla_m1 ran
    assert make_cfg("encoder=simplex").encoder.pad_in_softmax_quirk is False  # elsewhere a proper mask
    cfg = make_cfg("encoder=simplex", "dataset=yelp2018", "encoder.gamma=0.5")
    assert cfg.encoder.aggregator == "mean" and cfg.encoder.gamma == 0.5 and cfg.encoder.max_history == 500
    assert cfg.encoder.share_history_table is True and cfg.trainer.l2 == 1e-8
    assert make_cfg("encoder=simplex", "dataset=gowalla", "trainer.l2=0.5").trainer.l2 == 0.5


def test_gowalla_mml_picks_the_paper_setting(make_cfg):
    cfg = make_cfg("loss=mml", "dataset=gowalla")
    assert list(cfg.loss.margins) == [0.7, 0.8, 0.9]
    assert list(cfg.loss.weights) == [0.10, 0.15, 0.75]
    assert cfg.loss.neg_weight == 700 and cfg.trainer.batch_size == 256 and cfg.trainer.l2 == 1e-8


def test_yelp_mml_picks_the_paper_setting_and_overrides_win(make_cfg):
    cfg = make_cfg("loss=mml", "dataset=yelp2018")
    assert list(cfg.loss.margins) == [0.6, 0.7, 0.8, 0.9]
    assert list(cfg.loss.weights) == [0.05, 0.15, 0.20, 0.60]
    assert cfg.loss.neg_weight == 400 and cfg.trainer.batch_size == 512 and cfg.trainer.l2 == 1e-9
    cfg = make_cfg("loss=mml", "dataset=yelp2018", "loss.neg_weight=5", "trainer.batch_size=64")
    assert cfg.loss.neg_weight == 5 and cfg.trainer.batch_size == 64


def test_num_negatives_reaches_the_sampler(make_cfg):
    for n in (10, 800, 123):
        assert make_cfg(f"num_negatives={n}").sampler.num_negatives == n


def test_own_loss_plugs_in_through_allowed_targets(make_cfg, tmp_path, monkeypatch):
    (tmp_path / "mylab_losses.py").write_text(
        textwrap.dedent("""
        import torch
        class SquaredHinge(torch.nn.Module):
            def __init__(self, margin=0.5):
                super().__init__(); self.margin = margin
            def forward(self, scores, users=None):
                return (torch.relu(scores[:, 1:] - self.margin) ** 2).mean() + (1 - scores[:, 0]).mean()
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = make_cfg(
        "loss._target_=mylab_losses.SquaredHinge",
        "~loss.margins",
        "~loss.weights",
        "~loss.neg_weight",
        "~loss.pos_weight",
        "+loss.margin=0.3",
        "allowed_targets=[mylab_losses.*]",
    )
    validate(cfg)
    loss = build("loss", cfg.loss, OWN_TARGETS + list(cfg.allowed_targets))
    assert loss(torch.tensor([[1.0, 0.5]])).item() == pytest.approx(0.04)
    sys.modules.pop("mylab_losses", None)


@pytest.mark.parametrize(
    "override, says",
    [
        ("+trainer.epoch=5", "trainer.epoch: no such key in trainer; allowed: batch_size, checkpoint,"),
        ("+eval.k=5", "eval.k: no such key in eval; allowed: chunk_size, ks, longtail,"),
        ("+eval.longtail.group=5", "eval.longtail.group: no such key in eval.longtail; allowed: enabled, groups"),
        ("+tracking.url=x", "tracking.url: no such key in tracking; allowed: artifact_location, enabled,"),
    ],
)
def test_an_unknown_key_of_a_fixed_group_is_refused(make_cfg, override, says):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(override))
    assert says in str(err.value)


def test_loss_encoder_and_sampler_nodes_take_any_key(make_cfg):
    """Their keys are constructor kwargs (a user's own ``_target_`` class may take any): not checked by name."""
    check_keys(make_cfg("+loss.my_kwarg=1", "+encoder.my_kwarg=2", "+sampler.my_kwarg=3", "+my_top_level=4"))


def _jobs(*overrides: str) -> list[list[str]]:
    """One override list per job of ``python -m mmlexp -m *overrides`` (scripts/estimate_runtime.py's expansion)."""
    sys.path.insert(0, str(CONF.parent / "scripts"))
    try:
        import estimate_runtime as est
    finally:
        sys.path.pop(0)
    plain, grid = est.expand(list(overrides))
    return [plain + job for job in grid]


def _shipped_runs() -> list[list[str]]:
    """Every job of the experiment files and searches, every dataset x loss / encoder setting, every plan run."""
    from mmlexp.reproduce.plan import available
    from mmlexp.reproduce.queue import load_plans

    runs = [job for p in sorted((CONF / "experiment").glob("*.yaml")) for job in _jobs(f"+experiment={p.stem}")]
    runs += [[f"hparams_search={p.stem}"] for p in (CONF / "hparams_search").glob("*.yaml")]
    runs += [[f"dataset={p.stem}"] for p in (CONF / "dataset_defaults").glob("*.yaml")]
    for group in ("loss", "encoder"):
        for p in (CONF / f"dataset_{group}").glob("*.yaml"):
            dataset, _, option = p.stem.partition("_")
            runs.append([f"dataset={dataset}", f"{group}={option}"])
    plans = {tuple(run.overrides()) for name in available() for plan in load_plans(name) for run in plan.runs}
    return runs + [list(plan) for plan in sorted(plans)]


def test_every_shipped_config_and_plan_run_has_only_known_keys(make_cfg):
    runs = _shipped_runs()
    assert len(runs) > 100
    for overrides in runs:
        cfg = make_cfg(*overrides)
        check_keys(cfg)
        validate(cfg)


def test_eval_ks_above_the_item_count_is_refused(make_cfg):
    cfg = make_cfg("eval.ks=[20,5000]")
    check_ks(cfg, 5000, "sample")
    with pytest.raises(ConfigError, match=r"eval.ks=\[20, 5000\]: each k must be <= the number of items of dataset "):
        check_ks(cfg, 4999, "sample")
