"""How long a plan's runs will take, scaled from runs already measured on this kind of machine.

A run of E epochs takes  E x (rows x c + eval) + overhead,  where rows is the dataset's training interactions,
c the seconds per interaction and eval the seconds of one full-ranking evaluation, both medians over the epochs of
measured runs (committed ``results/*/epochs/*.csv`` and the store). What c depends on is the run's ``Job``, read
from its composed config: encoder, sampler, negatives and batch size (``dataset_loss`` gives BSL a batch of 1024,
``+experiment=ssm_paper`` 2048). c is taken from, in order of preference:

1. runs of the same dataset, encoder, sampler, negatives and batch (c measured directly); SimpleX with its history
   attention (gamma < 1) and without it are two encoders here: a run is priced only from runs that did as it does;
2. the same at other negatives: c(N) = a + b N fitted over them (sampled negatives only: in-batch negatives follow
   the batch, and cost one [B, B] product, not B x N gathered rows);
3. runs of another dataset: c(N) = a + b N fitted there, taken as it is (the cost of one interaction barely
   depends on the catalogue);
4. a cost measured side by side in a benchmark, relative to MF at the same negatives (``RELATIVE_COST``), times
   this dataset's MF cost from 1-3;
5. the reference speed of the 2-core development CPU when nothing is measured.

E is the run's epochs. With early stopping it is where the stop fires on the trajectory of the same run without
early stopping, when one is committed (early stopping changes nothing before it fires: same seed, same batches,
same bits, on a CPU of the same capability: on another, the float summation order differs and so does the
trajectory); otherwise the cap, flagged ``capped`` (the run stops sooner, at an epoch nothing predicts).
eval comes from the same dataset, else another one's scaled by users x items. Each estimate says what it rests on.

Runs measured on another CPU (the ``cpu`` tag; committed runs made before the tag count as another) are first
brought to this one by ``on_this_cpu``, dataset by dataset: their costs times the median ratio of the runs of that
dataset finished here to the same jobs measured elsewhere. Without such a run, a dataset's runs tagged with a CPU
that another dataset's runs pair with this one are scaled by that pair's ratio; the rest stay at the speed they were
measured at, and the status's pace line says how far the running run is from it.
"""

import dataclasses
import functools
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from mmlexp.report.runs import override_value
from mmlexp.report.selection import stop_epoch
from mmlexp.reproduce.plan import PlanError, Run
from mmlexp.reproduce.state import PENDING, RUNNING, RunState
from mmlexp.reproduce.stores import Stores

# (train interactions, users, items) of the LightGCN splits (shared/data/README.md)
SIZES = {"gowalla": (810_128, 29_858, 40_981), "yelp2018": (1_237_259, 31_668, 38_048)}
REFERENCE = (3.2e-5, 4.2e-7)  # seconds per interaction: a + b N (MF, batch 256, 2-core CPU, before any run)
BENCHMARK = "benchmarks/results/ssm_simplex_epoch_costs.md"
# Training cost of an epoch relative to MF + CCL at 100 negatives on the same dataset, 2 threads, measured side by
# side in one process with the queue paused (BENCHMARK, "Quiet rerun"); the rest are guesses kept from before
# anything was measured.
RELATIVE_COST = {
    ("lightgcn", "in_batch"): (1.30, f"x1.30 of MF at N=100, B=2048 ({BENCHMARK})"),
    ("mf", "in_batch"): (0.80, f"x0.80 of MF at N=100, B=2048 ({BENCHMARK})"),
    ("simplex", "history"): (3.80, f"x3.80 of MF at N=100 ({BENCHMARK})"),
    ("simplex", "sampled"): (1.0, f"x1 of MF (gamma = 1: no history attention; {BENCHMARK})"),
    ("svdpp", "sampled"): (1.5, "x1.5 of MF (a guess: nothing measured)"),
    ("lightgcn", "sampled"): (3.0, "x3 of MF (a guess: nothing measured)"),
    ("ngcf", "sampled"): (4.0, "x4 of MF (a guess: nothing measured)"),
}
OVERHEAD_S = 20.0  # per run: data from the cache, model, MLflow
MIN_EPOCHS = 3  # fewer measured epochs measure the warm-up, not the speed
# Overrides that name a run's cell (plan.Run.key), and those that do not change what is trained
CELL = ("dataset=", "encoder=", "seed=", "loss=", "num_negatives=", "trainer.epochs=", "trainer.patience=")
NOT_TRAINING = ("eval.", "trainer.monitor=", "trainer.progress=", "trainer.num_threads=", "tracking.", "hydra.")


