"""submitit on a SLURM cluster without accounting: one line, not one per poll.

submitit's SLURM launcher polls ``sacct`` for the states of the jobs it waits for.  Without accounting
(``AccountingStorageType=accounting_storage/none``) every poll fails: ``sacct`` prints "Slurm accounting storage is
disabled" and submitit logs ``Call #N - Bypassing sacct error ..., status may be inaccurate.`` (three times: its two
handlers and the root's), for as long as the sweep runs.  Nothing is lost by not asking: submitit follows a job
through its result file, and a failed ``sacct`` gives it no state anyway.

So at the first such warning ``SacctErrorsOnce`` runs ``sacct`` once more to read its error.  If it says that
accounting is disabled, the warning is replaced by one line saying so and submitit's watcher stops calling ``sacct``
in this process (``SlurmJob.watcher``: its command is None, which submitit treats as nothing to ask).  Any other
sacct error (a slurmdbd that is down for a while) is left to submitit, warnings and all.

Importing this module installs the filter on the ``submitit`` logger (``quiet_sacct_errors``, idempotent; it
imports nothing: submitit's logging setup keeps a logger's filters).  ``mmlexp.sweep`` imports it, so every Hydra
start, where the launchers run, has it.
"""

import logging
import subprocess
import sys

LOGGER = "submitit"
MARK = "Bypassing sacct error"
DISABLED = "accounting storage is disabled"
SAID = (
    "SLURM accounting is disabled (sacct: {error}): submitit follows the jobs through their result files; "
    "sacct is not called again by this process"
)

log = logging.getLogger(__name__)


def sacct_error() -> str:
    """What ``sacct`` says on stderr when asked about a job ('' when it answers)."""
    try:
        done = subprocess.run(["sacct", "-o", "JobID", "--parsable2", "-j", "1"], capture_output=True, text=True,
                              timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as err:
        return str(err)
    return done.stderr.strip() if done.returncode else ""


def stop_polling_sacct() -> bool:
    """submitit's SLURM watcher asks nothing from now on (its command is None); False if submitit is not loaded."""
    slurm = sys.modules.get("submitit.slurm.slurm")
    if slurm is None:
        return False
    slurm.SlurmJob.watcher._make_command = lambda: None
    return True


class SacctErrorsOnce(logging.Filter):
    """At submitit's first sacct error: if accounting is disabled, says so once (``SAID``) and stops the polls;
    otherwise lets every record through."""

    def __init__(self) -> None:
        super().__init__()
        self.disabled: bool | None = None  # unknown until the first sacct error
        self.dropped = 0  # sacct errors not shown

    def filter(self, record: logging.LogRecord) -> bool:
        if self.disabled is False or MARK not in record.getMessage():
            return True
        if self.disabled is None:
            error = sacct_error()
            self.disabled = DISABLED in error.lower()
            if not self.disabled:
                return True
            stop_polling_sacct()
            log.warning(SAID.format(error=error))
        self.dropped += 1
        return False


def quiet_sacct_errors() -> SacctErrorsOnce:
    """Install (once) the filter on submitit's logger; returns it."""
    logger = logging.getLogger(LOGGER)
    for existing in logger.filters:
        if isinstance(existing, SacctErrorsOnce):
            return existing
    quiet = SacctErrorsOnce()
    logger.addFilter(quiet)
    return quiet


quiet_sacct_errors()
