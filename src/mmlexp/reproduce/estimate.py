"""How long a plan's runs will take, scaled from runs already measured on this kind of machine.

A run of E epochs takes  E x (rows x c(N) + eval) + overhead,  where rows is the dataset's training interactions,
c(N) the seconds per interaction at N negatives and eval the seconds of one full-ranking evaluation. c and eval
are medians over epochs of measured runs (committed ``results/*/epochs/*.csv`` and the store), taken from, in
order of preference:

1. runs of the same dataset, encoder, negatives and batch size (c measured directly);
2. runs of the same dataset, encoder and batch at other negatives: c(N) = a + b N fitted over them;
3. runs of another dataset: c(N) = a + b N fitted there, taken as it is (the cost of one interaction barely
   depends on the catalogue; with a larger batch it is an upper bound: fewer steps carry the fixed step cost);
4. the reference speed of the 2-core development CPU when nothing is measured.

eval comes from the same dataset, else another one's scaled by users x items. Each estimate says which it rests on.
"""

import functools
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from mmlexp.reproduce.plan import Run
from mmlexp.reproduce.state import PENDING, RUNNING, RunState
from mmlexp.reproduce.stores import Stores

# (train interactions, users, items) of the LightGCN splits (shared/data/README.md)
SIZES = {"gowalla": (810_128, 29_858, 40_981), "yelp2018": (1_237_259, 31_668, 38_048)}
REFERENCE = (3.2e-5, 4.2e-7)  # seconds per interaction: a + b N (MF, batch 256, 2-core CPU, before any run)
ENCODER_FACTOR = {"mf": 1.0, "simplex": 1.5, "svdpp": 1.5, "lightgcn": 3.0, "ngcf": 4.0}
OVERHEAD_S = 20.0  # per run: data from the cache, model, MLflow
MIN_EPOCHS = 3  # fewer measured epochs measure the warm-up, not the speed


@dataclass(frozen=True)
class Speed:
    """One measured run: median seconds per training interaction and per evaluation."""

    dataset: str
    encoder: str
    negatives: int
    batch: int
    per_interaction: float
    eval_s: float
    epochs: int


@dataclass(frozen=True)
class Estimate:
    train_s: float  # one epoch's training
    eval_s: float  # one evaluation
    basis: str  # what it rests on

    @property
    def epoch_s(self) -> float:
        return self.train_s + self.eval_s


@functools.cache
def default_batch(dataset: str) -> int:
    from mmlexp.__main__ import CONFIG_DIR

    for path in (Path(CONFIG_DIR) / "dataset_defaults" / f"{dataset}.yaml", Path(CONFIG_DIR) / "trainer/default.yaml"):
        if path.is_file():
            cfg = OmegaConf.load(path)
            batch = OmegaConf.select(cfg, "trainer.batch_size") or OmegaConf.select(cfg, "batch_size")
            if batch:
                return int(batch)
    return 256


def _speed(dataset, encoder, negatives, batch, epochs: pd.DataFrame) -> Speed | None:
    if "interactions_per_s" not in epochs or len(epochs) < MIN_EPOCHS:
        return None
    per = (1.0 / epochs["interactions_per_s"].dropna()).median()
    ev = epochs["eval_time_s"].dropna().median() if "eval_time_s" in epochs else math.nan
    return Speed(str(dataset), str(encoder), int(negatives), int(batch), float(per), float(ev), len(epochs))


def _batch_of(overrides, dataset: str) -> int:
    for tok in str(overrides or "").split():
        if tok.startswith("trainer.batch_size="):
            return int(tok.split("=", 1)[1])
    return default_batch(dataset)


def committed_speeds(results_root: Path) -> list[Speed]:
    """Speeds of the runs committed under ``results/*/`` (their per-epoch CSVs)."""
    out = []
    for runs_csv in sorted(results_root.glob("*/runs.csv")):
        for _, r in pd.read_csv(runs_csv).iterrows():
            path = runs_csv.parent / str(r.get("epochs_csv", ""))
            if path.is_file():
                batch = _batch_of(r.get("overrides"), r["dataset"])
                sp = _speed(r["dataset"], r["encoder"], r["num_negatives"], batch, pd.read_csv(path))
                out += [sp] if sp else []
    return out


