"""Where a reproduction keeps its stores: ``$MMLEXP_RUNS_DIR``, else the user data dir (``~/.local/share/mmlexp/runs``
on Linux), never a path of one machine. The folder holds ``mlflow.db`` (the runs), ``mlartifacts/`` (best weights,
per-user metrics), ``optuna.db`` (the grid ledger that makes an interrupted run resume) and ``multirun/`` (run dirs
with their checkpoints)."""

import os
from dataclasses import dataclass
from pathlib import Path

RUNS_ENV = "MMLEXP_RUNS_DIR"


def default_runs_dir() -> Path:
    if os.environ.get(RUNS_ENV):
        return Path(os.environ[RUNS_ENV]).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_dir("mmlexp")) / "runs"


@dataclass(frozen=True)
class Stores:
    root: Path

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def ledger_uri(self) -> str:
        return f"sqlite:///{self.root / 'optuna.db'}"

    @property
    def artifacts(self) -> Path:
        return self.root / "mlartifacts"

    def exists(self) -> bool:
        return (self.root / "mlflow.db").is_file()

    def check_writable(self) -> None:
        """Refuse (``PlanError``, exit 2) a stores folder that cannot be created or written, before anything runs."""
        from mmlexp.reproduce.plan import PlanError

        base = next(p for p in (self.root, *self.root.parents) if p.exists())
        if not base.is_dir():
            raise PlanError(f"--runs {self.root}: {base} is a file; allowed: a folder that can be written")
        if not os.access(base, os.W_OK | os.X_OK):
            raise PlanError(f"--runs {self.root}: no write permission on {base}; allowed: a folder that can be written")

    def overrides(self) -> list[str]:
        """What a run needs to track into these stores and resume through their ledger."""
        return [
            f"tracking.uri={self.tracking_uri}",
            f"tracking.artifact_location={self.artifacts}",
            f"hydra.sweeper.storage={self.ledger_uri}",
        ]