REPLAY_HERE = "a replay of a run made on this CPU: exact"
REPLAY_ELSEWHERE = "a replay of a run made on another CPU: exact if the run here follows its curve"


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
    sampler: str = "uniform"
    running: bool = False  # a run still in flight (the store's RUNNING runs)
    cpu: str = ""  # the run's ``cpu`` tag (``devices.cpu_tags``); "" where unknown (runs made before the tag)
    scaled: str = ""  # set by ``on_this_cpu``: how this speed was brought to this CPU
    history: bool = False  # SimpleX's history attention ran (gamma < 1): ``Job.history``


@dataclass(frozen=True)
class Job:
    """What a run's cost depends on, from its composed config."""

    dataset: str
    encoder: str
    sampler: str
    negatives: int
    batch: int
    selection: str = "paper"
    history: bool = False  # SimpleX with gamma < 1: the attention over every row's history runs
    monitor: str = "recall@20"

    @property
    def kind(self) -> str:
        """The cost class of ``RELATIVE_COST``: in-batch negatives, SimpleX's history attention, or sampled."""
        if self.sampler == "in_batch":
            return "in_batch"
        return "history" if self.history else "sampled"


@dataclass(frozen=True)
class Trajectory:
    """A committed run without early stopping: its cell, the overrides that shaped its training, its epochs."""

    cell: tuple  # dataset, encoder, loss, negatives, selection, seed
    training: frozenset[str]
    epochs: pd.DataFrame = field(compare=False, hash=False)
    cpu: str = ""  # runs.csv's ``cpu``: the CPU it ran on ("" for a run made before the tag)
    here: bool = False  # it ran on this CPU (``mark_here``): a replay of its curve is exact


@dataclass(frozen=True)
class Estimate:
    train_s: float  # one epoch's training
    eval_s: float  # one evaluation
    basis: str  # what it rests on
    epochs: int = 0  # the epochs the run will train
    epochs_basis: str = ""  # how those were found ("" when fixed: no early stopping)
    capped: bool = False  # early stopping at an epoch nothing predicts: the run's cap, an upper bound

    @property
    def epoch_s(self) -> float:
        return self.train_s + self.eval_s


def _config_dir() -> Path:
    from mmlexp.__main__ import CONFIG_DIR

    return Path(CONFIG_DIR)


@functools.cache
def default_batch(dataset: str) -> int:
    conf = _config_dir()
    for path in (conf / "dataset_defaults" / f"{dataset}.yaml", conf / "trainer/default.yaml"):
        if path.is_file():
            cfg = OmegaConf.load(path)
            batch = OmegaConf.select(cfg, "trainer.batch_size") or OmegaConf.select(cfg, "batch_size")
            if batch:
                return int(batch)
    return 256


def runs_history(gamma) -> bool:
    """Whether SimpleX's history attention runs at this ``encoder.gamma`` (below 1; None or "None": no gamma)."""
    return gamma not in (None, "None") and float(gamma) < 1.0


