"""Twin runs: a plan's pending run whose exact config already finished in the store, in another experiment (a plan of
checks, a run by hand), is copied into the plan's experiment instead of trained again.

The same config trains the same model: same seed, same data, same threads, hence the same numbers on the same CPU
(the Gowalla SimpleX + CCL check and its paper-plan rerun logged bit-identical metrics). Two runs are twins when the
parameters the run would log (its config composed with the runner's overrides and flattened as the tracker does,
``mmlexp.tracking.flatten``) equal the finished run's, less ``tracking.*`` (where a run is tracked is not what it
trains). The copy holds the twin's parameters, metric histories, tags and artifacts (the per-user file, the best
weights), ends FINISHED at the twin's times, and says where it came from: ``mmlexp.copy_of`` (run id) and
``mmlexp.copy_of_experiment``. A deleted run is never a twin (it was withdrawn).
"""

import tempfile
from dataclasses import replace
from pathlib import Path

from omegaconf import OmegaConf

from mmlexp.reproduce.plan import Plan, Run
from mmlexp.reproduce.state import PENDING, RunState
from mmlexp.reproduce.stores import Stores

IGNORED = ("tracking.",)  # parameter prefixes that say where a run is tracked, not what it trains
# the twin's grid and process, not the copy's (its sweep.overrides stay: how it was trained, its experiment named)
DROPPED_TAGS = ("mlflow.parentRunId", "mmlexp.host", "mmlexp.pid", "mmlexp.pid_started", "mmlexp.heartbeat")
GRID_TAGS = ("sweep.id", "sweep.dir", "sweep.job_num", "grid.")
BATCH = 1000  # MLflow's limit of metrics in one log_batch


def trained_params(params: dict[str, str]) -> dict[str, str]:
    """The parameters that decide what a run trains (``IGNORED`` prefixes left out)."""
    return {k: v for k, v in params.items() if not k.startswith(IGNORED)}


def planned_params(run: Run, plan: Plan, threads: int) -> dict[str, str]:
    """The parameters ``run`` would log when the runner starts it with ``threads`` (``trained_params`` only)."""
    from hydra import compose, initialize_config_dir

    from mmlexp.__main__ import CONFIG_DIR
    from mmlexp.tracking import flatten

    overrides = [*run.overrides(), f"trainer.num_threads={threads}", f"tracking.experiment={plan.experiment}"]
    with initialize_config_dir(config_dir=CONFIG_DIR):
        cfg = compose("config", overrides=overrides)
    return trained_params(flatten(OmegaConf.to_container(cfg, resolve=True)))  # type: ignore[arg-type]


def find_twin(run: Run, plan: Plan, stores: Stores, threads: int):
    """A FINISHED, not deleted run of the store outside the plan's experiment whose ``trained_params`` are the ones
    ``run`` would log (the latest, if several), or None."""
    from mmlexp.report.runs import _search, client_for

    if not stores.exists():
        return None
    client = client_for(stores.tracking_uri)
    others = [e.experiment_id for e in client.search_experiments() if e.name != plan.experiment]
    if not others:
        return None
    query = f"attributes.status = 'FINISHED' and params.seed = '{run.seed}' and params.`dataset.name` = '{run.dataset}'"
    candidates = [r for r in _search(client, others, query) if r.data.tags.get("sweep.role") != "parent"]
    if not candidates:
        return None
    try:
        wanted = planned_params(run, plan, threads)
    except Exception:  # a config that does not compose has no twin: the estimate names its refusal (job_of)
        return None
    twins = [r for r in candidates if trained_params(r.data.params) == wanted]
    return max(twins, key=lambda r: r.info.end_time or 0) if twins else None


def with_twins(states: list[RunState], plan: Plan, stores: Stores, threads: int) -> list[RunState]:
    """``states`` with each pending run's twin (``find_twin`` at ``threads``), the run the runner will copy."""
    return [
        replace(s, twin=twin.info.run_id)
        if s.state == PENDING and (twin := find_twin(s.run, plan, stores, threads)) is not None
        else s
        for s in states
    ]


def copy_run(stores: Stores, twin, experiment: str) -> str:
    """Copy ``twin`` (an MLflow ``Run``) into ``experiment`` (created if missing); returns the copy's run id."""
    from mlflow.entities import Metric, Param

    from mmlexp.report.runs import client_for

    client = client_for(stores.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    location = stores.artifacts.resolve().as_uri()  # as the tracker creates an experiment
    exp_id = found.experiment_id if found else client.create_experiment(experiment, artifact_location=location)
    source = client.get_experiment(twin.info.experiment_id).name
    tags = {k: v for k, v in twin.data.tags.items() if k not in DROPPED_TAGS and not k.startswith(GRID_TAGS)}
    tags |= {"mmlexp.copy_of": twin.info.run_id, "mmlexp.copy_of_experiment": source}
    copy = client.create_run(exp_id, start_time=twin.info.start_time, tags=tags, run_name=twin.info.run_name)
    rid = copy.info.run_id
    client.log_batch(rid, params=[Param(k, v) for k, v in twin.data.params.items()])
    history = [m for key in twin.data.metrics for m in client.get_metric_history(twin.info.run_id, key)]
    for i in range(0, len(history), BATCH):
        chunk = history[i : i + BATCH]
        client.log_batch(rid, metrics=[Metric(m.key, m.value, m.timestamp, m.step) for m in chunk])
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(twin.info.run_id, "", tmp))
        if any(local.iterdir()):
            client.log_artifacts(rid, str(local))
    client.set_terminated(rid, "FINISHED", end_time=twin.info.end_time)
    return rid
