"""``trainer.cuda_graph`` on the CPU: the parts the graphed step shares with the eager one (static buffers, the
batches of another size, the fallback decisions with their reasons, the config plumbing).  The capture and replay
themselves are checked on a GPU (tests/test_cuda.py)."""

import logging
from functools import partial

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmlexp.checkpoint import changed_settings
from mmlexp.config import ConfigError, validate
from mmlexp.encoders import LightGCN, MatrixFactorization, SimpleX
from mmlexp.encoders.base import EmbeddingEncoder
from mmlexp.graphed_step import GraphedStep, cuda_graph_mode, eager_reason, training_step
from mmlexp.losses import MultiMarginLoss
from mmlexp.optim import make_optimizer
from mmlexp.run import train
from mmlexp.samplers import HardNegativeSampler, InBatchSampler, UniformSampler
from mmlexp.train import TrainSettings, train_step
from tests.reference import FixedSampler

N_USERS, N_ITEMS = 12, 30


def setup(sampler_cls=UniformSampler, **sampler_kwargs):
    """A seeded MF + MML + TableAdam with its sampler (its own generator): the same objects for the same call."""
    torch.manual_seed(0)
    model = MatrixFactorization(N_USERS, N_ITEMS, dim=8, init_std=0.1)
    gen = torch.Generator().manual_seed(1)
    sampler = sampler_cls(num_negatives=5, n_items=N_ITEMS, generator=gen, **sampler_kwargs)
    return model, MultiMarginLoss(), sampler, make_optimizer(model, 1e-2)


def batches(epochs=2, batch=8, rows=29):
    """Two epochs of shuffled rows: full batches of ``batch`` and a smaller last one (29 = 3 x 8 + 5)."""
    gen = torch.Generator().manual_seed(2)
    users, items = torch.randint(N_USERS, (rows,), generator=gen), torch.randint(N_ITEMS, (rows,), generator=gen)
    for _ in range(epochs):
        order = torch.randperm(rows, generator=gen)
        for first in range(0, rows, batch):
            yield users[order[first : first + batch]], items[order[first : first + batch]]


@pytest.mark.parametrize("sampler_cls", [UniformSampler, InBatchSampler])
def test_the_buffered_step_equals_train_step_bit_for_bit(sampler_cls):
    """The static-buffer step (run eagerly off CUDA) gives the losses, weights and Adam state of ``train_step``,
    full batches and the epoch's smaller last batch alike (in-batch negatives: N follows the batch)."""
    settings = TrainSettings(l2=1e-3, clip_grad_norm=0.05)  # a clip that acts
    model_a, loss_a, sampler_a, opt_a = setup(sampler_cls)  # one run after the other: dropout draws from torch's RNG
    expected = [train_step(model_a, loss_a, sampler_a, opt_a, users, items, settings) for users, items in batches()]
    model_b, loss_b, sampler_b, opt_b = setup(sampler_cls)
    step = GraphedStep(partial(train_step, model_b, loss_b, sampler_b, opt_b, settings=settings), batch=8)
    sizes = []
    for (users, items), loss in zip(batches(), expected, strict=True):
        assert torch.equal(step(users, items), loss)
        sizes.append(users.shape[0])
    assert sizes.count(5) == 2 and step.users is not None and step.users.shape == (8,)
    opt_a.materialize(), opt_b.materialize()
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(a, b)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt_a.state[a][key], opt_b.state[b][key])
    assert torch.equal(sampler_a.generator.get_state(), sampler_b.generator.get_state())


def test_in_batch_keeps_the_index_of_every_batch_size():
    """A graph of the full batch reads its index tensor: the smaller last batch must not replace (free) it."""
    sampler = InBatchSampler()
    full = sampler._others(8, torch.device("cpu"))
    sampler._others(5, torch.device("cpu"))
    assert sampler._others(8, torch.device("cpu")) is full


def _train_matrix():
    rows = np.arange(N_USERS).repeat(2)
    return sp.csr_matrix((np.ones(rows.size), (rows, (rows * 7) % N_ITEMS)), shape=(N_USERS, N_ITEMS))


class OwnEncoder(EmbeddingEncoder):
    """An encoder of one's own that declares no capability."""

    def __init__(self, n_users, n_items, dim, train=None):
        super().__init__(n_users, n_items, dim, init_std=1e-4, similarity="cosine")