def job_of_config(cfg, choices: dict) -> Job:
    """The ``Job`` of a composed config; ``choices`` are its group options (``hydra.runtime.choices``)."""
    sampler = str(choices.get("sampler", "uniform"))
    batch = int(cfg.trainer.batch_size)
    negatives = batch - 1 if sampler == "in_batch" else int(cfg.get("num_negatives") or 0)
    gamma = OmegaConf.select(cfg, "encoder.gamma")
    monitor = str(cfg.trainer.monitor)
    selection = str(OmegaConf.select(cfg, "eval.selection") or "paper")
    return Job(
        str(cfg.dataset.name), str(choices.get("encoder", "mf")), sampler, negatives, batch, selection,
        history=runs_history(gamma),
        monitor=f"valid/{monitor}" if selection == "valid" else monitor,
    )  # fmt: skip


@functools.cache
def _composed_job(dataset: str, encoder: str, loss: str, selection: str, extra: tuple[str, ...]) -> Job:
    from hydra import compose, initialize_config_dir

    overrides = [f"dataset={dataset}", f"encoder={encoder}", f"loss={loss}", *extra]
    if selection != "paper":
        overrides.append(f"eval.selection={selection}")
    from mmlexp.config import validate

    with initialize_config_dir(config_dir=str(_config_dir())):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    validate(cfg)  # what the run would refuse, said before it is queued
    return job_of_config(cfg, dict(cfg.hydra.runtime.choices))


def job_of(run: Run) -> Job:
    """The run's ``Job``: its config composed once per (dataset, encoder, loss, selection, extra overrides); a run
    whose config does not compose or validate (``mmlexp.config.validate``) is a ``PlanError`` naming its overrides."""
    try:
        job = _composed_job(run.dataset, run.encoder, run.loss, run.selection, run.extra)
    except Exception as err:  # Hydra's composition errors, mmlexp's ConfigError: a key, option or value refused
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PlanError(
            f"step {run.step} ({run.label}): its config is refused with overrides {list(run.extra)}: {first}"
        ) from err
    return job if job.kind == "in_batch" else dataclasses.replace(job, negatives=run.negatives)


