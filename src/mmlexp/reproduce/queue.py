"""The reproduction queue (``conf/reproduce/queue.yaml``): the runs of every plan, in the order one machine runs them.

A dataset's plan orders its own runs; the queue interleaves the plans. It is a mapping with one key, ``queue``: a list
of entries ``{plan, steps, why}``, each the runs of ``plan``'s ``steps`` in the order given (as ``--steps`` picks
them; no ``steps``: the whole plan in its own order). ``python -m mmlexp.reproduce run queue`` runs every missing run
of every entry, one at a time, in the queue's order; ``status queue`` prices them all. A run that two entries name
(one cell, seed and experiment) runs once, at its first place. Restarting the queue after a stop, or on another
machine with the same stores, is that one command.
"""

from dataclasses import replace
from pathlib import Path
from typing import Any

from mmlexp.reproduce.plan import (
    Plan,
    PlanError,
    check_names,
    parse_plan,
    plan_path,
    read_mapping,
    select_steps,
)

QUEUE_KEY = "queue"
ENTRY_KEYS = {"plan", "steps", "why"}


def load_plans(name_or_path: str, steps: list[int] | None = None) -> list[Plan]:
    """The plans a name stands for: a dataset's plan (only ``steps``, when given), or a queue's entries in order.

    Every plan's names are checked (``check_names``) before anything runs."""
    path = plan_path(name_or_path)
    raw = read_mapping(path)
    if QUEUE_KEY not in raw:
        return [_dataset_plan(raw, path, steps, "--steps")]
    if steps:
        raise PlanError(f"--steps {steps[0]}: {path} is a queue; allowed: the steps named by its entries (no --steps)")
    return parse_queue(raw, path)


def parse_queue(raw: dict[str, Any], path: Path) -> list[Plan]:
    """A queue's entries as plans holding only their steps' runs, each run in the first entry that names it."""
    unknown = set(raw) - {QUEUE_KEY}
    if unknown:
        raise PlanError(f"queue {path}: unknown key(s) {sorted(unknown)}; allowed: [{QUEUE_KEY!r}]")
    entries = raw[QUEUE_KEY]
    if not isinstance(entries, list) or not entries:
        raise PlanError(f"queue {path}: {QUEUE_KEY!r} must be a list of entries with keys from {sorted(ENTRY_KEYS)}")
    plans: list[Plan] = []
    seen: set[tuple] = set()
    for i, entry in enumerate(entries, start=1):
        where = f"queue {path}, entry {i}"
        plan = _entry_plan(entry, path.parent, where)
        runs = tuple(r for r in plan.runs if (plan.experiment, r.key) not in seen)
        seen.update((plan.experiment, r.key) for r in runs)
        if runs:
            plans.append(replace(plan, runs=runs, why=str(entry.get("why", ""))))
    return plans


def _entry_plan(entry: Any, here: Path, where: str) -> Plan:
    """One entry's plan with only its steps; a plan named by a relative ``.yaml`` path is read beside the queue."""
    if not isinstance(entry, dict) or "plan" not in entry:
        raise PlanError(f"{where}: must be a mapping with 'plan' and optionally 'steps', 'why'; got {entry!r}")
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise PlanError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(ENTRY_KEYS)}")
    name = str(entry["plan"])
    if name.endswith((".yaml", ".yml")) and not Path(name).is_absolute():
        name = str(here / name)
    steps = entry.get("steps")
    steps = [steps] if isinstance(steps, int) else steps
    if steps is not None and not (isinstance(steps, list) and all(type(k) is int for k in steps)):
        raise PlanError(f"{where}: steps={steps!r}; allowed: a step number or a list of them (1-based)")
    try:
        path = plan_path(name)
        raw = read_mapping(path)
        if QUEUE_KEY in raw:
            raise PlanError(f"plan {path} is a queue; allowed: a dataset's plan (a queue does not nest)")
        return _dataset_plan(raw, path, steps, "steps")
    except PlanError as err:
        raise PlanError(f"{where}: {err}") from err


def _dataset_plan(raw: dict[str, Any], path: Path, steps: list[int] | None, given: str) -> Plan:
    """A dataset's plan, its names checked, with only ``steps`` (named ``given`` in a refusal)."""
    plan = parse_plan(raw, path)
    check_names(plan)
    return select_steps(plan, steps, given)
