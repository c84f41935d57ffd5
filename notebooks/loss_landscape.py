# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Loss landscape: what each loss does to one negative (and to the positive)
#
# Every loss in `mmlexp.losses` takes a score matrix `scores[B, 1+N]` (column 0 the positive, columns
# 1..N the sampled negatives, cosine scores in [-1, 1]) and returns a scalar. This notebook does not
# re-type any formula: it composes the **real configs** (`conf/loss/*.yaml` + `conf/dataset_loss/*.yaml`,
# exactly what `python -m mmlexp dataset=gowalla loss=mml` trains with), instantiates the **real modules**,
# feeds them one row in which a single score sweeps a grid while the others stay fixed, and takes the
# gradient with `torch.autograd`. So the curves are what the code does.
#
# Formulas and settings: `shared/docs/paper-reference.md` §1 (MML), §2 (CCL), §5 (BSL), §6 (SSM), §7 (the rest).
#
# Source of truth: `notebooks/loss_landscape.py` (jupytext percent format, paired with the `.ipynb`).

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto, imported by mmlexp.run
from mmlexp.__main__ import CONFIG_DIR
from mmlexp.run import OWN_TARGETS, build

N = 100  # negatives per row (the paper's baselines ran with 100)
POS = 0.8  # the positive's score while a negative sweeps
REST = 0.0  # the other N-1 negatives (random items sit near cosine 0)
GRID = np.linspace(-1.0, 1.0, 801)


def load_loss(dataset: str, loss: str):
    """The loss module a run with ``dataset=<dataset> loss=<loss>`` builds (config composed, allow-listed)."""
    with initialize_config_dir(config_dir=CONFIG_DIR):
        cfg = compose("config", overrides=[f"dataset={dataset}", f"loss={loss}"])
    return build("loss", cfg.loss, OWN_TARGETS)


def sweep(loss, grid, column: int, n_neg: int = N, pos: float = POS, rest: float = REST):
    """Loss of ONE row and d loss / d scores[0, column], while ``scores[0, column]`` runs over ``grid``.

    Column 0 is the positive (set to ``pos``), the negatives to ``rest``. Each grid point is its own call
    with B = 1 (vectorised with ``torch.func.vmap``), so batch reductions (mean or sum over rows) do not matter."""
    rows = torch.full((len(grid), 1 + n_neg), rest, dtype=torch.float64)
    rows[:, 0] = pos
    rows[:, column] = torch.as_tensor(np.asarray(grid, dtype=float))
    one_row = lambda row: loss(row.unsqueeze(0))  # noqa: E731
    values = torch.func.vmap(one_row)(rows)
    grads = torch.func.vmap(torch.func.grad(one_row))(rows)
    return values.numpy(), grads[:, column].numpy()


# %%
LOSSES = {
    "MML Gowalla": load_loss("gowalla", "mml"),
    "MML Yelp2018": load_loss("yelp2018", "mml"),
    "CCL": load_loss("gowalla", "ccl"),
    "BSL Gowalla": load_loss("gowalla", "bsl"),
    "BSL Yelp2018": load_loss("yelp2018", "bsl"),
    "SSM Gowalla": load_loss("gowalla", "ssm"),
    "InfoNCE": load_loss("gowalla", "infonce"),
    "softmax CE": load_loss("gowalla", "softmax"),
    "pairwise hinge": load_loss("gowalla", "hinge"),
    "BPR": load_loss("gowalla", "bpr"),
    "MSE": load_loss("gowalla", "mse"),
}
for name, loss in LOSSES.items():
    print(f"{name:15s} {loss!r}")