def implied_batch(rows: float, steps: int) -> int:
    """The batch size b that makes ``steps`` steps of ``rows`` interactions (ceil(rows / b) == steps); of the sizes
    that do, the one with the most factors of two (the configs' batch sizes are powers of two)."""
    lo = math.ceil(rows / steps)
    hi = math.ceil(rows / (steps - 1)) - 1 if steps > 1 else lo
    for k in range(max(int(hi).bit_length(), 1), -1, -1):
        candidate = -(-lo // 2**k) * 2**k
        if candidate <= hi:
            return int(candidate)
    return int(lo)


def _speed(dataset, encoder, negatives, batch, epochs: pd.DataFrame, sampler="uniform", history=False) -> Speed | None:
    if "interactions_per_s" not in epochs or len(epochs) < MIN_EPOCHS:
        return None
    per = (1.0 / epochs["interactions_per_s"].dropna()).median()
    ev = epochs["eval_time_s"].dropna().median() if "eval_time_s" in epochs else math.nan
    return Speed(str(dataset), str(encoder), int(negatives), int(batch), float(per), float(ev), len(epochs),
                 str(sampler), history=bool(history))  # fmt: skip


def _ran_history(dataset: str, encoder: str, overrides) -> bool:
    """Whether a committed run ran SimpleX's history attention (``Job.history``): the ``encoder.gamma`` its
    overrides name, else its dataset's default for the encoder (``conf/dataset_encoder``)."""
    gamma = override_value(overrides, "encoder.gamma")
    if gamma is not None:
        return runs_history(gamma)
    return _composed_job(str(dataset), str(encoder), "ccl", "paper", ()).history


def _committed_batch(epochs: pd.DataFrame, overrides, dataset: str) -> int:
    """The batch a committed run trained with: from its steps per epoch and interactions per epoch (the CSV says
    both), else its overrides, else the dataset's default."""
    if {"step", "epoch_time_s", "interactions_per_s"} <= set(epochs) and len(epochs) > 1:
        steps = epochs["step"].diff().median()
        rows = (epochs["interactions_per_s"] * epochs["epoch_time_s"]).median()
        if steps > 0 and rows > 0:
            return implied_batch(rows, int(round(steps)))
    named = override_value(overrides, "trainer.batch_size")
    return int(named) if named is not None else default_batch(dataset)


def _committed(results_root: Path) -> Iterable[tuple[pd.Series, pd.DataFrame]]:
    for runs_csv in sorted(results_root.glob("*/runs.csv")):
        for _, r in pd.read_csv(runs_csv).iterrows():
            path = runs_csv.parent / str(r.get("epochs_csv", ""))
            if path.is_file():
                yield r, pd.read_csv(path)


def committed_measurements(results_root: Path) -> tuple[list[Speed], list[Trajectory]]:
    """What the runs committed under ``results/*/`` measured, their per-epoch CSVs read once: their speeds, and the
    trajectories of the full runs without early stopping (which say where an early stop fires)."""
    speeds, trajectories = [], []
    for r, epochs in _committed(results_root):
        batch = _committed_batch(epochs, r.get("overrides"), r["dataset"])
        sampler = r.get("sampler") if isinstance(r.get("sampler"), str) else "uniform"
        cpu = r.get("cpu") if isinstance(r.get("cpu"), str) else ""  # "" for a run made before the tag
        history = _ran_history(r["dataset"], r["encoder"], r.get("overrides"))
        sp = _speed(r["dataset"], r["encoder"], r["num_negatives"], batch, epochs, sampler, history)
        speeds += [dataclasses.replace(sp, cpu=cpu)] if sp else []
        if r.get("early_stop") != "Y" and pd.isna(r.get("max_steps")):
            cell = (r["dataset"], r["encoder"], r["loss"], int(r["num_negatives"]), r["selection"], int(r["seed"]))
            training = training_overrides(str(r.get("overrides") or "").split())
            trajectories.append(Trajectory(cell, training, epochs, cpu))
    return speeds, trajectories


def committed_speeds(results_root: Path) -> list[Speed]:
    """Speeds of the runs committed under ``results/*/`` (their per-epoch CSVs)."""
    return committed_measurements(results_root)[0]


def committed_trajectories(results_root: Path) -> list[Trajectory]:
    """The committed full runs without early stopping, whose trajectories say where an early stop fires."""
    return committed_measurements(results_root)[1]


def training_overrides(tokens: Iterable[str]) -> frozenset[str]:
    """Of a run's overrides, those beyond its cell that change what is trained (not evaluation, the monitor or
    tracking)."""
    return frozenset(t for t in tokens if "=" in t and not t.lstrip("+~").startswith(CELL + NOT_TRAINING))


def tracked_speeds(tracking_uri: str, experiment: str | None = None, statuses=("FINISHED", "RUNNING")) -> list[Speed]:
    """Speeds of an MLflow store's training runs (of ``experiment``, else of every experiment)."""
    from mmlexp.report.runs import ReportError, _search, client_for, resolve_experiments, run_row

    client = client_for(tracking_uri)
    try:
        ids = resolve_experiments(client, experiment)
    except ReportError:  # the experiment has no run yet
        return []
    out: list[Speed] = []
    for status in statuses:
        for run in _search(client, ids.values(), f"attributes.status = '{status}'"):
            if run.data.tags.get("sweep.role") == "parent" or run.data.tags.get("device", "cpu") != "cpu":
                continue
            r = run_row(run, experiment or "")
            if r["num_negatives"] is None or not r["dataset"]:
                continue
            hist = {
                key: {m.step: m.value for m in client.get_metric_history(r["run_id"], key)}
                for key in ("interactions_per_s", "eval_time_s")
            }
            batch = run.data.params.get("trainer.batch_size") or default_batch(r["dataset"])
            history = runs_history(run.data.params.get("encoder.gamma"))  # logged by an encoder that has one
            sp = _speed(r["dataset"], r["encoder"], r["num_negatives"], int(batch), pd.DataFrame(hist), r["sampler"],
                        history)  # fmt: skip
            cpu = run.data.tags.get("cpu", "")
            out += [dataclasses.replace(sp, running=status == "RUNNING", cpu=cpu)] if sp else []
    return out


def _key(s: Speed) -> tuple:
    return s.dataset, s.encoder, s.sampler, s.negatives, s.batch


@dataclass(frozen=True)
class CpuFactor:
    """Seconds here / seconds elsewhere, per interaction (``train``) and per evaluation (``eval``): medians over
    ``runs`` runs finished here that have a counterpart elsewhere, in ``datasets``."""

    train: float
    eval: float
    runs: int
    datasets: tuple[str, ...]


def _ratios(here: list[Speed], elsewhere: list[Speed]) -> tuple[list[float], list[float]]:
    """One dataset's runs finished here, each against the median of the same job (encoder, sampler, negatives,
    batch) measured elsewhere, and its evaluation against the median of every evaluation elsewhere."""
    evals = [o.eval_s for o in elsewhere if not math.isnan(o.eval_s)]
    ratios, eval_ratios = [], []
    for s in here:
        if same := [o.per_interaction for o in elsewhere if _key(o) == _key(s)]:
            ratios.append(s.per_interaction / statistics.median(same))
            eval_ratios += [s.eval_s / statistics.median(evals)] if evals and not math.isnan(s.eval_s) else []
    return ratios, eval_ratios


def _cpu_factor(here: list[Speed], elsewhere: list[Speed]) -> CpuFactor | None:
    """The median ratios (``_ratios``) over the datasets of ``here``; None where no run has a counterpart."""
    ratios: list[float] = []
    eval_ratios: list[float] = []
    datasets: list[str] = []
    for dataset in dict.fromkeys(s.dataset for s in here):
        r, e = _ratios([s for s in here if s.dataset == dataset], [s for s in elsewhere if s.dataset == dataset])
        ratios, eval_ratios, datasets = ratios + r, eval_ratios + e, datasets + ([dataset] if r else [])
    if not ratios:
        return None
    f = statistics.median(ratios)
    return CpuFactor(f, statistics.median(eval_ratios) if eval_ratios else f, len(ratios), tuple(datasets))


def on_this_cpu(speeds: list[Speed], cpu: str) -> list[Speed]:
    """The speeds as this CPU (``cpu``: ``devices.cpu_name()``) would measure them. Runs measured here stand as they
    are. Per dataset, the other runs' seconds per interaction are multiplied by f, the median over that dataset's
    runs finished here of (here / elsewhere) for the same job (encoder, sampler, negatives, batch), and their eval
    seconds by the same median of the evaluations' ratio. Per dataset, because the runs without a ``cpu`` tag (made
    before it) were made in series, one dataset at a time, not all on one machine: a factor measured on one
    dataset's runs says nothing of another's. A dataset with no finished run here that has a counterpart takes,
    for its runs tagged with another CPU X, the ratio of here to X measured on the other datasets' runs made on
    both: the ratio of two named CPUs is the machines', whatever the data. Its untagged runs stay as they are.
    Each scaled speed says so (``scaled``), and so does every estimate resting on one."""
    here = [s for s in speeds if cpu and s.cpu == cpu and not s.running]
    elsewhere = [s for s in speeds if s.cpu != cpu]
    by_dataset = {
        d: f
        for d in dict.fromkeys(s.dataset for s in speeds)
        if (f := _cpu_factor([s for s in here if s.dataset == d], elsewhere))
    }
    by_cpu = {
        x: f
        for x in dict.fromkeys(s.cpu for s in elsewhere if s.cpu)
        if (f := _cpu_factor(here, [s for s in elsewhere if s.cpu == x]))
    }

    def scaled(s: Speed) -> Speed:
        if s.cpu == cpu:
            return s
        if f := by_dataset.get(s.dataset):
            how = f"{cpu}: {f.runs} run(s) of {s.dataset} measured on it"
        elif f := by_cpu.get(s.cpu):
            how = f"{cpu}, from {s.cpu}: {f.runs} run(s) of {' and '.join(f.datasets)} measured on both"
        else:
            return s
        note = f"x{f.train:.2f} (eval x{f.eval:.2f}) for this CPU, {how}"
        return dataclasses.replace(
            s, per_interaction=s.per_interaction * f.train, eval_s=s.eval_s * f.eval, scaled=note
        )

    return [scaled(s) for s in speeds]


def store_speeds(stores: Stores, experiment: str) -> list[Speed]:
    """Speeds of the store's runs of ``experiment``, finished or running."""
    return tracked_speeds(stores.tracking_uri, experiment) if stores.exists() else []


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
    scaled = next((s.scaled for s in speeds if s.scaled), "")
    return f"{len(speeds)} run(s) of {speeds[0].dataset} at N={','.join(map(str, ns))}, batch {speeds[0].batch}" + (
        f" ({scaled})" if scaled else ""
    )


def _is_in_batch(sampler: str) -> bool:
    return sampler == "in_batch"


def measured_cost(job: Job, speeds: list[Speed]) -> tuple[float, str] | None:
    """Seconds per interaction from runs of the job's encoder and sampler kind (1-3 of the module docstring)."""
    same = [
        s
        for s in speeds
        if (s.encoder, s.history, _is_in_batch(s.sampler)) == (job.encoder, job.history, _is_in_batch(job.sampler))
    ]
    exact = [s for s in same if (s.dataset, s.negatives, s.batch) == (job.dataset, job.negatives, job.batch)]
    if exact:
        return statistics.median(s.per_interaction for s in exact), f"measured: {_describe(exact)}"
    if job.kind == "in_batch":  # its negatives are its batch: only another dataset at the same batch compares
        other = [s for s in same if s.batch == job.batch]
        return (statistics.median(s.per_interaction for s in other), f"measured: {_describe(other)}") if other else None
    here = [s for s in same if (s.dataset, s.batch) == (job.dataset, job.batch)]
    others = [s for s in same if s.dataset != job.dataset]
    if here and len({s.negatives for s in here}) > 1:
        a, b = _fit(here)
        return a + b * job.negatives, f"fit a+bN over {_describe(here)}"
    if others:
        ref = [s for s in others if s.dataset == max(others, key=lambda s: s.epochs).dataset]
        a, b = _fit(ref)
        if here:  # one N measured here: its level, the other dataset's slope
            level = statistics.median(s.per_interaction for s in here)
            return level + b * (job.negatives - here[0].negatives), f"{_describe(here)}; slope from {_describe(ref)}"
        return a + b * job.negatives, f"fit a+bN over {_describe(ref)} (batch {job.batch} here)"
    return None


def per_interaction(job: Job, speeds: list[Speed]) -> tuple[float, str]:
    """Seconds per training interaction of ``job`` and what the number rests on (see the module docstring)."""
    found = measured_cost(job, speeds)
    if found:
        return found
    if job.encoder == "mf" and job.kind == "sampled":
        a, b = REFERENCE
        return a + b * job.negatives, "reference speed (nothing measured)"
    mf = Job(job.dataset, "mf", "uniform", job.negatives if job.kind == "sampled" else 100, default_batch(job.dataset))
    ratio, why = RELATIVE_COST.get((job.encoder, job.kind), (2.0, "x2 of MF (a guess: nothing measured)"))
    base, base_basis = per_interaction(mf, speeds)
    return ratio * base, f"{why}; MF: {base_basis}"


def eval_seconds(job: Job, speeds: list[Speed]) -> tuple[float, str]:
    here = [s for s in speeds if s.dataset == job.dataset and not math.isnan(s.eval_s)]
    factor = 2.0 if job.selection == "valid" else 1.0  # the held-out slice is ranked too
    if here:
        note = " (scaled to this CPU)" if any(s.scaled for s in here) else ""
        return factor * statistics.median(s.eval_s for s in here), f"eval measured on {job.dataset}{note}"
    other = [s for s in speeds if s.dataset in SIZES and not math.isnan(s.eval_s)]
    if other and job.dataset in SIZES:
        _, u0, i0 = SIZES[other[0].dataset]
        _, u1, i1 = SIZES[job.dataset]
        scaled = statistics.median(s.eval_s for s in other if s.dataset == other[0].dataset) * u1 * i1 / (u0 * i0)
        return factor * scaled, f"eval from {other[0].dataset} x users*items"
    return factor * 3.0, "eval: reference"


def mark_here(trajectories: Iterable[Trajectory], cpu: str) -> list[Trajectory]:
    """The trajectories, those of runs made on this CPU (``cpu``: ``devices.cpu_name()``) marked ``here``."""
    return [dataclasses.replace(t, here=bool(cpu) and t.cpu == cpu) for t in trajectories]


def expected_epochs(run: Run, job: Job, trajectories: Iterable[Trajectory]) -> tuple[int, str, bool]:
    """(epochs, how they were found, capped): see the module docstring. A trajectory made here is preferred."""
    if not run.early_stop or run.patience is None:
        return run.epochs, "", False
    cell = (run.dataset, run.encoder, run.loss, run.negatives, run.selection, run.seed)
    training = training_overrides(run.extra)
    for t in sorted(trajectories, key=lambda t: not t.here):
        if t.cell == cell and t.training == training and job.monitor in t.epochs:
            scores = t.epochs.sort_values("epoch")[job.monitor].head(run.epochs)
            stop = stop_epoch(scores, run.patience)
            if stop is not None or len(scores) >= run.epochs:
                epochs = stop or run.epochs
                basis = f"stops after epoch {epochs} on the committed run without early stopping"
                replay = REPLAY_HERE if t.here else REPLAY_ELSEWHERE
                return epochs, f"{basis} ({replay})", False
    return run.epochs, f"up to {run.epochs} epochs: early stopping at an epoch nothing predicts", True


def estimate(run: Run, speeds: list[Speed], trajectories: Iterable[Trajectory] = ()) -> Estimate:
    job = job_of(run)
    rows = SIZES.get(run.dataset, SIZES["gowalla"])[0]
    c, basis = per_interaction(job, speeds)
    ev, ev_basis = eval_seconds(job, speeds)
    epochs, epochs_basis, capped = expected_epochs(run, job, trajectories)
    return Estimate(rows * c, ev, f"{basis}; {ev_basis}", epochs, epochs_basis, capped)


def seconds_left(state: RunState, speeds: list[Speed], trajectories: Iterable[Trajectory] = ()) -> float:
    """A pending run: its estimate; a running one: the epochs left at its own recent pace."""
    if state.state not in (PENDING, RUNNING):
        return 0.0
    return remaining_s(state, estimate(state.run, speeds, trajectories))


def remaining_s(state: RunState, est: Estimate) -> float:
    """The seconds a pending or running run still needs, given its estimate (a pending run that resumes an
    interrupted one: the epochs that run has not logged; one with a twin: none, it is copied)."""
    if state.twin:
        return 0.0
    if state.state == PENDING:
        return max(0, est.epochs - state.epoch) * est.epoch_s + OVERHEAD_S
    pace = state.pace_s if not math.isnan(state.pace_s) else est.epoch_s
    return max(0, est.epochs - state.epoch) * pace


def human(seconds: float) -> str:
    """Seconds as a person reads them: 90 s, 45 min, 7.5 h, 3.1 days."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
