"""The CUDA path against the CPU path (skipped where no GPU is visible; run on a lent GPU machine with
``benchmarks/gpu_check.sh``).  Every option trains through the real ``train(cfg)`` with ``device=cuda``."""

import math

import pytest
import torch
import torch.nn.functional as F

from mmlexp.encoders import MatrixFactorization
from mmlexp.losses import MultiMarginLoss
from mmlexp.ops import cosine_gather_scores
from mmlexp.run import train
from mmlexp.samplers import PopularitySampler, UniformSampler
from mmlexp.train import TrainSettings, make_optimizer, train_step
from tests.conftest import CONF
from tests.reference import FixedSampler, reference_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY = [
    "trainer.epochs=1",
    "trainer.max_steps=3",
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