@pytest.mark.parametrize(
    "change, named",
    [
        ({}, "on cpu, not CUDA"),  # capturable options: only the device is left
        ({"settings": {"precision": "bf16"}}, "trainer.precision=bf16"),
        ({"settings": {"optimizer": "sparse_adam"}}, "trainer.optimizer=sparse_adam (LazyAdam)"),
        ({"optimizer": "torch_adam"}, "trainer.optimizer=adam (Adam)"),
        ({"optimizer": "defer"}, "TableAdam(defer=True)"),
        ({"model": LightGCN}, "encoder LightGCN"),
        ({"model": SimpleX}, "encoder SimpleX"),
        ({"sampler": "hard"}, "sampler=hard"),
        ({"sampler": "exclude"}, "exclude_positives=true"),
        ({"sampler": "fixed"}, "sampler FixedSampler is not known to be capturable"),
        ({"model": OwnEncoder}, "encoder OwnEncoder is not known to be capturable"),  # the encoders' safe default
    ],
)
def test_eager_reason_names_the_option(change, named):
    settings = TrainSettings(**change.get("settings", {}))
    model = change.get("model", MatrixFactorization)(N_USERS, N_ITEMS, dim=4, train=_train_matrix())
    optimizer = {
        "torch_adam": lambda: torch.optim.Adam(model.parameters()),
        "defer": lambda: make_optimizer(model, 1e-3, defer=True),
    }.get(change.get("optimizer"), lambda: make_optimizer(model, 1e-3, settings.optimizer))()
    sampler = {
        "hard": lambda: HardNegativeSampler(4, N_ITEMS),
        "exclude": lambda: UniformSampler(4, N_ITEMS, train=_train_matrix(), exclude_positives=True),
        "fixed": lambda: FixedSampler(torch.zeros(1, 4, dtype=torch.long)),
    }.get(change.get("sampler"), lambda: UniformSampler(4, N_ITEMS))()
    reason = eager_reason(model, sampler, optimizer, settings)
    assert reason is not None and named in reason


def test_training_step_off_cuda_is_the_eager_step_and_on_says_why(caplog):
    model, loss_fn, sampler, optimizer = setup()
    step = partial(train_step, model, loss_fn, sampler, optimizer)
    with caplog.at_level(logging.INFO, logger="mmlexp.graphed_step"):
        for mode in ("auto", "off"):
            assert training_step(step, model, sampler, optimizer, TrainSettings(cuda_graph=mode)) is step
        assert not caplog.records  # auto off CUDA and off: nothing to say
        assert training_step(step, model, sampler, optimizer, TrainSettings(cuda_graph="on")) is step
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "trainer.cuda_graph=on" in record.message and "cpu" in record.message
    with pytest.raises(ValueError, match=r"^trainer.cuda_graph='yes': must be one of auto, on, off"):
        training_step(step, model, sampler, optimizer, TrainSettings(cuda_graph="yes"))


def test_cuda_graph_mode_takes_yaml_booleans():
    """YAML reads a bare on/off as a boolean."""
    assert [cuda_graph_mode(v) for v in ("auto", "on", "off", True, False)] == ["auto", "on", "off", "on", "off"]


def test_the_config_default_is_auto_and_bad_values_are_refused(make_cfg):
    assert make_cfg().trainer.cuda_graph == "auto"
    validate(make_cfg("trainer.cuda_graph=on"))
    validate(make_cfg("trainer.cuda_graph=false"))
    with pytest.raises(ConfigError, match=r"^trainer.cuda_graph='always': must be one of auto, on, off"):
        validate(make_cfg("trainer.cuda_graph=always"))


def test_the_entrypoint_passes_cuda_graph_to_the_trainer(make_cfg, caplog):
    """``trainer.cuda_graph=on`` on the CPU reaches ``fit``: it trains eagerly and says why once."""
    cfg = make_cfg("trainer.cuda_graph=on", "trainer.max_steps=2", "num_negatives=5", "tracking.enabled=false")
    with caplog.at_level(logging.WARNING, logger="mmlexp.graphed_step"):
        train(cfg)
    assert [r.message for r in caplog.records if "trainer.cuda_graph=on" in r.message] == [
        "trainer.cuda_graph=on: the training step runs eagerly (the model, sampler or generator is on cpu, not CUDA)"
    ]


def test_a_resumed_run_may_change_cuda_graph():
    """How the step runs, not what it computes: a checkpoint of another setting (or of before it) resumes."""
    assert changed_settings("trainer:\n  cuda_graph: auto\n", {"trainer": {"cuda_graph": "off"}}) == []
    assert changed_settings("trainer:\n  lr: 0.1\n", {"trainer": {"lr": 0.1, "cuda_graph": "auto"}}) == []
