"""``python -m mmlexp.reproduce {run,status,report} PLAN``: a dataset's plan (``conf/reproduce/PLAN.yaml``), or the
queue of every plan's runs in the machine's order (``queue``: ``mmlexp.reproduce.queue``).

    report   results/<dataset>/ from the finished runs (the store's, merged with those already committed)
    status   each run of the plan (done / running epoch k/n / pending), the time it needs and what that rests on,
             and the time left for the whole plan (reads only)
    run      prints the same, then runs whatever is missing, one run at a time, in the plan's order (or in the
             order --steps names the steps); stop it anywhere and run it again: finished runs are skipped, an
             interrupted run resumes from its checkpoint; a queue runs its entries in turn

Stores: ``--runs DIR`` or ``$MMLEXP_RUNS_DIR`` (default: the user data dir; see ``mmlexp.reproduce.stores``).
"""

import argparse
import math
import subprocess
import sys
from pathlib import Path

from mmlexp.reproduce.estimate import (
    Estimate,
    committed_measurements,
    estimate,
    human,
    mark_here,
    on_this_cpu,
    remaining_s,
    store_speeds,
)
from mmlexp.reproduce.plan import Plan, PlanError, Run
from mmlexp.reproduce.queue import load_plans
from mmlexp.reproduce.state import DONE, PENDING, RUNNING, RunState, plan_state
from mmlexp.reproduce.stores import Stores, default_runs_dir


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mmlexp.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("run", "status", "report"))
    p.add_argument(
        "plan", help="a plan name (conf/reproduce/<name>.yaml: gowalla, yelp2018, queue: both in turn) or a YAML path"
    )
    p.add_argument("--runs", type=Path, help="the stores' folder (default: $MMLEXP_RUNS_DIR or the user data dir)")
    p.add_argument("--results", type=Path, default=Path("results"), help="committed results (default: results)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run (default 2)")
    p.add_argument(
        "--steps", type=int, nargs="+", metavar="K", help="only these steps of a plan (1-based), in this order"
    )
    return p


def describe(plan: Plan, states: list[RunState], speeds, trajectories=(), out=None) -> float:
    """Print every run with its state and time; return the seconds left for the plan."""
    out = out or sys.stdout
    print(
        f"plan {plan.name} ({plan.path}): {len(states)} runs on {plan.dataset}, experiment {plan.experiment}", file=out
    )
    ests = {s: estimate(s.run, speeds, trajectories) for s in states if s.state != DONE}
    left = {s: remaining_s(s, ests[s]) if s in ests else 0.0 for s in states}
    for step in dict.fromkeys(s.run.step for s in states):  # in the order the runs will run
        in_step = [s for s in states if s.run.step == step]
        done = sum(s.state == DONE for s in in_step)
        step_left = human(sum(left[s] for s in in_step))
        print(f"step {step}: {in_step[0].run.why}  [{done}/{len(in_step)} done, {step_left} left]", file=out)
        for s in in_step:
            print(f"  {line(s, ests.get(s), left[s])}", file=out)
    total = sum(left.values())
    print(f"time left: ~{human(total)} for {len(ests)} run(s), one at a time (an estimate, not a promise)", file=out)
    capped = [s for s in states if s in ests and ests[s].capped]
    if capped:
        at_cap = sum(left[s] for s in capped)
        print(
            f"  of which {human(at_cap)} prices {len(capped)} early-stopping run(s) at their epoch cap: they stop "
            "sooner, at an epoch no committed run predicts",
            file=out,
        )
    pace = pace_line(states, ests, left, [x for x in speeds if not x.running], trajectories)
    if pace:
        print(pace, file=out)
    return total


PACE_BAND = (0.8, 1.25)  # a running run's pace within this ratio of its estimate: nothing to say


