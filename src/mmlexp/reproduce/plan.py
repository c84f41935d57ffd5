"""A reproduction plan (``conf/reproduce/<dataset>.yaml``): the runs of one dataset's reproduction, in priority order.

A plan has ``dataset``, ``experiment`` (the MLflow experiment), ``run`` (every step's defaults) and ``steps``; a step
names ``loss``, ``negatives`` and optionally ``seed``, ``encoder``, ``selection``, ``epochs`` (a value or a list),
``patience`` (early stopping after that many evaluations without a better ``trainer.monitor``; absent or null: no
early stop, ``trainer.patience=null``) and ``overrides`` (extra Hydra overrides). ``run`` takes the same keys but
``why``. A step's runs are the product seed x negatives x loss, in that order: every cell's seed 2 before any
seed 3, and the losses at one number of negatives side by side (the runs a paired comparison needs come together).
A run is identified by its cell (``Run.key``): the same keys as a row of ``results/<dataset>/runs.csv``; an early-
stopping run (patience < epochs) adds its patience, so that it is told apart from the same cell without it (the key
of a run without early stopping is what it always was).
"""

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

PLAN_KEYS = {"dataset", "experiment", "run", "steps"}
STEP_KEYS = {"why", "loss", "negatives", "seed", "encoder", "selection", "epochs", "patience", "overrides"}
RUN_KEYS = STEP_KEYS - {"why"}
SWEPT = ("loss", "negatives", "seed")
SELECTIONS = ("paper", "valid")


class PlanError(ValueError):
    """A plan that cannot be read or names something that does not exist: a message for the user."""


@dataclass(frozen=True)
class Run:
    """One planned training run (one cell of the paper's tables and one seed)."""

    dataset: str
    encoder: str
    loss: str
    negatives: int
    selection: str
    seed: int
    epochs: int
    step: int
    why: str = ""
    extra: tuple[str, ...] = field(default=())
    patience: int | None = None

    @property
    def early_stop(self) -> bool:
        """Whether early stopping can fire (as ``runs.csv``'s early_stop: patience set and below the epochs)."""
        return self.patience is not None and self.patience < self.epochs

    @property
    def key(self) -> tuple:
        """What tells runs apart: ``runs.csv``'s dataset, encoder, loss, num_negatives, selection, seed, epochs,
        and the patience of an early-stopping run (``state.row_key``)."""
        base = (self.dataset, self.encoder, self.loss, self.negatives, self.selection, self.seed, self.epochs)
        return (*base, self.patience) if self.early_stop else base

    @property
    def label(self) -> str:
        sel = "" if self.selection == "paper" else f" {self.selection}"
        enc = "" if self.encoder == "mf" else f"{self.encoder} "
        stop = f" patience {self.patience}" if self.patience is not None else ""
        return f"{enc}{self.loss} N={self.negatives}{sel}{stop} seed {self.seed}"

    def overrides(self) -> list[str]:
        """The Hydra overrides of this run (no machine paths: the runner adds its stores)."""
        out = [
            f"dataset={self.dataset}",
            f"encoder={self.encoder}",
            f"seed={self.seed}",
            f"trainer.epochs={self.epochs}",
            f"trainer.patience={'null' if self.patience is None else self.patience}",
            "trainer.progress=false",
            f"loss={self.loss}",
            f"num_negatives={self.negatives}",
        ]
        if self.selection != "paper":
            out.append(f"eval.selection={self.selection}")
        return out + list(self.extra)


@dataclass(frozen=True)
class Plan:
    name: str
    dataset: str
    experiment: str
    runs: tuple[Run, ...]
    path: Path
    why: str = ""  # a queue entry's reason (mmlexp.reproduce.queue)


def plan_dir() -> Path:
    from mmlexp.__main__ import CONFIG_DIR

    return Path(CONFIG_DIR) / "reproduce"


def available() -> list[str]:
    return sorted(p.stem for p in plan_dir().glob("*.yaml"))


