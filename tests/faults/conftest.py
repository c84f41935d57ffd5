"""Fixtures of the fault suite: one fork server, empty stores to copy, one uninterrupted reference per scenario
(run once, with the fault points counted), and the summary of the faults injected.

The summary (a table printed at the end, and JSON in the session's temp folder) counts faults injected, runs
recovered and bytes lost (``harness`` defines them); ``MMLEXP_FAULTS_SUMMARY=<file>`` also writes the JSON there
(``benchmarks/faults.py`` renders it as ``benchmarks/results/faults.md``).
"""

import json
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.faults import harness

SUMMARY: list[dict] = []
SUMMARY_ENV = "MMLEXP_FAULTS_SUMMARY"


@dataclass
class Reference:
    """An uninterrupted run of a scenario: its folder, how often it reached each fault point, and per run
    directory (keyed by ``trainer.lr``) its MLflow state (``harness.mlflow_state``)."""

    where: Path
    counts: dict[str, int]
    by_lr: dict[str, tuple[Path, tuple]] = field(default_factory=dict)


@pytest.fixture(scope="session")
def runner(tmp_path_factory):
    run = harness.Runner(tmp_path_factory.mktemp("fork-server"))
    yield run
    run.close()


@pytest.fixture(scope="session")
def templates(tmp_path_factory) -> Path:
    """An empty MLflow store and an empty Optuna storage (with the grid ledger's tables), copied by each case:
    creating them takes seconds."""
    import optuna
    from mlflow.tracking import MlflowClient

    from mmlexp.sweep.ledger import Ledger

    where = tmp_path_factory.mktemp("templates")
    MlflowClient(f"sqlite:///{where}/mlflow.db").search_experiments()
    optuna.storages.RDBStorage(f"sqlite:///{where}/optuna.db")
    Ledger(f"sqlite:///{where}/optuna.db").engine.dispose()
    return where


@pytest.fixture(scope="session")
def references(runner, templates, tmp_path_factory):
    """``get(scenario)``: the scenario's reference, run on first use."""
    cache: dict[str, Reference] = {}

    def get(scenario: str) -> Reference:
        if scenario not in cache:
            cache[scenario] = make_reference(runner, templates, tmp_path_factory.mktemp(f"ref-{scenario}"), scenario)
        return cache[scenario]

    return get


def make_reference(runner, templates: Path, where: Path, scenario: str) -> Reference:
    from mlflow.tracking import MlflowClient

    harness.copy_stores(templates, where, "mlflow.db", "optuna.db")
    counts = where / "counts.json"
    rc = runner.run(harness.command(scenario, where), where, where / "run.log", fault=f"count:{counts}")
    assert rc == 0, (where / "run.log").read_text()[-3000:]
    ref = Reference(where, json.loads(counts.read_text()))
    uri = f"sqlite:///{where}/mlflow.db"
    client = MlflowClient(uri)
    for run in harness.children(uri):
        run_dir = where / "run" if scenario == "single" else where / "sweep" / run.data.tags["sweep.job_num"]
        ref.by_lr[run.data.params["trainer.lr"]] = (run_dir, harness.mlflow_state(client, run))
    return ref


def draw_k(scenario: str, point: str, seed: int, count: int) -> int:
    """The seeded occurrence of ``point`` to strike at: distinct for the seeds of a (scenario, point) while it can."""
    order = list(range(1, count + 1))
    random.Random(f"{scenario}/{point}").shuffle(order)
    return order[seed % count]


@pytest.fixture
def record():
    """``record(**fields)``: one injected fault for the summary (scenario, fault, point, k, injected, recovered,
    bytes_lost, duplicates)."""
    start = time.time()

    def add(**fields) -> None:
        SUMMARY.append(fields | {"seconds": round(time.time() - start, 1)})

    return add


def summary_rows(rows: list[dict]) -> list[tuple]:
    """(scenario, fault, faults injected, runs recovered, bytes lost, duplicated metric rows) per group."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["scenario"], row["fault"])].append(row)
    return [
        (
            scenario,
            fault,
            sum(r["injected"] for r in rs),
            sum(r["recovered"] for r in rs),
            sum(r["bytes_lost"] for r in rs),
            sum(r.get("duplicates", 0) for r in rs),
        )
        for (scenario, fault), rs in sorted(groups.items())
    ]


def pytest_sessionfinish(session, exitstatus):
    if not SUMMARY:
        return
    text = json.dumps(SUMMARY, indent=1)
    base = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    (Path(base) / "faults.json").write_text(text)
    if os.environ.get(SUMMARY_ENV):
        Path(os.environ[SUMMARY_ENV]).write_text(text)


def pytest_terminal_summary(terminalreporter):
    if not SUMMARY:
        return
    rows = summary_rows(SUMMARY)
    terminalreporter.section("faults injected")
    head = f"{'scenario':10} {'fault':34} {'injected':>8} {'recovered':>9} {'bytes lost':>10} {'dups':>5}"
    terminalreporter.line(head)
    for scenario, fault, injected, recovered, lost, dups in rows:
        terminalreporter.line(f"{scenario:10} {fault:34} {injected:8} {recovered:9} {lost:10} {dups:5}")
    total = [sum(r[i] for r in rows) for i in (2, 3, 4, 5)]
    terminalreporter.line(f"{'total':45} {total[0]:8} {total[1]:9} {total[2]:10} {total[3]:5}")