# %% [markdown]
# ## 1. MML vs CCL: a convex piecewise-linear penalty on a negative
#
# MML (eq. 7) adds, for every negative j, `w_neg · (1/N) · Σ_k w_k · max(0, s_j − m_k)`; CCL is the special
# case of one margin (0.9) with weight 1 and `w_neg = 150`. Multiplying by N removes the `1/N`, so the
# curves below are the **per-negative penalty** `N · (ℓ(s) − ℓ(−1))` and the **per-negative slope**
# `N · ∂ℓ/∂s_j`, the same whatever N is and whatever the other scores are.
#
# * **Gowalla** (margins 0.7/0.8/0.9, weights 0.10/0.15/0.75, `w_neg` 700): slope 0 below 0.7, then
#   70 on (0.7, 0.8], 175 on (0.8, 0.9] and 700 above 0.9.
# * **Yelp2018** (margins 0.6/0.7/0.8/0.9, weights 0.05/0.15/0.20/0.60, `w_neg` 400): 20 / 80 / 160 / 400.
# * **CCL** (margin 0.9, `w_neg` 150): 0, then 150 above 0.9 only.
#
# So MML starts pushing a negative away earlier than CCL (at 0.7 or 0.6 instead of 0.9) but gently, and
# above 0.9 it pushes 4.7× (Gowalla) or 2.7× (Yelp) harder than CCL: a convex ramp that puts more weight
# on harder negatives, a piecewise-linear stand-in for the exponential weighting of softmax losses
# (section 2) without any `exp`. At s = 1 the penalty is 700 · 0.135 = 94.5 (Gowalla), 400 · 0.165 = 66
# (Yelp) and 150 · 0.1 = 15 (CCL).

# %%
margin_losses = ["MML Gowalla", "MML Yelp2018", "CCL"]
fig, (ax_pen, ax_grad) = plt.subplots(1, 2, figsize=(12, 4.2))
for name in margin_losses:
    values, grads = sweep(LOSSES[name], GRID, column=1)
    ax_pen.plot(GRID, N * (values - values[0]), label=name)
    ax_grad.plot(GRID, N * grads, label=name)
