"""Sync, check and execute the paired notebooks of this folder (``<name>.py`` is the source, ``<name>.ipynb`` its pair).

    python notebooks/execute.py                 # execute every notebook -> reports/notebooks/<name>.ipynb
                                                # (cwd: the repo root)
    python notebooks/execute.py negative_curves --out /tmp/nb   # one notebook, another folder
    python notebooks/execute.py --sync          # rewrite each .ipynb from its .py (inputs only, no outputs)
    python notebooks/execute.py --check         # exit 1 when a .ipynb differs from its .py or holds outputs

The committed ``.ipynb`` files carry no outputs (small diffs); executed copies go to ``reports/notebooks/``
(git-ignored). Notebooks run with the ``python3`` kernel, which jupyter_client starts with this interpreter
(``sys.executable``), so the venv that runs this script is the one the notebooks see. Parameters
(``negative_curves``) come from environment variables, e.g. ``MMLEXP_TRACKING_URI=sqlite:///other.db``.
Plain jupytext works too: ``jupytext --sync notebooks/*.ipynb`` after editing either side (then strip outputs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from jupytext.combine import combine_inputs_with_outputs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NOTEBOOKS = ("loss_landscape", "negative_curves")
PAIR_FORMAT = "py:percent"


def read_source(name: str, folder: Path = HERE) -> nbformat.NotebookNode:
    """The notebook as written in ``<folder>/<name>.py`` (the source of truth)."""
    return jupytext.read(Path(folder) / f"{name}.py", fmt=PAIR_FORMAT)


def stripped(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``nb`` without outputs, execution counts and execution metadata."""
    nb = nbformat.from_dict(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    return nb


def cells(nb: nbformat.NotebookNode) -> list[tuple[str, str, tuple]]:
    """(cell type, source, tags) of every cell: what must agree between the pair."""
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def problems(name: str, folder: Path = HERE) -> list[str]:
    """Why ``<name>.ipynb`` is not the synced, stripped pair of ``<name>.py`` (empty when it is)."""
    ipynb = Path(folder) / f"{name}.ipynb"
    if not ipynb.exists():
        return [f"{ipynb.name} is missing: run python notebooks/execute.py --sync"]
    saved = nbformat.read(ipynb, as_version=4)
    found = []
    if cells(saved) != cells(read_source(name, folder)):
        found.append(f"{ipynb.name} and {name}.py differ: edit the .py, then python notebooks/execute.py --sync")
    if any(c.cell_type == "code" and (c.outputs or c.execution_count) for c in saved.cells):
        found.append(f"{ipynb.name} holds outputs: python notebooks/execute.py --sync strips them")
    if saved.metadata.get("jupytext", {}).get("formats") != f"ipynb,{PAIR_FORMAT}":
        found.append(f"{ipynb.name}: metadata jupytext.formats must be 'ipynb,{PAIR_FORMAT}' (the pairing)")
    return found


def sync(name: str, folder: Path = HERE) -> Path:
    """Rewrite ``<name>.ipynb`` from ``<name>.py`` without outputs (cell ids of the old .ipynb are kept)."""
    ipynb = Path(folder) / f"{name}.ipynb"
    nb = read_source(name, folder)
    if ipynb.exists():
        nb = combine_inputs_with_outputs(nb, nbformat.read(ipynb, as_version=4), fmt=PAIR_FORMAT)
    jupytext.write(stripped(nb), ipynb, fmt="ipynb")
    return ipynb


def this_python_kernel_manager():
    """A kernel manager class whose ``python3`` kernel is ipykernel's own spec for ``sys.executable``: never a
    ``python3`` kernelspec from the user's or the system's Jupyter folders (they may point at another Python)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class ThisPythonKernelManager(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _kernel_spec_manager_default(self):
            return KernelSpecManager(
                kernel_dirs=[]
            )  # -> ipykernel's built-in spec: [sys.executable, -m, ipykernel_launcher]

    return ThisPythonKernelManager


def execute(nb: nbformat.NotebookNode, cwd: Path | str, timeout: int = 600) -> nbformat.NotebookNode:
    """Run every cell of ``nb`` in a fresh ``python3`` kernel of this interpreter, working directory ``cwd``;
    the kernel inherits this process's environment variables. Returns the executed copy.

    Raises ``nbclient.exceptions.CellExecutionError`` (with the cell and traceback) when a cell fails."""
    from nbclient import NotebookClient

    nb = nbformat.from_dict(nb)
    NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        kernel_manager_class=this_python_kernel_manager(),
        resources={"metadata": {"path": str(cwd)}},
    ).execute()
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=list(NOTEBOOKS), help=f"notebooks (default: {' '.join(NOTEBOOKS)})")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--sync", action="store_true", help="rewrite each .ipynb from its .py, without outputs")
    action.add_argument("--check", action="store_true", help="exit 1 when a pair is out of sync or holds outputs")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "notebooks", help="where executed copies go")
    parser.add_argument("--cwd", type=Path, default=REPO, help="working directory of the kernel (default: repo root)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    names = [Path(n).stem for n in args.names]
    if args.sync:
        for name in names:
            print(f"synced {sync(name).relative_to(REPO)}")
        return 0
    if args.check:
        found = [p for name in names for p in problems(name)]
        print("\n".join(found) or f"in sync: {', '.join(names)}")
        return 1 if found else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        start = time.perf_counter()
        nb = execute(read_source(name), cwd=args.cwd, timeout=args.timeout)
        path = args.out / f"{name}.ipynb"
        nbformat.write(nb, path)
        print(f"executed {name} in {time.perf_counter() - start:.0f} s -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
