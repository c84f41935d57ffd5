"""`kill -9` at seeded random moments (issue 31 item 4), in a single run, a grid and an Optuna search: during an
epoch (a training step), during an evaluation, while writing a checkpoint, while logging to MLflow, while updating
the grid ledger or the Optuna study. The process kills itself (``MMLEXP_FAULT=<point>:<k>``, ``mmlexp.faults``) at
the k-th time it reaches the point, k drawn with a seed from the occurrences the reference run counted. The same
command again is killed too, early (a fault during the recovery); then once more: every point or trial exactly
once, the final state bit-identical to the uninterrupted reference (0 bytes lost, ``harness``), no MLflow run left
RUNNING."""

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.faults import harness
from tests.faults.conftest import draw_k
from tests.test_sweeps import read_only

SEEDS = {"single": 2, "grid": 2, "optuna": 1}  # x 2 kills a case: 46 kills (plus 7 in test_resources)
CASES = [
    (scenario, point, seed)
    for scenario, points in harness.KILL_POINTS.items()
    for point in points
    for seed in range(SEEDS[scenario])
]


def check_single(where, ref) -> tuple[int, int]:
    """(bytes lost, duplicated metric rows) of the recovered single run: one FINISHED run (a run killed before its
    first checkpoint has nothing to resume: it stays KILLED, closed by the next run)."""
    uri = f"sqlite:///{where}/mlflow.db"
    runs = no_run_left_running(where)
    (run,) = [r for r in runs if r.info.status == "FINISHED"]
    assert {r.info.status for r in runs if r is not run} <= {"KILLED"}
    (ref_dir, ref_state) = ref.by_lr[run.data.params["trainer.lr"]]
    state = harness.mlflow_state(MlflowClient(uri), run)
    return harness.run_dir_lost(ref_dir, where / "run") + harness.mlflow_lost(ref_state, state), state[2]


def check_children(where, ref, finished: dict[int, object], dirs: dict[int, str]) -> tuple[int, int]:
    """Bytes lost and duplicates over the FINISHED child runs ``finished`` (by point or trial), each against the
    reference of its learning rate."""
    client = MlflowClient(f"sqlite:///{where}/mlflow.db")
    lost = dups = 0
    for key, run in finished.items():
        ref_dir, ref_state = ref.by_lr[run.data.params["trainer.lr"]]
        state = harness.mlflow_state(client, run)
        lost += harness.run_dir_lost(ref_dir, where / "sweep" / dirs[key]) + harness.mlflow_lost(ref_state, state)
        dups += state[2]
    return lost, dups


def no_run_left_running(where) -> list:
    runs = harness.all_runs(f"sqlite:///{where}/mlflow.db")
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    return runs


def check_grid(where, ref) -> tuple[int, int]:
    """Every point finished once (one FINISHED run each; a run killed before its first checkpoint stays KILLED)."""
    assert dict(read_only(where / "optuna.db", "SELECT idx, state FROM mmlexp_grid_points")) == {
        0: "finished",
        1: "finished",
    }
    runs = no_run_left_running(where)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert [r.info.status for r in parents] == ["FINISHED"]
    finished: dict[int, object] = {}
    for run in runs:
        if run.data.tags.get("sweep.role") != "parent" and run.info.status == "FINISHED":
            idx = int(run.data.tags["sweep.job_num"])
            assert idx not in finished, f"point {idx} finished twice"
            finished[idx] = run
    assert sorted(finished) == [0, 1]
    return check_children(where, ref, finished, {i: str(i) for i in finished})


def check_optuna(where, ref) -> tuple[int, int]:
    """n_trials COMPLETE trials, each with one FINISHED run; killed trials FAIL and taken over by a complete one."""
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{where}/optuna.db")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2 and not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    for dead in study.get_trials(states=(TrialState.FAIL,)):
        if "skipped" in dead.user_attrs:
            continue
        assert study.trials[dead.user_attrs["taken_over_by"]].state in (TrialState.COMPLETE, TrialState.FAIL)
    runs = [r for r in no_run_left_running(where) if r.data.tags.get("sweep.role") != "parent"]
    finished: dict[int, object] = {}
    for run in (r for r in runs if r.info.status == "FINISHED"):
        number = int(run.data.tags["optuna.trial_number"])
        assert number not in finished, f"trial {number} has two finished runs"
        finished[number] = run
    assert sorted(finished) == sorted(t.number for t in complete)
    lost, dups = check_children(where, ref, finished, {n: str(n) for n in finished})
    for trial in complete:  # the objective told to the study
        _, (ref_final, *_) = ref.by_lr[str(trial.params["trainer.lr"])]
        lost += 0 if trial.value == ref_final["best/recall_at_20"] else 8
    return lost, dups


CHECKS = {"single": check_single, "grid": check_grid, "optuna": check_optuna}


def recovery_fault(seed: int) -> str:
    """The second kill of a case, in the re-run: at its first MLflow write or its first checkpoint write (every
    re-run reaches both, even one with nothing left to train: it logs, then writes best.pt)."""
    return ("mlflow", "checkpoint")[seed % 2]


@pytest.mark.slow
@pytest.mark.parametrize("scenario, point, seed", CASES)
def test_kill_9_twice_then_the_same_command_loses_nothing(
    runner, templates, references, record, tmp_path, scenario, point, seed
):
    """A kill at the seeded moment, a second one early in the re-run (a fault during the recovery), then the same
    command once more: it ends as the reference."""
    counted = references(scenario)
    ref = references("grid") if scenario == "optuna" else counted  # a trial is the grid point of its lr
    k = draw_k(scenario, point, seed, counted.counts[point])
    second = recovery_fault(seed)
    harness.copy_stores(templates, tmp_path, "mlflow.db", "optuna.db")
    args = harness.command(scenario, tmp_path)
    faults = [(f"kill -9 at {point}", point, k), (f"kill -9 at {second} #1 of the re-run", second, 1)]
    killed: list[bool] = []
    recovered, lost, dups = False, -1, 0
    try:
        for i, (_, where, at) in enumerate(faults):
            rc = runner.run(args, tmp_path, tmp_path / f"killed{i}.log", fault=f"{where}:{at}")
            killed.append(rc == -9)
            assert rc == -9, (
                f"not killed at {where} #{at} (rc {rc}):\n" + (tmp_path / f"killed{i}.log").read_text()[-3000:]
            )
        again = runner.run(args, tmp_path, tmp_path / "again.log")
        assert again == 0, (tmp_path / "again.log").read_text()[-4000:]
        lost, dups = CHECKS[scenario](tmp_path, ref)
        recovered = lost == 0
    finally:
        for i, ((fault, where, at), hit) in enumerate(zip(faults, killed, strict=False)):
            first = i == 0  # the case's bytes lost and duplicates, counted once
            record(scenario=scenario, fault=fault, point=where, k=at, seed=seed, injected=hit, recovered=recovered,
                   bytes_lost=max(lost, 0) if first else 0, duplicates=dups if first else 0)  # fmt: skip
    assert lost == 0