def store_speeds(stores: Stores, experiment: str) -> list[Speed]:
    """Speeds of the store's runs of ``experiment``, finished or running."""
    from mlflow.tracking import MlflowClient

    from mmlexp.reproduce.state import store_runs

    client, out = MlflowClient(stores.tracking_uri), []
    for status in ("FINISHED", "RUNNING"):
        for _, r in store_runs(stores, experiment, status).iterrows():
            hist = {
                key: {m.step: m.value for m in client.get_metric_history(r["run_id"], key)}
                for key in ("interactions_per_s", "eval_time_s")
            }
            batch = client.get_run(r["run_id"]).data.params.get("trainer.batch_size") or default_batch(r["dataset"])
            sp = _speed(r["dataset"], r["encoder"], r["num_negatives"], int(batch), pd.DataFrame(hist))
            out += [sp] if sp else []
    return out


def _fit(speeds: list[Speed]) -> tuple[float, float]:
    """c(N) = a + b N by least squares over the runs (b = 0 when they share one N)."""
    n = np.array([s.negatives for s in speeds], dtype=float)
    c = np.array([s.per_interaction for s in speeds])
    if len(set(n)) < 2:
        return float(np.median(c)), 0.0
    b, a = np.polyfit(n, c, 1)
    return float(a), float(b)


def _describe(speeds: list[Speed]) -> str:
    ns = sorted({s.negatives for s in speeds})
    return f"{len(speeds)} run(s) of {speeds[0].dataset} at N={','.join(map(str, ns))}, batch {speeds[0].batch}"


def per_interaction(run: Run, batch: int, speeds: list[Speed]) -> tuple[float, str]:
    """Seconds per training interaction of ``run`` and what the number rests on (see the module docstring)."""
    same_enc = [s for s in speeds if s.encoder == run.encoder]
    exact = [s for s in same_enc if (s.dataset, s.negatives, s.batch) == (run.dataset, run.negatives, batch)]
    if exact:
        return statistics.median(s.per_interaction for s in exact), f"measured: {_describe(exact)}"
    here = [s for s in same_enc if (s.dataset, s.batch) == (run.dataset, batch)]
    others = [s for s in same_enc if s.dataset != run.dataset]
    if here and len({s.negatives for s in here}) > 1:
        a, b = _fit(here)
        return a + b * run.negatives, f"fit a+bN over {_describe(here)}"
    if others:
        ref = [s for s in others if s.dataset == max(others, key=lambda s: s.epochs).dataset]
        a, b = _fit(ref)
        if here:  # one N measured here: its level, the other dataset's slope
            level = statistics.median(s.per_interaction for s in here)
            return level + b * (run.negatives - here[0].negatives), f"{_describe(here)}; slope from {_describe(ref)}"
        return a + b * run.negatives, f"fit a+bN over {_describe(ref)} (batch {batch} here)"
    a, b = REFERENCE
    return (a + b * run.negatives) * ENCODER_FACTOR.get(run.encoder, 2.0), "reference speed (nothing measured)"


def eval_seconds(run: Run, speeds: list[Speed]) -> tuple[float, str]:
    here = [s.eval_s for s in speeds if s.dataset == run.dataset and not math.isnan(s.eval_s)]
    factor = 2.0 if run.selection == "valid" else 1.0  # the held-out slice is ranked too
    if here:
        return factor * statistics.median(here), f"eval measured on {run.dataset}"
    other = [s for s in speeds if s.dataset in SIZES and not math.isnan(s.eval_s)]
    if other and run.dataset in SIZES:
        _, u0, i0 = SIZES[other[0].dataset]
        _, u1, i1 = SIZES[run.dataset]
        scaled = statistics.median(s.eval_s for s in other if s.dataset == other[0].dataset) * u1 * i1 / (u0 * i0)
        return factor * scaled, f"eval from {other[0].dataset} x users*items"
    return factor * 3.0, "eval: reference"


def estimate(run: Run, speeds: list[Speed]) -> Estimate:
    rows = SIZES.get(run.dataset, SIZES["gowalla"])[0]
    c, basis = per_interaction(run, default_batch(run.dataset), speeds)
    ev, ev_basis = eval_seconds(run, speeds)
    return Estimate(rows * c, ev, f"{basis}; {ev_basis}")


def seconds_left(state: RunState, speeds: list[Speed]) -> float:
    """A pending run: its estimate; a running one: the epochs left at its own recent pace."""
    if state.state == PENDING:
        return state.run.epochs * estimate(state.run, speeds).epoch_s + OVERHEAD_S
    if state.state == RUNNING:
        pace = state.pace_s if not math.isnan(state.pace_s) else estimate(state.run, speeds).epoch_s
        return max(0, state.run.epochs - state.epoch) * pace
    return 0.0


def human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
