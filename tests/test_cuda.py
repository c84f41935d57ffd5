"""The CUDA path against the CPU path (skipped where no GPU is visible; run on a lent GPU machine with
``benchmarks/gpu_check.sh``).  Every option trains through the real ``train(cfg)`` with ``device=cuda`` (5 steps:
3 eager warm-up steps, then the training step is captured as a CUDA graph and replayed where the options allow);
the graphed step (``trainer.cuda_graph``) against the eager one, its seeds, fallbacks and resume."""

import logging
import math
from functools import partial
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

from mmlexp.encoders import MatrixFactorization
from mmlexp.encoders.cosine import cosine_gather_scores
from mmlexp.graphed_step import GraphedStep, training_step
from mmlexp.losses import MultiMarginLoss
from mmlexp.optim import make_optimizer
from mmlexp.run import train
from mmlexp.samplers import PopularitySampler, UniformSampler
from mmlexp.train import TrainSettings, fit, train_step
from tests.conftest import CONF
from tests.reference import FixedSampler, reference_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY = [
    "trainer.epochs=1",
    "trainer.max_steps=5",
    "num_negatives=8",
    "trainer.batch_size=64",
    "tracking.enabled=false",
    "tracking.save_checkpoint=false",
    "device=cuda",
]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_cosine_gather_scores_on_cuda_matches_cpu_autograd(dtype, tol):
    g = torch.Generator().manual_seed(0)
    table = torch.randn(300, 16, generator=g, dtype=dtype)
    users = torch.randn(32, 16, generator=g, dtype=dtype)
    items = torch.randint(300, (32, 40), generator=g)
    items[0, :5] = 7  # repeated rows accumulate
    upstream = torch.randn(32, 40, generator=g, dtype=dtype)

    t_gpu, u_gpu = table.cuda().requires_grad_(), users.cuda().requires_grad_()
    ours = cosine_gather_scores(u_gpu, t_gpu, items.cuda())
    (ours * upstream.cuda()).sum().backward()

    t_cpu, u_cpu = table.detach().clone().requires_grad_(), users.detach().clone().requires_grad_()
    ref = torch.einsum("bd,bcd->bc", u_cpu, F.normalize(t_cpu[items], dim=-1))
    (ref * upstream).sum().backward()
    for a, b in ((ours, ref), (u_gpu.grad, u_cpu.grad), (t_gpu.grad, t_cpu.grad)):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), rtol=tol, atol=tol)


@pytest.mark.parametrize("clip", [0.05, 1e6])  # acting and idle
def test_cuda_train_steps_equal_cpu_reference_adam(clip):
    """Fused CUDA Adam with grad_scale clipping == plain CPU Adam on autograd of loss + (l2/2)||E||^2.
    In float64: Adam divides by sqrt(v), so on a near-zero gradient a float32 rounding difference between
    the devices' sums would show up as a visible step difference."""
    torch.manual_seed(1)
    a = MatrixFactorization(60, 90, dim=8, dropout=0.0, init_std=0.5).double()
    b = MatrixFactorization(60, 90, dim=8, dropout=0.0, init_std=0.5).double()
    b.load_state_dict(a.state_dict())
    a.cuda()
    loss_fn, l2 = MultiMarginLoss(neg_weight=3.0), 0.3
    opt_a = make_optimizer(a, 0.05)
    opt_b = torch.optim.Adam(b.parameters(), lr=0.05, foreach=False)
    settings = TrainSettings(l2=l2, clip_grad_norm=clip)
    gen = torch.Generator().manual_seed(2)
    for _ in range(4):
        users, items = torch.randint(60, (16,), generator=gen), torch.randint(90, (16,), generator=gen)
        negatives = torch.randint(90, (16, 5), generator=gen)
        train_step(a, loss_fn, FixedSampler(negatives.cuda()), opt_a, users.cuda(), items.cuda(), settings)
        reference_step(b, loss_fn, opt_b, users, items, negatives, l2, clip)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.detach().cpu(), pb.detach(), rtol=1e-7, atol=1e-9)