def pace_line(states: list[RunState], ests: dict, left: dict, measured, trajectories=()) -> str:
    """When a running run goes at a pace ``PACE_BAND`` does not hold of its estimate from the ``measured`` runs
    (the finished ones: not the run itself) because the machine is busier or quieter than when they were measured,
    or another CPU, the time left with the pending runs scaled by that ratio; else ""."""
    running = [s for s in states if s.state == RUNNING and s in ests and math.isfinite(s.pace_s)]
    if not running:
        return ""
    s = running[0]
    expected = estimate(s.run, measured, trajectories).epoch_s
    ratio = s.pace_s / expected
    if PACE_BAND[0] <= ratio <= PACE_BAND[1]:
        return ""
    scaled = sum(left[x] * (ratio if x.state == PENDING else 1.0) for x in ests)
    return (
        f"  at the pace of the running run instead (~{human(scaled)}): {s.run.label.strip()} takes "
        f"{s.pace_s:.0f} s/epoch, x{ratio:.2f} the {expected:.0f} s its estimate rests on; this machine runs "
        f"{'slower' if ratio > 1 else 'faster'} now than the one those runs were measured on (busier or quieter, or "
        "another CPU: see the runs' cpu tags)"
    )


def line(s: RunState, est: Estimate | None, seconds: float) -> str:
    """One run's line: done, or running / pending with the ``seconds`` it still needs and its estimate ``est``."""
    label = f"{s.run.label:28s}"
    if s.state == DONE or est is None:
        return f"{label} done ({s.source})"
    if s.twin:
        return f"{label} pending, copies finished run {s.twin[:8]} (its config, in another experiment): no training"
    left = f"{'up to ' if est.capped else ''}~{human(seconds)}"
    epochs = f"; {est.epochs_basis}" if est.epochs_basis else ""
    if s.state == RUNNING:
        return f"{label} running, epoch {s.epoch}/{s.run.epochs}, {left} left{epochs}"
    resumes = f"resumes after epoch {s.epoch}/{s.run.epochs} (interrupted run {s.source[:8]}), " if s.epoch else ""
    return (
        f"{label} pending, {resumes}{left} ({est.epoch_s:.0f} s/epoch = train {est.train_s:.0f} s"
        f" + eval {est.eval_s:.1f} s; {est.basis}{epochs})"
    )


def command(run: Run, plan: Plan, stores: Stores, threads: int) -> list[str]:
    """The run's ``python -m mmlexp -m`` command: a one-point grid, whose ledger lets one worker claim it, resumes an
    interrupted run from its checkpoint and trains again a run deleted from the store (``mmlexp.sweep.grid``)."""
    return [
        sys.executable, "-m", "mmlexp", "-m", *run.overrides(), f"trainer.num_threads={threads}",
        f"tracking.experiment={plan.experiment}", *stores.overrides(),
    ]  # fmt: skip


def run_missing(plan: Plan, stores: Stores, results: Path, threads: int) -> int:
    """Run the plan's pending runs one at a time (state re-read before each); 1 if any failed. A run whose exact
    config finished in another experiment of the store is copied, not trained (``twins``); any other goes to its
    grid (``command``)."""
    from mmlexp.reproduce import twins

    stores.root.mkdir(parents=True, exist_ok=True)
    failed = []
    for run in [s.run for s in plan_state(plan, stores, results) if s.state != DONE]:
        state = next(s for s in plan_state(plan, stores, results) if s.run == run)  # another worker may have run it
        if state.state == DONE:
            continue
        print(f"== {plan.dataset} {run.label} (step {run.step}): {state.state}", flush=True)
        if state.state == PENDING and (twin := twins.find_twin(run, plan, stores, threads)) is not None:
            copy = twins.copy_run(stores, twin, plan.experiment)
            print(f"   copied run {twin.info.run_id} (the same config, finished in another experiment) as {copy}")
            continue
        if subprocess.call(command(run, plan, stores, threads), cwd=stores.root) != 0:
            failed.append(run.label)
    if failed:
        print(f"mmlexp.reproduce: {len(failed)} run(s) failed: {', '.join(failed)}; run again to retry them")
    return 1 if failed else 0


