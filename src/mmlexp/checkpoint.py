"""Per-epoch checkpoints of a run, and finding the one to resume from.

After each evaluated epoch a run writes ``<run dir>/checkpoint.pt`` atomically (a temporary file, fsync,
rename): ``mmlexp.train.training_state`` (model, optimizer, RNG states, epoch, step, best epoch and its
weights, history) plus what identifies the run (the dataset's fingerprint, the model's tensor shapes, the
MLflow store and run id, the config).  ``trainer.resume``:

* ``auto`` (default): continue from ``<run dir>/checkpoint.pt`` when the run directory has one — the same
  command with the same ``hydra.run.dir``, or a grid point that was interrupted (its run directory is fixed);
* a path (a checkpoint file, or a run directory holding one): continue from it; it must exist and be of the
  same dataset and model shapes;
* ``never``: start over.

With ``tracking.save_checkpoint`` a run also writes ``<run dir>/best.pt`` (``BEST_FILE``, also atomically): the
best epoch's weights, config and metrics, read back by ``load_checkpoint``.

Faults (issue 31, ``tests/faults``): a write that fails (disk full, a file size limit) raises
``CheckpointWriteError`` naming the file; its temporary file is removed and the previous checkpoint is left as it
was, so the same command resumes from it once there is room.  A checkpoint that is truncated or corrupt (every
record's CRC-32 is checked before it is loaded: a single flipped bit is found) is refused with a ``ConfigError``
naming the file (exit 2).  Only the last checkpoint is kept, so there is no fallback to an older one: the message
says how to start over or where to point ``trainer.resume``.
"""

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from mmlexp import faults
from mmlexp.config import ConfigError
from mmlexp.tracking import flatten

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"
# Settings a resumed run may change: how long it trains, where it logs, how it shows progress.
MAY_CHANGE = (
    "trainer.epochs",
    "trainer.max_steps",
    "trainer.max_minutes",
    "trainer.resume",
    "trainer.checkpoint",
    "trainer.progress",
    "trainer.log_every",
    "trainer.num_threads",
    "trainer.cuda_graph",
    "trainer.defer_rows",  # the same bits either way
    "trainer.memory_check",  # a check before training (issue 31), nothing of the run
    "device",
    "tracking.",
)

log = logging.getLogger("mmlexp")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, a file size limit); the previous one is left as it was."""


class _Writer:
    """A file for ``torch.save`` that keeps the ``OSError`` of a failed write (torch reports it as a bare
    ``RuntimeError: unexpected pos``)."""

    def __init__(self, f: Any):
        self.f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` that never leaves a half-written file at ``path`` (nor, on an error, a temporary file); a
    failed write raises ``CheckpointWriteError``. Temporary files left by a killed writer are removed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = None
    try:
        with open(tmp, "wb") as f:
            writer = _Writer(f)
            torch.save(state, writer)  # type: ignore[arg-type]  # (a file-like object: write and flush)
            faults.hit("checkpoint")  # fault injection (tests/faults): a no-op unless MMLEXP_FAULT is set
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        cause = err if isinstance(err, OSError) else writer.error if writer is not None else None
        if cause is None:
            raise
        previous = f"the previous {path} is left as it was" if path.exists() else f"there was no {path} before"
        raise CheckpointWriteError(
            cause.errno,
            f"cannot write the checkpoint {path} ({cause.strerror or cause}; disk full or a file size limit?); "
            f"{previous}: make room and run the same command again to resume",
        ) from err
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # a writer killed mid-write (one writer per run dir)
        stale.unlink(missing_ok=True)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``best.pt`` written by ``mmlexp.run.train`` (tensors and plain values only: ``weights_only=True``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def check_records(path: Path) -> None:
    """Raise ``ValueError`` when a record of the checkpoint (a zip archive) is truncated or fails its CRC-32
    (``torch.load`` reads a flipped bit in the weights without a word). A file that is not a zip is left to
    ``torch.load``."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise ValueError(f"a damaged zip archive: {err}") from err
    if bad is not None:
        raise ValueError(f"record {bad!r} fails its CRC-32 check: the file is corrupt")


