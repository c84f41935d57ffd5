"""``trainer.cuda_graph`` on the CPU: the parts the graphed step shares with the eager one (static buffers, the
batches of another size, the fallback decisions with their reasons, the config plumbing), and the CUDA-only
branches run with fake graphs (``FakeGraphs`` in place of ``CudaGraphs``): the first replay checked against the
eager step, and the fallback to the eager step on a failed capture, a failed replay or a mismatch.  The real
capture and replay are checked on a GPU (tests/test_cuda.py, benchmarks/gpu_check.sh)."""

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
from mmlexp.graphed_step import GraphedStep, cuda_graph_mode, eager_reason, state_tensors, training_step
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
    eager = partial(train_step, model_b, loss_b, sampler_b, opt_b, settings=settings)
    step = GraphedStep(eager, batch=8, state=partial(state_tensors, model_b, opt_b))
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


class FakeGraph:
    """A captured step: ``replay`` runs it on the static buffers into the static loss, as a CUDA graph does."""

    def __init__(self, owner: "FakeGraphs", step, users, items):
        self.owner, self.step, self.users, self.items, self.loss = owner, step, users, items, torch.zeros(())

    def replay(self):
        self.owner.replays += 1
        if self.owner.replays == self.owner.replay_fails_at:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture (fake)")
        loss = self.step(self.users, self.items)
        for _ in range(self.owner.extra_updates):  # a graph whose update is not the eager one
            self.step(self.users, self.items)
        self.loss.copy_(loss + self.owner.loss_skew)


class FakeGraphs:
    """``CudaGraphs`` on the CPU: the warm-up runs the step, a capture records it without running it (nothing
    runs during a CUDA capture); ``capture_fails``, ``replay_fails_at`` (1: the first replay), ``loss_skew`` and
    ``extra_updates`` make it go wrong."""

    def __init__(self, capture_fails=False, replay_fails_at=None, loss_skew=0.0, extra_updates=0):
        self.capture_fails, self.replay_fails_at = capture_fails, replay_fails_at
        self.loss_skew, self.extra_updates = loss_skew, extra_updates
        self.warmups = self.captures = self.replays = 0

    def applies(self, users):
        return True

    def warm_up(self, step, users, items):
        self.warmups += 1
        return step(users, items)

    def capture(self, step, users, items, generator):
        self.captures += 1
        if self.capture_fails:
            raise RuntimeError("operation not permitted when stream is capturing (fake)")
        graph = FakeGraph(self, step, users, items)
        return graph, graph.loss

    def default_generator(self, device):
        return torch.default_generator


def eager_and_graphed(graphs: FakeGraphs, epochs=3):
    """The same seeded training eagerly (``train_step``) and through ``GraphedStep`` with ``graphs``: both runs'
    losses, weights, Adam state and generator state.  3 epochs of 3 full batches (and a smaller one): 3 warm-up
    steps, the checked capture at the 4th full batch, 5 replays after it."""
    settings = TrainSettings(l2=1e-3, clip_grad_norm=0.05)
    runs = []
    for graphed in (False, True):
        model, loss_fn, sampler, optimizer = setup()
        eager = partial(train_step, model, loss_fn, sampler, optimizer, settings=settings)
        step = GraphedStep(eager, 8, partial(state_tensors, model, optimizer), sampler.generator, graphs=graphs)
        losses = [float((step if graphed else eager)(users, items)) for users, items in batches(epochs)]
        optimizer.materialize()
        runs.append((losses, state_tensors(model, optimizer), sampler.generator.get_state(), step))
    return runs


def assert_same_training(eager, graphed):
    assert graphed[0] == eager[0]  # every step's loss
    assert all(torch.equal(a, b) for a, b in zip(eager[1], graphed[1], strict=True))  # weights, Adam moments, step
    assert torch.equal(eager[2], graphed[2])  # the sampler's generator: the same draws


def test_the_first_replay_is_checked_against_the_eager_step_and_the_graph_then_trains_as_it(caplog):
    graphs = FakeGraphs()
    with caplog.at_level(logging.INFO, logger="mmlexp.graphed_step"):
        eager, graphed = eager_and_graphed(graphs)
    assert (graphs.warmups, graphs.captures, graphs.replays) == (3, 1, 6)  # the checked replay + 5
    assert_same_training(eager, graphed)  # the eager step of the check was undone: each batch applied once
    step = graphed[3]
    assert step.fallback is None and step.graph is not None
    messages = [r.message for r in caplog.records]
    assert "captured the training step in a CUDA graph (batch 8)" in messages
    assert any(m.startswith("the first replayed step matched the eager one (loss ") for m in messages)
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)


@pytest.mark.parametrize(
    "fake, named, replays",
    [
        ({"capture_fails": True}, "capturing the training step or its first replay failed (RuntimeError('operation", 0),
        ({"replay_fails_at": 1}, "capturing the training step or its first replay failed (RuntimeError('CUDA error", 1),
        ({"replay_fails_at": 3}, "replaying the training step's CUDA graph failed (RuntimeError('CUDA error", 3),
        ({"loss_skew": 0.5}, "the first replayed step does not match the eager one (the loss differs; loss ", 1),
        (
            {"extra_updates": 1},
            "the first replayed step does not match the eager one (state tensor 0 of shape (12, 8)",
            1,
        ),
    ],
    ids=["capture fails", "first replay fails", "third replay fails", "loss mismatch", "update mismatch"],
)
def test_any_failure_of_the_graph_falls_back_to_the_eager_step_with_a_warning(caplog, fake, named, replays):
    """Whatever goes wrong, the run goes on eagerly from where eager training would be: every batch applied once,
    the same losses, weights, Adam state and draws as eager training (the failing batch run eagerly, or the eager
    result of the check put back), and one warning naming the error."""
    graphs = FakeGraphs(**fake)
    with caplog.at_level(logging.INFO, logger="mmlexp.graphed_step"):
        eager, graphed = eager_and_graphed(graphs)
    assert_same_training(eager, graphed)
    assert graphs.replays == replays and graphed[3].fallback is not None and graphed[3].graph is None
    [warning] = [r.message for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.startswith(f"trainer.cuda_graph: {named}") and warning.endswith(
        "; the training step runs eagerly for the rest of the run"
    )
    checked = any(r.message.startswith("the first replayed step matched") for r in caplog.records)
    assert checked == (replays > 1)  # a later replay failed after a checked first one


def test_a_loss_mismatch_names_both_losses_and_the_tolerance(caplog):
    with caplog.at_level(logging.WARNING, logger="mmlexp.graphed_step"):
        eager, _ = eager_and_graphed(FakeGraphs(loss_skew=0.25))
    want = eager[0][4]  # the 4th full batch: the first of epoch 2 (8, 8, 8, 5 rows per epoch)
    [warning] = [r.message for r in caplog.records]
    assert f"(the loss differs; loss {float(torch.tensor(want + 0.25))!r} graphed, {want!r} eager; " in warning
    assert warning.endswith(
        "tolerance rtol 0.0001/0.0001, atol 1e-06/1e-06); the training step runs eagerly for the rest of the run"
    )


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
