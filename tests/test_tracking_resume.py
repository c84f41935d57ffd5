"""A resumed run does not log an epoch twice: killed after logging epoch k but before checkpoint k was written, it
trains epoch k again (bit-identical) and skips the (key, step) rows the store already holds. Sweep parents, which
log summaries at one step again and again, still do."""

from collections import defaultdict
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mmlexp import faults
from mmlexp.checkpoint import CHECKPOINT_FILE
from mmlexp.run import train
from mmlexp.tracking import Tracker

RUN = [
    "dataset=sample",
    "num_negatives=10",
    "trainer.batch_size=8192",
    "trainer.num_threads=1",
    "trainer.epochs=3",
    "eval.longtail.enabled=false",
]
TIMINGS = ("epoch_time_s", "eval_time_s", "interactions_per_s", "wall_time_s")


class Killed(BaseException):
    """The process dies here (nothing after it runs: no ``except Exception`` catches it)."""


def rows(uri: str, run_id: str) -> dict[tuple[str, int], list[float]]:
    """Every metric row of the run: (key, step) -> its values (sorted)."""
    client = MlflowClient(uri)
    out: dict[tuple[str, int], list[float]] = defaultdict(list)
    for key in client.get_run(run_id).data.metrics:
        for m in client.get_metric_history(run_id, key):
            out[(key, m.step)].append(m.value)
    return {row: sorted(values) for row, values in out.items()}


def only_run(uri: str, *, not_in: tuple[str, ...] = ()) -> str:
    client = MlflowClient(uri)
    found = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (run_id,) = [r.info.run_id for r in found if r.info.run_id not in not_in]
    return run_id


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's rows (its own store)."""
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF

    where = tmp_path_factory.mktemp("reference")
    uri = f"sqlite:///{where}/mlflow.db"
    overrides = [f"tracking.uri={uri}", f"tracking.artifact_location={where}/artifacts", "trainer.progress=false"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(where)
        with initialize_config_dir(config_dir=str(CONF)):
            train(compose("config", overrides=overrides + RUN))
    return rows(uri, only_run(uri))


@pytest.mark.parametrize("k", [2, 4], ids=["epoch-2-logged-its-checkpoint-not-written", "best-logged-best.pt-not"])
def test_a_run_killed_between_logging_and_its_checkpoint_logs_each_step_once(
    make_cfg, tmp_path, monkeypatch, reference, k
):
    """Killed at the k-th checkpoint write (data written, not renamed: the point ``MMLEXP_FAULT=checkpoint:k``
    kills at), after that epoch's metrics (or the best epoch's, k=4) were logged; then resumed."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    writes = []

    def hit(point: str) -> None:
        writes.append(point)
        if writes.count("checkpoint") == k and point == "checkpoint":
            raise Killed

    with monkeypatch.context() as mp:
        mp.setattr(faults, "hit", hit)
        with pytest.raises(Killed):
            train(make_cfg(*RUN))
    killed = only_run(uri)
    (run_dir,) = {p.parent for p in Path(tmp_path, "outputs").rglob(CHECKPOINT_FILE)}
    before = rows(uri, killed)
    assert max(step for key, step in before if key == "recall_at_20") == min(k, 3)  # logged, not checkpointed
    train(make_cfg(*RUN, f"trainer.resume={run_dir}"))
    assert only_run(uri) == killed  # the killed run was reopened, not duplicated
    after = rows(uri, killed)
    twice = {row: values for row, values in after.items() if len(values) > 1}
    assert not twice, f"logged twice: {twice}"
    assert set(after) == set(reference)
    numerics = {row: values for row, values in after.items() if row[0] not in TIMINGS}
    assert numerics == {row: values for row, values in reference.items() if row[0] not in TIMINGS}


def test_a_reopened_run_skips_only_the_steps_the_store_holds(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = Tracker(uri, "e")
    run_id = first.start("run", {}, {})
    first.log_metrics({"loss": 1.0, "recall@20": 0.1}, step=1)
    first.log_metrics({"loss": 0.5}, step=2)
    first.finish("KILLED")
    again = Tracker(uri, "e")
    assert again.reopen(run_id)
    again.log_metrics({"loss": 0.5, "recall@20": 0.2}, step=2)  # loss at 2 is held; recall@20 is not
    again.log_metrics({"loss": 0.25, "recall@20": 0.3, "best/recall@20": 0.3}, step=3)
    again.finish()
    assert rows(uri, run_id) == {
        ("loss", 1): [1.0],
        ("loss", 2): [0.5],
        ("loss", 3): [0.25],
        ("recall_at_20", 1): [0.1],
        ("recall_at_20", 2): [0.2],
        ("recall_at_20", 3): [0.3],
        ("best/recall_at_20", 3): [0.3],
    }


@pytest.mark.parametrize("parent", [True, False], ids=["a-sweep-parent", "skip-logged-false"])
def test_a_sweep_parent_logs_its_summary_at_one_step_again(tmp_path, parent):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = Tracker(uri, "e")
    run_id = first.start("sweep", {}, {"sweep.role": "parent"} if parent else {})
    first.log_metrics({"finished_points": 1}, step=0)
    first.finish()
    again = Tracker(uri, "e")
    assert again.reopen(run_id) if parent else again.reopen(run_id, skip_logged=False)
    again.log_metrics({"finished_points": 2}, step=0)
    again.finish()
    assert rows(uri, run_id) == {("finished_points", 0): [1.0, 2.0]}
    assert MlflowClient(uri).get_run(run_id).data.metrics["finished_points"] == 2.0
