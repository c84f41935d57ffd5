"""MLflow run lifecycle: one MLflow run per training run, never left RUNNING.

Metric names use ``_at_`` (``recall_at_20``): MLflow rejects ``@``.  MLflow is imported only when
tracking is on, so ``tracking.enabled=false`` runs where it is not installed (a bare GPU machine).
"""

import math
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_PARAM_LENGTH = 6000


def mlflow_key(name: str) -> str:
    """``recall@20`` -> ``recall_at_20`` (MLflow refuses ``@`` in metric names)."""
    return name.replace("@", "_at_")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"trainer.lr": "0.0001", ...}`` (lists kept as their repr)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:MAX_PARAM_LENGTH]
    return out


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _sqlite_parent(uri: str) -> None:
    """Create the folder of a ``sqlite:///path`` store so a first run just works."""
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


class Tracker:
    """Thin wrapper over ``MlflowClient`` for one run. ``enabled=False`` turns every call into a no-op."""

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None, enabled: bool = True):
        self.enabled, self.run_id = enabled, None
        if not enabled:
            return
        from mlflow.tracking import MlflowClient

        _sqlite_parent(uri)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = Path(artifact_location).resolve().as_uri() if artifact_location else None
            try:
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            except Exception:  # created by a parallel job in between
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            self.experiment_id = exp.experiment_id

    def start(self, run_name: str, params: Mapping[str, str], tags: Mapping[str, str]) -> str | None:
        if not self.enabled:
            return None
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={k: str(v) for k, v in tags.items() if v is not None})
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100], synchronous=True)
        return self.run_id

    def reopen(self, run_id: str) -> bool:
        """Continue an existing run of this experiment (a resumed sweep's parent): RUNNING again.
        False when the run is not in this store and experiment."""
        if not self.enabled:
            return False
        try:
            run = self.client.get_run(run_id)
        except Exception:
            return False
        if run.info.experiment_id != self.experiment_id or run.info.lifecycle_stage != "active":
            return False
        self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        return True

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(mlflow_key(k), float(v), now, step) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled:
            from mlflow.entities import RunTag

            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, name: str) -> None:
        if self.enabled:
            self.client.log_text(self.run_id, text, name)

    def log_artifact(self, path: str | os.PathLike) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str = "FINISHED") -> None:
        """End the run as FINISHED, FAILED or KILLED."""
        if self.enabled and self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)

    @property
    def where(self) -> str:
        if not self.enabled:
            return "nowhere (tracking.enabled=false)"
        return f"{self.uri} (experiment id {self.experiment_id}, run id {self.run_id})"