def test_samplers_draw_on_the_device_with_the_cpu_distribution():
    """Uniform (with exclusion) and popularity samplers draw on CUDA; frequencies match the CPU draw's."""
    import numpy as np
    import scipy.sparse as sp

    n_items = 50
    counts = np.arange(1, n_items + 1)  # item i has i+1 users (users 0..i)
    items, users = np.tril_indices(n_items)
    train = sp.csr_matrix((np.ones(items.size), (users, items)), shape=(n_items, n_items))
    sampler = PopularitySampler(
        200, n_items, train=train, device="cuda", generator=torch.Generator("cuda").manual_seed(0)
    )
    draw = sampler.sample(torch.zeros(500, dtype=torch.long, device="cuda"))
    assert draw.device.type == "cuda"
    freq = torch.bincount(draw.flatten().cpu(), minlength=n_items).double() / draw.numel()
    torch.testing.assert_close(freq, torch.from_numpy(counts / counts.sum()), rtol=0, atol=3e-3)

    train = sp.csr_matrix((np.ones(3), ([0, 0, 1], [1, 2, 3])), shape=(2, 5))
    uniform = UniformSampler(
        400, 5, train=train, exclude_positives=True, device="cuda", generator=torch.Generator("cuda").manual_seed(0)
    )
    neg = uniform.sample(torch.tensor([0, 1], device="cuda"))
    assert neg.device.type == "cuda"
    assert not torch.isin(neg[0], torch.tensor([1, 2], device="cuda")).any()
    assert not (neg[1] == 3).any()


LOSSES = sorted(p.stem for p in (CONF / "loss").glob("*.yaml"))
SAMPLERS = sorted(p.stem for p in (CONF / "sampler").glob("*.yaml"))
ENCODERS = sorted(p.stem for p in (CONF / "encoder").glob("*.yaml"))


@pytest.mark.parametrize(
    "override",
    [f"loss={x}" for x in LOSSES]
    + [f"sampler={x}" for x in SAMPLERS]
    + [f"encoder={x}" for x in ENCODERS]
    + ["trainer.optimizer=sparse_adam", "trainer.precision=bf16"],
)
def test_every_option_trains_through_the_entrypoint_on_cuda(make_cfg, override):
    value = train(make_cfg(override, *TINY))
    assert math.isfinite(value) and 0 <= value <= 1


def test_device_auto_picks_cuda_and_learns(make_cfg):
    """``device=auto`` trains on the GPU and learns: Recall@20 far above random (20/2995) after 2 epochs."""
    from mmlexp.run import resolve_device

    assert resolve_device("auto").type == "cuda"
    cfg = make_cfg(
        "device=auto",
        "trainer.epochs=2",
        "trainer.lr=1e-3",
        "trainer.batch_size=512",
        "tracking.enabled=false",
        "tracking.save_checkpoint=false",
    )
    assert train(cfg) > 10 * 20 / 2995


# ---------------------------------------------------------------------- the training step as one CUDA graph

#: graphed against eager CUDA training: the backward's index_add_ sums with atomics, in no fixed order
CLOSE = dict(rtol=1e-3, atol=1e-5)


