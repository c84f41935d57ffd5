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
# # Recall@20 / NDCG@20 against the number of negatives
#
# The paper's Figure 3 for **any** tracked experiment: every FINISHED training run in the MLflow store
# (sweep parent runs left out), one line per loss, one panel per dataset × metric, the number of negatives
# on a log axis, the mean over seeds with its 95% t-interval where a point has more than one seed.
#
# Make the runs with a sweep, e.g.
#
# ```bash
# python -m mmlexp -m dataset=gowalla loss=mml,ccl num_negatives=10,50,100,200,400,800 seed=1,2,3 \
#     tracking.experiment=negatives
# ```
#
# The data come from `mmlexp.report` (`fetch_runs` → `negative_curves` → `plot_negative_curves`), the same
# functions `python -m mmlexp.report` uses, so the notebook and the report agree.
#
# Without an MLflow store, set `RUNS_CSV` to a committed `runs.csv` (e.g. `results/gowalla/runs.csv`, the
# Gowalla reproduction): the runs are then read from it (`mmlexp.report.read_runs`), not from MLflow.
#
# Source of truth: `notebooks/negative_curves.py` (jupytext percent format, paired with the `.ipynb`).

# %% tags=["parameters"]
TRACKING_URI = (
    "sqlite:///mlflow.db"  # the MLflow store; a relative SQLite path is looked up in the cwd, then the repo root
)
EXPERIMENTS = None  # experiment names (list, or one comma-separated string); None: every experiment
FILTER = ""  # extra MLflow search filter, e.g. "params.trainer.epochs = '100'"
METRICS = ("recall@20", "ndcg@20")  # best-epoch metrics to draw
CSV_OUT = None  # also write the aggregated table to this CSV path; None: do not
RUNS_CSV = None  # a committed runs.csv (python -m mmlexp.report --export-csv) to read instead of the store

# %%
# Environment variables win over the cell above (tests, CI, make): MMLEXP_TRACKING_URI,
# MMLEXP_EXPERIMENTS (comma-separated), MMLEXP_FILTER, MMLEXP_METRICS (comma-separated), MMLEXP_CURVES_CSV,
# MMLEXP_RUNS_CSV.
import io
import os
import warnings
from pathlib import Path

import pandas as pd
from IPython.display import Image, display

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto in a kernel without ipywidgets
from mmlexp.report import ReportError, drop_duplicates, fetch_runs, negative_curves, plot_negative_curves, read_runs


def show(fig):
    """Display a ``matplotlib.figure.Figure`` as PNG (the report's figures are made without pyplot)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    display(Image(buf.getvalue()))


def _names(value):
    if value is None or isinstance(value, (list, tuple)):
        return value
    names = [v.strip() for v in str(value).split(",") if v.strip()]
    return names or None


TRACKING_URI = os.environ.get("MMLEXP_TRACKING_URI", TRACKING_URI)
EXPERIMENTS = _names(os.environ.get("MMLEXP_EXPERIMENTS", EXPERIMENTS))
FILTER = os.environ.get("MMLEXP_FILTER", FILTER)
METRICS = tuple(_names(os.environ.get("MMLEXP_METRICS", METRICS)) or ("recall@20", "ndcg@20"))
CSV_OUT = os.environ.get("MMLEXP_CURVES_CSV", CSV_OUT)
RUNS_CSV = os.environ.get("MMLEXP_RUNS_CSV", RUNS_CSV)


def _located(path: str) -> str:
    """Jupyter starts the kernel in notebooks/: a relative file is looked up there, then in the repo root
    (unchanged when found in neither)."""
    found = [b / path for b in (Path.cwd(), Path.cwd().parent) if not Path(path).is_absolute() and (b / path).is_file()]
    return str(found[0].resolve()) if found else path


_SQLITE = "sqlite:///"
if TRACKING_URI.startswith(_SQLITE):
    TRACKING_URI = _SQLITE + _located(TRACKING_URI[len(_SQLITE) :])
if RUNS_CSV:
    RUNS_CSV = _located(RUNS_CSV)
    print(f"runs from {RUNS_CSV}; experiments {EXPERIMENTS or 'all'}; metrics {METRICS}")
else:
    print(f"store {TRACKING_URI}; experiments {EXPERIMENTS or 'all'}; filter {FILTER!r}; metrics {METRICS}")

# %% [markdown]
# ## Runs
#
# One row per finished run. Reruns of the same setting and seed are counted once (the latest is kept).

# %%
if RUNS_CSV:
    runs = read_runs(RUNS_CSV)
    runs = runs[runs["experiment"].isin(EXPERIMENTS)] if EXPERIMENTS else runs
else:
    runs = fetch_runs(TRACKING_URI, EXPERIMENTS, FILTER)
runs, dropped = drop_duplicates(runs)
runs = runs[runs["num_negatives"].notna()]
print(f"{len(runs)} runs ({len(dropped)} older duplicates left out) in {runs['experiment'].nunique()} experiment(s)")
if runs.empty:
    raise ReportError(
        f"no finished runs with a number of negatives in {RUNS_CSV or TRACKING_URI} "
        f"(experiments {EXPERIMENTS or 'all'})"
    )
columns = [
    "experiment",
    "dataset",
    "encoder",
    "loss",
    "num_negatives",
    "seed",
    "epochs",
    "selection",
    "early_stop",
    *[m for m in METRICS if m in runs],
]
runs[columns].reset_index(drop=True)

# %% [markdown]
# ## Curves
#
# Runs are compared only within one setting (encoder, early stopping, model selection): one figure and one
# table per setting found. Error bars: 95% t-interval over seeds (none with a single seed).

# %%
SETTING = ["encoder", "early_stop", "selection"]
tables = []
for setting, group in runs.groupby(SETTING, dropna=False, sort=True):
    label = ", ".join(f"{k}={v}" for k, v in zip(SETTING, setting, strict=True))
    curves = negative_curves(group, metrics=METRICS)
    curves.insert(0, "setting", label)
    tables.append(curves)
    fig = plot_negative_curves(group, metrics=METRICS)
    fig.suptitle(label)
    show(fig)
    wide = curves.assign(
        cell=curves.apply(
            lambda r: f"{r['mean']:.4f}" + (f" ± {r['ci_half']:.4f}" if r["n"] > 1 else "") + f" (n={r['n']})", axis=1
        )
    )
    display(
        wide.pivot_table(index=["dataset", "loss", "num_negatives"], columns="metric", values="cell", aggfunc="first")
    )
table = pd.concat(tables, ignore_index=True)

# %% [markdown]
# ## The aggregated table
#
# Long form, one row per (setting, dataset, loss, number of negatives, metric): seeds, mean, std, the 95%
# t-interval and the runs behind each point (`run_ids`, to look them up in `make ui`).

# %%
if CSV_OUT:
    table.to_csv(CSV_OUT, index=False)
    print(f"wrote {len(table)} rows to {Path(CSV_OUT).resolve()}")
table
