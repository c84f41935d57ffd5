"""A fork server for the fault suite: imports mmlexp, Hydra, MLflow, Optuna and torch once (about 8 s on a busy
2-core machine), then runs each requested ``python -m mmlexp ...`` as a fresh forked process.

Protocol (JSON lines): the test writes ``{"args", "cwd", "env", "log", "ignore_sigxfsz"}``; the server forks a child
that runs ``mmlexp.__main__.main()`` with ``sys.argv = [.../__main__.py, *args]`` in ``cwd`` with exactly ``env``
(``MMLEXP_FAULT`` re-read: ``mmlexp.faults.arm``), stdout and stderr into ``log``; it answers ``{"pid"}`` at once and
``{"rc"}`` when the child ends (``-N``: killed by signal N, as ``subprocess`` says it). A child writes the modules
it imported to ``modules_out``; ``{"preload": [names]}`` imports them in the server (answer ``{"threads"}``), so the
next children start warm. The server itself never trains, opens a store or starts a thread (it checks), so forking
it is safe.
"""

import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import threading
import traceback


def preload() -> None:
    import hydra_plugins.hydra_optuna_sweeper.optuna_sweeper  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import optuna  # noqa: F401
    import torch  # noqa: F401
    from hydra.core.plugins import Plugins

    import mmlexp.__main__  # noqa: F401
    import mmlexp.run  # noqa: F401
    import mmlexp.sweep.grid  # noqa: F401
    import mmlexp.sweep.optuna_sweeper  # noqa: F401

    Plugins.instance()  # Hydra's plugin discovery, done once


def child(request: dict) -> None:
    """Run one command in this (forked) process; never returns."""
    code, before = 1, set(sys.modules)
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        if request.get("ignore_sigxfsz"):  # a file size limit then fails the write (EFBIG) instead of killing
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from mmlexp import faults
        from mmlexp.__main__ import main

        faults.arm()
        sys.argv = [sys.modules["mmlexp.__main__"].__file__, *request["args"]]
        try:
            main()
            code = 0
        except SystemExit as err:
            code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
            if not isinstance(err.code, int | None):
                print(err.code, file=sys.stderr)
        except KeyboardInterrupt:  # as python does on an uncaught Ctrl-C (SIGTERM is turned into one)
            traceback.print_exc()
            code = 130
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        if request.get("modules_out"):
            with contextlib.suppress(OSError):
                with open(request["modules_out"], "w") as f:
                    f.write("\n".join(sorted(set(sys.modules) - before)))
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        logging.shutdown()
        os._exit(code)


def serve() -> None:
    preload()
    out = sys.stdout
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if "preload" in request:
            for name in request["preload"]:
                with contextlib.suppress(BaseException):
                    importlib.import_module(name)
            out.write(json.dumps({"threads": threading.active_count()}) + "\n")
            out.flush()
            continue
        pid = os.fork()
        if pid == 0:
            child(request)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        out.write(json.dumps({"rc": rc}) + "\n")
        out.flush()


if __name__ == "__main__":
    serve()