def load(path: Path, setting: str) -> dict[str, Any]:
    """The training state in ``path``; a file that cannot be read, is truncated or corrupt is a ``ConfigError``
    naming it."""
    try:
        check_records(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(
            f"trainer.resume={setting!r}: cannot load the checkpoint {path} "
            f"({type(err).__name__}: {reason[:300]}); it is truncated or corrupt, and no older checkpoint is kept: "
            "use trainer.resume=never to start over, or trainer.resume=<a good checkpoint.pt>"
        ) from err
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise ConfigError(
            f"trainer.resume={setting!r}: {path} is not an mmlexp checkpoint (no model state or "
            "epoch); a checkpoint is <run dir>/checkpoint.pt"
        )
    return state


def changed_settings(saved_yaml: str | None, config: dict[str, Any]) -> list[str]:
    """Config keys whose values differ from the checkpoint's config (``MAY_CHANGE`` left out)."""
    if not saved_yaml:
        return []
    saved: Any = OmegaConf.to_container(OmegaConf.create(saved_yaml))
    old, new = flatten(saved if isinstance(saved, dict) else {}), flatten(config)
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return [k for k in keys if not k.startswith(MAY_CHANGE)]


def find_resume(
    setting: Any,
    run_dir: Path,
    dataset: dict[str, Any],
    shapes: dict[str, list[int]],
    config: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The training state to resume from (``setting`` is ``trainer.resume``), or None to start afresh.
    ``auto`` refuses a checkpoint of other settings (two runs sharing a run directory); an explicit path
    accepts it with a warning."""
    setting = "auto" if setting is None else str(setting)
    if setting == "never":
        return None
    if setting == "auto":
        path = Path(run_dir) / CHECKPOINT_FILE
        if not path.is_file():
            return None
    else:
        path = Path(setting).expanduser()
        if path.is_dir():
            path = path / CHECKPOINT_FILE
        if not path.is_file():
            raise ConfigError(
                f"trainer.resume={setting!r}: no checkpoint at {path} (allowed: auto, never, or a "
                f"{CHECKPOINT_FILE} file or a run directory holding one)"
            )
    state = load(path, setting)
    check_same_run(state, dataset, shapes, setting, path)
    changed = changed_settings(state.get("config"), config or {})
    if changed and setting == "auto":
        shown = ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else "")
        raise ConfigError(
            f"trainer.resume='auto': the run directory {Path(run_dir)} holds the checkpoint of a run "
            f"with other settings ({shown}); use another hydra.run.dir, trainer.resume={path} to "
            "continue it with these settings, or trainer.resume=never to start over"
        )
    if changed:
        log.warning(f"Resuming {path} with changed settings: {', '.join(changed)}")
    state["path"], state["changed"] = str(path), changed
    return state


def check_same_run(
    state: dict[str, Any], dataset: dict[str, Any], shapes: dict[str, list[int]], setting: str, path: Path
) -> None:
    """A checkpoint of another dataset or model shape is refused, naming what differs."""
    theirs = state.get("dataset") or {}
    if {k: str(v) for k, v in theirs.items()} != {k: str(v) for k, v in dataset.items()}:
        differ = sorted(k for k in set(theirs) | set(dataset) if str(theirs.get(k)) != str(dataset.get(k)))
        shown = ", ".join(f"{k}: {theirs.get(k)} there, {dataset.get(k)} here" for k in differ[:4])
        raise ConfigError(
            f"trainer.resume={setting!r}: {path} is a checkpoint of another dataset ({shown}); "
            "use the run's own dataset, or trainer.resume=never to start over"
        )
    their_shapes = state.get("shapes") or {k: list(v.shape) for k, v in state["model"].items()}
    if their_shapes != shapes:
        differ = sorted(k for k in set(their_shapes) | set(shapes) if their_shapes.get(k) != shapes.get(k))
        shown = ", ".join(f"{k}: {their_shapes.get(k)} there, {shapes.get(k)} here" for k in differ[:4])
        raise ConfigError(
            f"trainer.resume={setting!r}: {path} is a checkpoint of another model shape ({shown}); "
            "use the run's own encoder settings, or trainer.resume=never to start over"
        )