def plan_path(name_or_path: str) -> Path:
    """A plan's file: ``name`` -> ``conf/reproduce/<name>.yaml``, or a path to a YAML file."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = plan_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise PlanError(f"plan {name_or_path!r}: no such plan; available: {', '.join(available()) or '(none)'}")
    return path


def read_mapping(path: Path) -> dict[str, Any]:
    """A plan file's YAML mapping (``PlanError`` for a file that is not one)."""
    try:
        raw = OmegaConf.load(path)
    except Exception as err:
        raise PlanError(f"plan {path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(raw, DictConfig):
        raise PlanError(f"plan {path}: must be a mapping with keys {sorted(PLAN_KEYS)}")
    return OmegaConf.to_container(raw)  # type: ignore[return-value]


def load_plan(name_or_path: str) -> Plan:
    """A plan by name (``gowalla`` -> ``conf/reproduce/gowalla.yaml``) or by path to a YAML file."""
    path = plan_path(name_or_path)
    return parse_plan(read_mapping(path), path)


def parse_plan(raw: dict[str, Any], path: Path) -> Plan:
    unknown = set(raw) - PLAN_KEYS
    if unknown:
        raise PlanError(f"plan {path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(PLAN_KEYS)}")
    for key in ("dataset", "steps"):
        if not raw.get(key):
            raise PlanError(f"plan {path}: {key!r} is missing")
    run_defaults = raw.get("run") or {}
    if not isinstance(run_defaults, dict) or set(run_defaults) - RUN_KEYS:
        bad = sorted(set(run_defaults) - RUN_KEYS) if isinstance(run_defaults, dict) else run_defaults
        raise PlanError(f"plan {path}: run: unknown key(s) {bad}; allowed: {sorted(RUN_KEYS)}")
    defaults = {"encoder": "mf", "epochs": 100, "selection": "paper", "seed": 1} | dict(run_defaults)
    runs: list[Run] = []
    seen: set[tuple] = set()
    for i, step in enumerate(raw["steps"], start=1):
        for run in step_runs(str(raw["dataset"]), defaults, step, i, path):
            if run.key not in seen:  # a run listed twice runs once, at its first place
                seen.add(run.key)
                runs.append(run)
    return Plan(path.stem, str(raw["dataset"]), str(raw.get("experiment") or "reproduce"), tuple(runs), path)


def _values(value: Any) -> list:
    return list(value) if isinstance(value, list | tuple | ListConfig) else [value]


def step_runs(dataset: str, defaults: dict, step: dict, index: int, path: Path) -> list[Run]:
    """A step's runs: seed x negatives x loss (in that order), the other keys from the step or the defaults."""
    where = f"plan {path}, step {index}"
    if not isinstance(step, dict):
        raise PlanError(f"{where}: must be a mapping with keys from {sorted(STEP_KEYS)}")
    unknown = set(step) - STEP_KEYS
    if unknown:
        raise PlanError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(STEP_KEYS)}")
    merged = defaults | step
    for key in ("loss", "negatives"):
        if key not in merged:
            raise PlanError(f"{where}: {key!r} is missing")
    if merged["selection"] not in SELECTIONS:
        raise PlanError(f"{where}: selection={merged['selection']!r}; allowed: {', '.join(SELECTIONS)}")
    losses, negatives, seeds = (_values(merged[k]) for k in SWEPT)
    for key, values in (("negatives", negatives), ("seed", seeds), ("epochs", [merged["epochs"]])):
        bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool) or v < (0 if key == "seed" else 1)]
        if bad:
            raise PlanError(f"{where}: {key}={bad[0]!r}; must be a positive integer")
    patience = _patience(merged.get("patience"), merged["epochs"], where)
    extra = tuple(str(o) for o in _values(merged.get("overrides") or []))
    return [
        Run(dataset, str(merged["encoder"]), str(loss), int(n), str(merged["selection"]), int(seed),
            int(merged["epochs"]), index, str(step.get("why", "")), extra, patience)
        for seed, n, loss in itertools.product(seeds, negatives, losses)
    ]  # fmt: skip


def _patience(value: Any, epochs: int, where: str) -> int | None:
    """A step's patience: null (no early stop) or an integer in [1, epochs)."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value < epochs:
        raise PlanError(
            f"{where}: patience={value!r}; allowed: null (no early stop) or an integer from 1 to epochs - 1 "
            f"({epochs - 1}: a patience of the epochs or more never stops a run)"
        )
    return value


def options(group: str) -> list[str]:
    """The options of a config group (``conf/<group>/*.yaml``): what a plan may name."""
    return sorted(p.stem for p in (plan_dir().parent / group).glob("*.yaml"))


def check_names(plan: Plan) -> None:
    """Refuse a plan whose dataset, loss or encoder is not an option of its config group (before anything runs)."""
    for group, named in (
        ("dataset", {(0, plan.dataset)}),
        ("loss", {(r.step, r.loss) for r in plan.runs}),
        ("encoder", {(r.step, r.encoder) for r in plan.runs}),
    ):
        allowed = options(group)
        for step, name in sorted(named):
            if name not in allowed:
                where = f"plan {plan.path}" + (f", step {step}" if step else "")
                raise PlanError(f"{where}: {group}={name!r}: no such {group}; allowed: {', '.join(allowed)}")


def select_steps(plan: Plan, steps: list[int] | None, given: str = "--steps") -> Plan:
    """The plan with only the runs of ``steps`` (1-based), in the order ``--steps`` gives them (``--steps 11 8``
    runs step 11 first); all of it, in its own order, for None."""
    if not steps:
        return plan
    have = sorted({r.step for r in plan.runs})
    bad = [k for k in steps if k not in have]
    if bad:
        raise PlanError(f"{given} {bad[0]}: {plan.path} has steps {have[0]}..{have[-1]}; allowed: one or more of them")
    runs = tuple(r for k in dict.fromkeys(steps) for r in plan.runs if r.step == k)
    return replace(plan, runs=runs)