class RecordingUniform(UniformSampler):
    """Uniform negatives; a full batch's are also copied into ``last`` (a copy a graph captures as well)."""

    def __init__(self, *args, batch: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.last = torch.zeros(batch, self.num_negatives, dtype=torch.long, device=self.device)

    def sample(self, users, pos_items=None, model=None):
        negatives = super().sample(users, pos_items, model)
        if negatives.shape == self.last.shape:
            self.last.copy_(negatives)
        return negatives


class Trained(NamedTuple):
    captured: bool
    params: list[torch.Tensor]
    negatives: torch.Tensor  # [full batches, B, N]
    losses: torch.Tensor
    rng: list[torch.Tensor]  # the sampler's generator and the default CUDA generator (dropout), after training


def cuda_steps(mode: str, seed: int = 0, steps: int = 300, batch: int = 64, n_users=200, n_items=500) -> Trained:
    """MF (dropout 0.1) + MML + TableAdam trained ``steps`` batches on CUDA through ``training_step`` with
    ``trainer.cuda_graph=mode``; every 50th batch is smaller (eager between replays).  The batches are the same
    for every call; ``seed`` seeds the model, the sampler's generator and dropout."""
    torch.manual_seed(seed)
    model = MatrixFactorization(n_users, n_items, dim=16, init_std=0.1).cuda()
    gen = torch.Generator("cuda").manual_seed(seed)
    sampler = RecordingUniform(20, n_items, generator=gen, device="cuda", batch=batch)
    optimizer = make_optimizer(model, 1e-3)
    settings = TrainSettings(batch_size=batch, l2=1e-4, clip_grad_norm=1.0, cuda_graph=mode)
    eager = partial(train_step, model, MultiMarginLoss(), sampler, optimizer, settings=settings)
    step = training_step(eager, model, sampler, optimizer, settings)
    rows = torch.Generator().manual_seed(123)
    negatives, losses = [], []
    for k in range(steps):
        size = batch - 7 if k % 50 == 49 else batch
        users, items = torch.randint(n_users, (size,), generator=rows), torch.randint(n_items, (size,), generator=rows)
        losses.append(step(users.cuda(), items.cuda()).item())
        if size == batch:
            negatives.append(sampler.last.clone())
    captured = isinstance(step, GraphedStep) and step.graph is not None
    params = [p.detach().clone() for p in model.parameters()]
    return Trained(
        captured, params, torch.stack(negatives), torch.tensor(losses), [gen.get_state(), torch.cuda.get_rng_state()]
    )


def assert_same_draws_and_close(a: Trained, b: Trained) -> None:
    assert torch.equal(a.negatives, b.negatives)  # the same random stream, draw for draw
    assert all(torch.equal(x, y) for x, y in zip(a.rng, b.rng, strict=True))
    torch.testing.assert_close(a.losses, b.losses, **CLOSE)
    for x, y in zip(a.params, b.params, strict=True):
        torch.testing.assert_close(x, y, **CLOSE)


def test_graphed_training_equals_eager_training_on_cuda():
    """300 steps of MF + MML: the graph draws the eager negatives and dropout masks, and ends at the eager weights
    (within the atomics' rounding: the weights of another seed are far outside that tolerance)."""
    graphed, eager, other = cuda_steps("on"), cuda_steps("off"), cuda_steps("off", seed=1)
    assert graphed.captured and not eager.captured
    assert_same_draws_and_close(graphed, eager)
    assert not torch.allclose(graphed.params[0], other.params[0], **CLOSE)


def test_two_graphed_runs_with_the_same_seed_are_identical():
    a, b = cuda_steps("on", seed=3, steps=120), cuda_steps("on", seed=3, steps=120)
    assert a.captured and b.captured
    assert_same_draws_and_close(a, b)


def test_the_default_config_captures_the_step_on_cuda(make_cfg, caplog):
    with caplog.at_level(logging.INFO, logger="mmlexp.graphed_step"):
        train(make_cfg(*TINY))
    messages = [r.message for r in caplog.records]
    assert "captured the training step in a CUDA graph (batch 64)" in messages
    assert not any("runs eagerly" in m for m in messages)


@pytest.mark.parametrize(
    "override, named",
    [
        ("sampler=hard", "sampler=hard"),
        ("sampler.exclude_positives=true", "exclude_positives"),
        ("trainer.optimizer=sparse_adam", "trainer.optimizer=sparse_adam"),
        ("trainer.precision=bf16", "trainer.precision=bf16"),
        ("encoder=lightgcn", "encoder LightGCN"),
        ("encoder=simplex", "encoder SimpleX"),
    ],
)
def test_options_that_cannot_be_captured_train_eagerly_and_say_why(make_cfg, caplog, override, named):
    with caplog.at_level(logging.INFO, logger="mmlexp.graphed_step"):
        value = train(make_cfg(override, "trainer.cuda_graph=on", *TINY))
    assert math.isfinite(value)
    warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and named in warned[0] and "runs eagerly" in warned[0]
    assert not any("captured" in r.message for r in caplog.records)


def test_a_graphed_run_resumed_from_its_checkpoint_ends_as_the_uninterrupted_one(tmp_path):
    """The checkpoint holds Adam's device ``step`` and the generators as replays left them; it is read back
    on the CPU (as ``find_resume`` does) and training goes on, graphed again."""

    def run(epochs: int, resume: dict | None = None):
        torch.manual_seed(0)
        model = MatrixFactorization(200, 500, dim=16, init_std=0.1).cuda()
        gen = torch.Generator("cuda").manual_seed(0)
        sampler = UniformSampler(20, 500, generator=gen, device="cuda")
        rows = torch.Generator().manual_seed(5)
        users, items = (
            torch.randint(200, (1000,), generator=rows).cuda(),
            torch.randint(500, (1000,), generator=rows).cuda(),
        )
        settings = TrainSettings(epochs=epochs, batch_size=64, progress=False, cuda_graph="on")
        states: list[dict] = []
        optimizer = make_optimizer(model, 1e-3)
        evaluate = lambda: {"recall@20": 0.0}  # noqa: E731
        fit(
            model,
            MultiMarginLoss(),
            sampler,
            optimizer,
            users,
            items,
            evaluate,
            settings,
            gen,
            checkpoint=states.append,
            resume=resume,
        )
        return [p.detach().clone() for p in model.parameters()], states

    whole, _ = run(3)
    _, states = run(1)
    torch.save(states[-1], tmp_path / "checkpoint.pt")
    resumed, _ = run(3, resume=torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True))
    for a, b in zip(whole, resumed, strict=True):
        torch.testing.assert_close(a, b, **CLOSE)
