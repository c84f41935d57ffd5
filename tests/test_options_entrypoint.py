"""Every `loss=`, `sampler=` and `encoder=` option trains through the real `train(cfg)` on the sample dataset."""

import math
import sys

import pytest
from mlflow.tracking import MlflowClient

from mmlexp.run import train
from tests.conftest import CONF

LOSSES = sorted(p.stem for p in (CONF / "loss").glob("*.yaml"))
SAMPLERS = sorted(p.stem for p in (CONF / "sampler").glob("*.yaml"))
ENCODERS = sorted(p.stem for p in (CONF / "encoder").glob("*.yaml"))
TINY = [
    "trainer.epochs=1",
    "trainer.max_steps=3",
    "num_negatives=8",
    "trainer.batch_size=64",
    "tracking.save_checkpoint=false",
]


def finished_runs(cfg):
    client = MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    return [r for r in client.search_runs([exp.experiment_id]) if r.info.status == "FINISHED"]


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_on_sample(make_cfg, loss):
    cfg = make_cfg(f"loss={loss}", *TINY)
    value = train(cfg)
    assert math.isfinite(value) and 0 <= value <= 1
    (run,) = finished_runs(cfg)
    assert run.data.tags["choice.loss"] == loss and math.isfinite(run.data.metrics["train_loss"])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_trains_on_sample(make_cfg, sampler):
    cfg = make_cfg(f"sampler={sampler}", *TINY)
    assert 0 <= train(cfg) <= 1
    assert len(finished_runs(cfg)) == 1


@pytest.mark.parametrize("encoder", ENCODERS)
def test_every_encoder_trains_on_sample(make_cfg, encoder):
    cfg = make_cfg(f"encoder={encoder}", *TINY)
    assert 0 <= train(cfg) <= 1
    (run,) = finished_runs(cfg)
    assert run.data.tags["choice.encoder"] == encoder


@pytest.mark.parametrize("variant", ["trainer.optimizer=sparse_adam", "trainer.precision=bf16", "sampler=shared"])
def test_fast_variants_learn_on_sample(make_cfg, variant):
    """Each named fast variant trains and beats a random ranking by far (Recall@20 of random ~ 20/2995)."""
    cfg = make_cfg(
        variant, "trainer.epochs=2", "trainer.lr=1e-3", "trainer.batch_size=512", "tracking.save_checkpoint=false"
    )
    assert train(cfg) > 10 * 20 / 2995
    (run,) = finished_runs(cfg)
    key, value = variant.split("=")
    assert (run.data.tags["choice.sampler"] if key == "sampler" else run.data.params[key]) == value


def test_time_budget_stops_and_evaluates_the_partial_epoch(make_cfg):
    cfg = make_cfg("trainer.epochs=50", "trainer.max_minutes=0.001", "tracking.save_checkpoint=false")
    assert 0 <= train(cfg) <= 1
    (run,) = finished_runs(cfg)
    assert run.data.metrics["best_epoch"] == 1 and run.data.metrics["wall_time_s"] > 0


OWN_ENCODER = '''
import torch
from mmlexp.encoders.base import EmbeddingEncoder


class DotMF(EmbeddingEncoder):
    """Plain dot-product MF written against the documented encoder interface."""

    def __init__(self, n_users, n_items, dim=16, init_std=0.1, train=None):
        super().__init__(n_users, n_items, dim, init_std, similarity="dot")

    def score(self, users, items):
        return torch.einsum("bd,bcd->bc", self.user_table[users], self.item_table[items])

    def forward(self, users, pos_items, negatives):
        items = torch.cat([pos_items[:, None], negatives.expand(len(users), -1)], dim=1)
        return self.score(users, items)

    def all_embeddings(self):
        return self.user_table.detach(), self.item_table.detach()
'''


def test_own_encoder_on_the_base_class_trains_through_allowed_targets(make_cfg, tmp_path, monkeypatch):
    """README: an encoder subclassing ``EmbeddingEncoder`` plugs in by ``_target_`` and learns (Recall@20 of a
    random ranking on sample ~ 20/2995)."""
    (tmp_path / "mylab_encoders.py").write_text(OWN_ENCODER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mylab_encoders", raising=False)
    cfg = make_cfg(
        "encoder._target_=mylab_encoders.DotMF",
        "~encoder.dropout",
        "~encoder.similarity",
        "encoder.dim=16",
        "encoder.init_std=0.1",
        "allowed_targets=[mylab_encoders.*]",
        "loss=softmax",
        "trainer.epochs=2",
        "trainer.lr=1e-2",
        "trainer.batch_size=512",
        "tracking.save_checkpoint=false",
    )
    assert train(cfg) > 10 * 20 / 2995
    (run,) = finished_runs(cfg)
    assert run.data.params["encoder._target_"] == "mylab_encoders.DotMF"
