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
was, so the same command resumes from it once there is room.  A checkpoint that cannot be loaded is refused with a
``ConfigError`` naming the file (exit 2) and saying which of these it is: truncated or corrupt (every record's
CRC-32 is checked before it is loaded: a single flipped bit is found), not a checkpoint at all (a text file, a zip
archive without the records of ``torch.save``, a torch file without a model state), unreadable (permission denied,
a directory), or of another format version (``FORMAT_KEY`` in the state, or the PyTorch archive's own version).
Only the last checkpoint is kept, so there is no fallback to an older one: the message says how to start over or
where to point ``trainer.resume``.
"""

import io
import logging
import os
import pickle
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
# The format of the training states (checkpoint.pt) ``save_atomic`` writes; without it: 1 (written before it was).
FORMAT_KEY, FORMAT_VERSION = "format_version", 1
ZIP_MAGIC = b"PK\x03\x04"  # the first bytes of a zip archive (``torch.save``'s format)
# Why a checkpoint cannot be loaded: the clause after "cannot load the checkpoint <path> (<detail>)"
DAMAGED = "it is truncated or corrupt, and no older checkpoint is kept"
NOT_A_CHECKPOINT = "it is not an mmlexp checkpoint (a run writes <run dir>/checkpoint.pt)"
UNREADABLE = "the file cannot be read: check that it is a file this user may read"
OTHER_VERSION = "it was written by another version"
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


_swept: set[Path] = set()  # the checkpoint paths whose stale temporary files this process removed


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` that never leaves a half-written file at ``path`` (nor, on an error, a temporary file); a
    failed write raises ``CheckpointWriteError``. A training state (with ``model`` and ``epoch``) is stamped with
    ``FORMAT_KEY``. Temporary files left by a killed writer are removed at the first save of ``path`` in this
    process."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(state, dict) and "model" in state and "epoch" in state:
        state = {FORMAT_KEY: FORMAT_VERSION} | state
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
    sweep_stale(path)


def sweep_stale(path: Path) -> None:
    """Remove the temporary files of ``path`` left by a killed writer (one writer per run directory), once per
    process: later ones can only be another live writer's."""
    key = path.absolute()
    if key in _swept:
        return
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    _swept.add(key)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``best.pt`` written by ``mmlexp.run.train`` (tensors and plain values only: ``weights_only=True``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def check_records(path: Path) -> tuple[str, str] | None:
    """Why ``path`` cannot be a checkpoint, found before ``torch.load`` reads it: (reason, detail), a reason being
    ``UNREADABLE``, ``DAMAGED`` (a record truncated or failing its CRC-32: ``torch.load`` reads a flipped bit in the
    weights without a word) or ``NOT_A_CHECKPOINT``; None when it may be one. A file that is not a zip archive is
    left to ``torch.load`` (the legacy format)."""
    try:
        with open(path, "rb") as f:
            head, size = f.read(len(ZIP_MAGIC)), os.fstat(f.fileno()).st_size
    except OSError as err:
        return UNREADABLE, err.strerror or str(err)
    if size == 0:
        return DAMAGED, "the file is empty"
    if head != ZIP_MAGIC:
        return None
    if not zipfile.is_zipfile(path):
        return DAMAGED, f"a zip archive cut short: {size} bytes, without its central directory"
    try:
        with zipfile.ZipFile(path) as archive:
            names, bad = archive.namelist(), archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return DAMAGED, f"a damaged zip archive: {err}"
    if bad is not None:
        return DAMAGED, f"record {bad!r} fails its CRC-32 check"
    if not any(name.endswith("/data.pkl") for name in names):
        shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
        return NOT_A_CHECKPOINT, f"a zip archive without the records of torch.save (no data.pkl; it holds {shown})"
    return None


def torch_version_of(source: Path | io.BytesIO) -> int | None:
    """The file format version recorded in a ``torch.save`` archive (None when it has none)."""
    try:
        with zipfile.ZipFile(source) as archive:
            name = next((n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/version")), None)
            return None if name is None else int(archive.read(name).decode().strip())
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def written_version() -> int | None:
    """The file format version this PyTorch writes."""
    buffer = io.BytesIO()
    torch.save(torch.zeros(1), buffer)
    return torch_version_of(buffer)


def load_failure(path: Path, err: Exception) -> tuple[str, str]:
    """(reason, detail) of a ``torch.load`` of ``path`` that raised ``err`` (``check_records`` found nothing)."""
    reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
    detail = f"{type(err).__name__}: {reason}"
    if isinstance(err, OSError):
        return UNREADABLE, err.strerror or detail
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(32)
        text = all(32 <= b < 127 or b in b"\t\r\n" for b in head)
        what = "a text file" if text else "not a zip archive (the format of torch.save)"
        return NOT_A_CHECKPOINT, f"{what}: it starts with {head!r}"
    theirs, ours = torch_version_of(path), written_version()
    if theirs is not None and ours is not None and theirs > ours:
        return OTHER_VERSION, f"PyTorch file format {theirs}, newer than the {ours} of PyTorch {torch.__version__}"
    if isinstance(err, pickle.UnpicklingError):
        return NOT_A_CHECKPOINT, f"it holds objects other than tensors and plain values ({detail})"
    return DAMAGED, detail


def refusal(path: Path, setting: str, reason: str, detail: str) -> ConfigError:
    """The error that refuses the checkpoint ``path`` for ``reason`` (one of the module's reasons)."""
    advice = "or trainer.resume=<a good checkpoint.pt>"
    if reason == OTHER_VERSION:
        advice = "or resume it with the mmlexp and PyTorch that wrote it"
    return ConfigError(
        f"trainer.resume={setting!r}: cannot load the checkpoint {path} ({detail}): {reason}; "
        f"use trainer.resume=never to start over, {advice}"
    )


def load(path: Path, setting: str) -> dict[str, Any]:
    """The training state in ``path``; one that cannot be loaded is a ``ConfigError`` naming it and saying why
    (unreadable, truncated or corrupt, not a checkpoint, another format version)."""
    problem = check_records(path)
    if problem is not None:
        raise refusal(path, setting, *problem)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise refusal(path, setting, *load_failure(path, err)) from err
    version = state.get(FORMAT_KEY, 1) if isinstance(state, dict) else None  # 1: written before the field
    if version is not None and version != FORMAT_VERSION:
        raise refusal(
            path, setting, OTHER_VERSION, f"checkpoint format {version!r}; this mmlexp reads format {FORMAT_VERSION}"
        )
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise refusal(path, setting, NOT_A_CHECKPOINT, f"a torch file of {type(state).__name__} without model or epoch")
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
        if not path.exists():  # one that exists but is no file (a directory) is refused by ``load``
            return None
    else:
        path = Path(setting).expanduser()
        if path.is_dir():
            path = path / CHECKPOINT_FILE
        if not path.exists():
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
