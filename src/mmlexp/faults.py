"""Fault injection for the fault suite (``tests/faults``): a process that dies at a named point.

``MMLEXP_FAULT=<point>:<k>[:<action>]`` makes the process act at the k-th time (from 1) it reaches ``point``:
``kill`` (default: ``SIGKILL`` to itself, as ``kill -9``), ``term`` (``SIGTERM`` to itself, as ``kill``) or ``stop``
(``SIGSTOP``: the process waits there until a ``SIGCONT``, e.g. while a test lowers its file size limit).
``MMLEXP_FAULT=count:<file>`` instead counts every point reached and rewrites ``<file>`` (JSON) at each one.

The points (``hit(point)`` calls): ``step`` (each training step), ``eval`` (each evaluation, between the test
metrics and the rest), ``checkpoint`` (each ``checkpoint.pt`` / ``best.pt`` write, the data written but not yet
renamed into place), ``mlflow`` (each operation sent to the tracking store), ``ledger`` (each update of a grid point
in the ledger, or of an Optuna trial's state).

The variable is read once, at import (``arm()`` reads it again: a process forked after the import); unset, ``hit``
returns at its first test and changes nothing.
"""

import json
import os
import signal
from pathlib import Path

FAULT_ENV = "MMLEXP_FAULT"
POINTS = ("step", "eval", "checkpoint", "mlflow", "ledger")
ACTIONS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "stop": signal.SIGSTOP}

_armed: tuple[str, int, int] | None = None  # (point, k, signal)
_count_file: Path | None = None
_counts: dict[str, int] = {}


def parse(spec: str) -> tuple[str, int, int] | Path:
    """``point:k[:action]`` -> (point, k, signal); ``count:<file>`` -> the file. ``ValueError`` names what is
    allowed."""
    point, _, rest = spec.partition(":")
    if point == "count" and rest:
        return Path(rest)
    k, _, action = rest.partition(":")
    if point not in POINTS or not k.isdigit() or int(k) < 1 or (action or "kill") not in ACTIONS:
        raise ValueError(
            f"{FAULT_ENV}={spec!r}: expected <point>:<k>[:<action>] with point one of {', '.join(POINTS)}, "
            f"k an integer >= 1 and action one of {', '.join(ACTIONS)}; or count:<file>"
        )
    return point, int(k), ACTIONS[action or "kill"]


def arm(spec: str | None = None) -> None:
    """Read ``spec`` (default: ``$MMLEXP_FAULT``) and reset the counts."""
    global _armed, _count_file
    spec = os.environ.get(FAULT_ENV) if spec is None else spec
    _armed, _count_file = None, None
    _counts.clear()
    if spec:
        parsed = parse(spec)
        if isinstance(parsed, Path):
            _count_file = parsed
        else:
            _armed = parsed


def hit(point: str) -> None:
    """The process reached ``point``: count it, and act at the armed occurrence."""
    if _armed is None and _count_file is None:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _count_file is not None:
        _count_file.write_text(json.dumps(_counts))
    elif _armed is not None and _armed[0] == point and _counts[point] == _armed[1]:
        os.kill(os.getpid(), _armed[2])


arm()
