"""submitit's repeated "Bypassing sacct error" warnings on a cluster without accounting: one line, not one per poll
(and no more sacct calls); any other sacct error is left to submitit.  The real cluster: ``make test-slurm``."""

import logging

import pytest
import submitit.slurm.slurm as submitit_slurm

from mmlexp import slurm_logging
from mmlexp.slurm_logging import SAID, SacctErrorsOnce, quiet_sacct_errors

DISABLED = "Slurm accounting storage is disabled"
WARNING = "Call #{} - Bypassing sacct error Command '['sacct', '-j', '5']' returned non-zero exit status 1., status may be inaccurate."  # noqa: E501


@pytest.fixture
def quiet(monkeypatch):
    """A fresh filter on submitit's logger (the imported one removed), submitit's watcher restored afterwards."""
    logger = logging.getLogger("submitit")
    monkeypatch.setattr(logger, "filters", [f for f in logger.filters if not isinstance(f, SacctErrorsOnce)])
    watcher = submitit_slurm.SlurmJob.watcher
    monkeypatch.setattr(watcher, "_make_command", watcher._make_command)
    monkeypatch.setattr(watcher, "_registered", {"5"})  # a job it waits for: it would ask sacct about it
    monkeypatch.setattr(watcher, "_finished", set())
    assert watcher._make_command() is not None
    installed = quiet_sacct_errors()
    assert quiet_sacct_errors() is installed  # once
    return logger, installed


def polls(logger, caplog, n=5):
    with caplog.at_level(logging.DEBUG):
        for call in range(1, n + 1):
            logger.warning(WARNING.format(call))
        logger.warning("Job 5 failed")  # anything else passes
    return [(r.name, r.getMessage()) for r in caplog.records]


def test_without_accounting_it_is_said_once_and_sacct_is_not_called_again(quiet, caplog, monkeypatch):
    logger, installed = quiet
    asked = []
    monkeypatch.setattr(slurm_logging, "sacct_error", lambda: asked.append(1) or DISABLED)
    assert polls(logger, caplog) == [
        ("mmlexp.slurm_logging", SAID.format(error=DISABLED)),
        ("submitit", "Job 5 failed"),
    ]
    assert asked == [1] and installed.dropped == 5
    assert submitit_slurm.SlurmJob.watcher._make_command() is None  # submitit's update() then asks nothing


def test_another_sacct_error_is_left_to_submitit(quiet, caplog, monkeypatch):
    logger, installed = quiet
    monkeypatch.setattr(slurm_logging, "sacct_error", lambda: "Connection refused: slurmdbd")
    assert polls(logger, caplog, 3) == [("submitit", WARNING.format(k)) for k in (1, 2, 3)] + [
        ("submitit", "Job 5 failed")
    ]
    assert installed.dropped == 0 and submitit_slurm.SlurmJob.watcher._make_command() is not None
