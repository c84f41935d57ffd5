"""TableAdam (the default: dense Adam, L2 and clip in one step) against clip + torch Adam; Lazy Adam
(trainer.optimizer=sparse_adam) against torch's SparseAdam and a row-by-row reference."""

import pytest
import torch

from mmlexp import _numba
from mmlexp.encoders import MatrixFactorization
from mmlexp.losses import BPRLoss
from mmlexp.optim import LazyAdam, TableAdam, make_optimizer
from mmlexp.train import TrainSettings, train_step


@pytest.mark.parametrize("kernels", [True, False])  # numba rows update / torch index ops
def test_sparse_gradients_match_torch_sparse_adam(kernels, monkeypatch):
    monkeypatch.setattr(_numba, "AVAILABLE", kernels and _numba.AVAILABLE)
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(10, 3))
    b = torch.nn.Parameter(a.detach().clone())
    ours, ref = LazyAdam([a], lr=0.1), torch.optim.SparseAdam([b], lr=0.1)
    for step in range(5):
        rows = torch.tensor([step % 10, 7, 7, 2])  # repeated rows: summed
        values = torch.randn(4, 3)
        grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, (10, 3), check_invariants=False)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
        torch.testing.assert_close(a, b)


def test_dense_gradient_moves_only_nonzero_rows():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(6, 2))
    before = p.detach().clone()
    opt = LazyAdam([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.zeros(6, 2)
    p.grad[[1, 4]] = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    opt.step()
    moved = (p.detach() != before).any(dim=1)
    assert moved.tolist() == [False, True, False, False, True, False]
    # first Adam step: p - lr * g_hat / (|g_hat| + eps) with g_hat = g + wd * p (touched rows only)
    g_hat = torch.tensor([[1.0, -2.0], [0.5, 0.0]]) + 0.5 * before[[1, 4]]
    torch.testing.assert_close(p.detach()[[1, 4]], before[[1, 4]] - 0.1 * g_hat / (g_hat.abs() + 1e-8))


def test_one_dimensional_parameters_get_dense_adam():
    a = torch.nn.Parameter(torch.tensor([1.0, -1.0, 2.0]))
    b = torch.nn.Parameter(a.detach().clone())
    ours, ref = LazyAdam([a], lr=0.1), torch.optim.Adam([b], lr=0.1)
    for _ in range(3):
        a.grad = torch.tensor([0.3, 0.0, -1.0])
        b.grad = a.grad.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("clip", [1e-3, None])
def test_train_step_with_sparse_adam_leaves_untouched_rows(clip):
    torch.manual_seed(0)
    model = MatrixFactorization(8, 12, dim=4, init_std=0.5)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    settings = TrainSettings(l2=1e-2, clip_grad_norm=clip, optimizer="sparse_adam")
    opt = make_optimizer(model, 0.05, "sparse_adam", l2=1e-2)

    class Fixed:
        def sample(self, users, items, model=None):
            return torch.tensor([[5, 6], [6, 7]])

    train_step(model, BPRLoss(), Fixed(), opt, torch.tensor([0, 3]), torch.tensor([1, 2]), settings)
    users_moved = (model.user_table.detach() != before["user_table"]).any(dim=1).nonzero().squeeze(1).tolist()
    items_moved = (model.item_table.detach() != before["item_table"]).any(dim=1).nonzero().squeeze(1).tolist()
    assert users_moved == [0, 3] and items_moved == [1, 2, 5, 6, 7]


def _grad(kind: str, rows, vals, shape):
    if kind == "dense":
        return torch.zeros(shape, dtype=vals.dtype).index_add_(0, rows, vals)
    if kind == "rows":  # uncoalesced row-sparse (nn.Embedding(sparse=True))
        return torch.sparse_coo_tensor(rows[None], vals, shape, check_invariants=False)
    if kind == "elements":  # element-sparse: read as dense
        return torch.zeros(shape, dtype=vals.dtype).index_add_(0, rows, vals).to_sparse()
    return None


@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("kind", ["dense", "rows", "elements", "none"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("clip", [0.05, None])  # acting, off
def test_table_adam_equals_clip_then_adam_on_grad_plus_l2(kernels, kind, dtype, tol, clip, monkeypatch):
    """TableAdam.step(l2, max_norm) == clip_grad_norm_ then torch Adam on (G + l2 * E) for the decayed table and
    G for the rest, for every gradient layout; the parameter changed outside between steps (cached norm) too."""
    monkeypatch.setattr(_numba, "AVAILABLE", kernels and _numba.AVAILABLE)
    if dtype == torch.float64 and not (kernels and _numba.AVAILABLE):
        tol = 1e-8  # torch's fused kernel takes its clip factor (grad_scale) in float32
    gen = torch.Generator().manual_seed(0)
    table, other = torch.randn(20, 4, generator=gen, dtype=dtype), torch.randn(3, dtype=dtype)
    ours = [torch.nn.Parameter(table.clone()), torch.nn.Parameter(other.clone())]
    ref = [torch.nn.Parameter(table.clone()), torch.nn.Parameter(other.clone())]
    opt = TableAdam([{"params": [ours[0]]}, {"params": [ours[1]], "decay": False}], lr=0.05)
    opt_ref = torch.optim.Adam(ref, lr=0.05, foreach=False)
    l2 = 0.3
    for step in range(5):
        rows, vals = torch.tensor([1, 5, 5, 7 + step]), torch.randn(4, 4, generator=gen, dtype=dtype)
        other_grad = torch.randn(3, generator=gen, dtype=dtype)
        ours[0].grad, ours[1].grad = _grad(kind, rows, vals, table.shape), other_grad.clone()
        opt.step(l2=l2, max_norm=clip)
        dense = torch.zeros_like(table) if kind == "none" else _grad("dense", rows, vals, table.shape)
        ref[0].grad, ref[1].grad = dense + l2 * ref[0].detach(), other_grad.clone()
        if clip:
            torch.nn.utils.clip_grad_norm_(ref, clip)
        opt_ref.step()
        for a, b in zip(ours, ref, strict=True):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=tol, atol=tol)
        if step == 2:  # an outside change: the kept ||E||^2 must not be used
            with torch.no_grad():
                ours[0].mul_(1.5)
                ref[0].mul_(1.5)


@pytest.mark.parametrize("optimizer", [TableAdam, LazyAdam])
@pytest.mark.parametrize(
    ("bad", "message"),
    [({"lr": -0.001}, "lr=-0.001"), ({"betas": (0.9, 1.0)}, r"betas=\(0.9, 1.0\)"), ({"eps": -1e-8}, "eps=-1e-08")],
)
def test_adam_optimizers_refuse_what_torch_adam_refuses(optimizer, bad, message):
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError):  # the reference: torch's own checks refuse the same values
        torch.optim.Adam(params, **bad)
    with pytest.raises(ValueError, match=message):
        optimizer(params, **bad)


@pytest.mark.parametrize("optimizer", [TableAdam, LazyAdam])
def test_adam_optimizers_refuse_a_zero_lr(optimizer):  # stricter than torch: a run that cannot learn
    with pytest.raises(ValueError, match="lr=0"):
        optimizer([torch.nn.Parameter(torch.zeros(2))], lr=0)