for ax in (ax_pen, ax_grad):
    for m in (0.6, 0.7, 0.8, 0.9):
        ax.axvline(m, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel("score of one negative $s_j$")
    ax.legend()
    ax.set_xlim(0.4, 1.0)
ax_pen.set_ylabel(r"$N\cdot(\ell(s_j) - \ell(-1))$  per-negative penalty")
ax_grad.set_ylabel(r"$N\cdot\partial\ell/\partial s_j$  per-negative slope")
ax_pen.set_title("penalty of one negative (zero below the first margin)")
ax_grad.set_title("its gradient: piecewise constant")
fig.tight_layout()
plt.show()

# %% [markdown]
# The slopes, read off the autograd gradient in the middle of each interval, and checked against the
# margins and weights the module holds (`w_neg · Σ_{k: m_k < s} w_k`):

# %%
points = [0.55, 0.65, 0.75, 0.85, 0.95]
slopes = pd.DataFrame(
    {name: N * sweep(LOSSES[name], points, column=1)[1] for name in margin_losses},
    index=pd.Index(points, name="s_j"),
).T
for name in margin_losses:
    loss = LOSSES[name]
    margins, weights = getattr(loss, "margins", [getattr(loss, "margin", None)]), getattr(loss, "weights", [1.0])
    expected = [loss.neg_weight * sum(w for m, w in zip(margins, weights, strict=True) if m < s) for s in points]
    np.testing.assert_allclose(slopes.loc[name].to_numpy(), expected, rtol=1e-9, atol=1e-9)
slopes.round(3)

# %% [markdown]
# ## 2. Every loss, one negative: how hard does it push?
#
# The same per-negative slope `N · ∂ℓ/∂s_j` for all losses (positive at 0.8, the other 99 negatives at 0;
# symlog y axis: linear near 0, logarithmic above 1).
#
# * **Margin / pairwise family** (left): MML and CCL are flat zero, then constant steps. The pairwise hinge
#   (margin 0.9, `max(0, 0.9 + s_j − s_0)`) is a single step where `s_j > s_0 − 0.9`; BPR is a smooth
#   sigmoid `σ(s_j − s_0)` that never exceeds 1; MSE sums over the negatives, so its slope is `N · s_j`
#   (it pulls every negative towards 0, including negatives with negative scores).
# * **Softmax family** (right): softmax CE, InfoNCE (τ 0.1), SSM (τ 0.12) and BSL (τ1 0.08 / 0.11) weight a
#   negative by its softmax probability / τ, i.e. **exponentially** in `s_j / τ`: almost nothing at low
#   scores, then a steep rise. MML's ramp (dashed) follows the same convex shape with three linear pieces.
#   BSL's negative side is a softmax over the negatives only (the positive is not in its denominator),
#   scaled by τ2/τ1, so it saturates at `N · τ2/τ1` (≈ 1525 on Gowalla) once one negative dominates.
#   Without a temperature (softmax CE, τ = 1) the weighting is nearly flat on cosine scores.
#   (The bend of the curves at ±1 is the symlog axis switching from linear to log.)

# %%
pairwise = ["MML Gowalla", "MML Yelp2018", "CCL", "pairwise hinge", "BPR", "MSE"]
softmaxes = ["softmax CE", "InfoNCE", "SSM Gowalla", "BSL Gowalla", "BSL Yelp2018"]
curves = {name: sweep(LOSSES[name], GRID, column=1) for name in pairwise + softmaxes}

fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
for ax, names, title in ((axes[0], pairwise, "margin / pairwise losses"), (axes[1], softmaxes, "softmax losses")):
    for name in names:
        ax.plot(GRID, N * curves[name][1], label=name)
    if names is softmaxes:
        ax.plot(GRID, N * curves["MML Gowalla"][1], "k--", lw=1, label="MML Gowalla")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("score of one negative $s_j$")
    ax.set_title(title)
    ax.legend(fontsize=8)
axes[0].set_ylabel(r"$N\cdot\partial\ell/\partial s_j$")
fig.suptitle(f"gradient on one negative (N={N}, positive at {POS}, other negatives at {REST})")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Local vs. relative weighting
#
# MML/CCL are **local**: a negative's gradient depends on its own score only. Softmax losses are
# **relative**: its gradient is its share of the softmax, so it falls when the other negatives score
# higher (harder batches spread the same total push over more negatives). Below, the other N−1 negatives
# sit at different scores; MML's curve does not move, BSL's and InfoNCE's do.

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
for ax, name in zip(axes, ["MML Gowalla", "BSL Gowalla", "InfoNCE"], strict=True):
    for rest in (-0.2, 0.0, 0.3, 0.6):
        ax.plot(GRID, N * sweep(LOSSES[name], GRID, column=1, rest=rest)[1], label=f"other negatives at {rest}")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_title(name)
    ax.set_xlabel("score of one negative $s_j$")
    ax.legend(fontsize=8)
axes[0].set_ylabel(r"$N\cdot\partial\ell/\partial s_j$")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. The positive term
#
# Loss and `∂ℓ/∂s_0` against the positive's score (negatives at 0). MML (`w_pos = 1`) and CCL share
# `max(0, 1 − s_0)`: slope −1 everywhere below 1, whatever the negatives do, and zero above 1 (reachable in
# training only, when the user-side dropout scales the normalised vector: |s| ≤ 1/(1−0.1) ≈ 1.11).
# InfoNCE and SSM pull the positive with `−(1 − p_0)/τ`: hard while the positive is not yet on top of its
# row, fading once it dominates (SSM sums over the batch; with one row it is InfoNCE at τ 0.12). BSL's
# positive term is `−s_0/τ1` (no softmax over the positive, no τ2; in mode `multi` a log-mean-exp over the
# rows of the same user, here one): a constant pull of 1/τ1 = 12.5 that never fades. BPR pulls with
# `σ(s_j − s_0)` averaged over the negatives, MSE with `s_0 − 1`.

# %%
pos_grid = np.linspace(-1.0, 1.11, 445)
fig, (ax_val, ax_grad) = plt.subplots(1, 2, figsize=(12, 4.2))
for name in ["MML Gowalla", "CCL", "BSL Gowalla", "SSM Gowalla", "InfoNCE", "softmax CE", "BPR", "MSE"]:
    values, grads = sweep(LOSSES[name], pos_grid, column=0)
    ax_val.plot(pos_grid, values, label=name)
    ax_grad.plot(pos_grid, grads, label=name)
ax_val.set_ylabel(r"$\ell$ (one row)")
ax_grad.set_ylabel(r"$\partial\ell/\partial s_0$")
ax_grad.set_yscale("symlog", linthresh=1.0)
for ax in (ax_val, ax_grad):
    ax.axvline(1.0, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel("score of the positive $s_0$")
    ax.legend(fontsize=8)
fig.suptitle(f"the positive term (N={N} negatives at {REST})")
fig.tight_layout()
plt.show()