def has_runs(stores: Stores, plan: Plan) -> bool:
    """Whether the store holds finished runs of the plan's dataset (else the report rebuilds from the CSVs)."""
    from mmlexp.reproduce.state import store_runs

    finished = store_runs(stores, plan.experiment)
    return bool(len(finished)) and plan.dataset in set(finished["dataset"])


def write_report(plan: Plan, stores: Stores, results: Path) -> int:
    """``results/<plan>/`` (a dataset's plan is named after it) from the store, merged with the committed runs, else
    rebuilt from the committed CSVs."""
    from mmlexp.report.__main__ import main as report

    committed = results / plan.name / "runs.csv"
    if has_runs(stores, plan):
        where = ["--tracking-uri", stores.tracking_uri, "--experiment", plan.experiment, "--export-csv"]
        args = [*where, "--dataset", plan.dataset, "--out", str(results), "--name", plan.name]
    elif committed.is_file():
        args = ["--from-csv", str(committed)]
    else:
        print(
            f"mmlexp.reproduce: error: no runs in {stores.root} and no {committed}: nothing to report", file=sys.stderr
        )
        return 2
    return report(args)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        plans = load_plans(args.plan, args.steps)
        stores = Stores(args.runs.resolve() if args.runs else default_runs_dir())
        if args.command == "run":
            stores.check_writable()
    except PlanError as err:
        print(f"mmlexp.reproduce: error: {err}", file=sys.stderr)
        return 2
    print(f"stores: {stores.root}")
    if args.command == "report":
        named = {plan.name: plan for plan in plans}  # a queue names a plan in several entries: one report each
        return max([write_report(plan, stores, args.results) for plan in named.values()])
    if not describe_all(plans, stores, args.results, args.threads):
        return 2
    if args.command == "status":
        return 0
    return max([run_missing(plan, stores, args.results, args.threads) for plan in plans])


def describe_all(plans: list[Plan], stores: Stores, results: Path, threads: int = 2) -> bool:
    """``describe`` each plan (a pending run with a twin, which the runner copies at ``threads``, costs nothing);
    for a queue, each entry under its number and reason (an entry whose runs are all done in one line), then the
    queue's total. False (reported) for a plan whose runs cannot be configured."""
    from mmlexp.devices import cpu_name
    from mmlexp.reproduce.twins import with_twins

    committed, trajectories = committed_measurements(results)
    cpu = cpu_name()
    trajectories = mark_here(trajectories, cpu)
    experiments = dict.fromkeys(plan.experiment for plan in plans)  # a queue's entries share them: read each once
    speeds_of = {e: on_this_cpu(committed + store_speeds(stores, e), cpu) for e in experiments}
    queue = len(plans) > 1
    total, pending = 0.0, 0
    for i, plan in enumerate(plans, start=1):
        speeds = speeds_of[plan.experiment]
        try:
            states = with_twins(plan_state(plan, stores, results), plan, stores, threads)
            steps = ", ".join(str(k) for k in dict.fromkeys(r.step for r in plan.runs))
            if queue and all(s.state == DONE for s in states):
                print(f"entry {i}: {plan.name} steps {steps}, all {len(states)} run(s) done ({plan.why})")
                continue
            if queue:
                print(f"entry {i}: {plan.name} steps {steps} ({plan.why})")
            total += describe(plan, states, speeds, trajectories)
        except PlanError as err:
            print(f"mmlexp.reproduce: error: plan {plan.path}, {err}", file=sys.stderr)
            return False
        pending += sum(s.state != DONE for s in states)
    if queue:
        print(f"queue: ~{human(total)} left for {pending} run(s) in {len(plans)} entries, one at a time")
    return True


if __name__ == "__main__":
    sys.exit(main())
