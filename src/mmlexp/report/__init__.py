"""Reproduction reports: tracked MLflow runs -> the paper's tables and figures with ours beside them.

``python -m mmlexp.report --experiment reproduce`` writes ``reports/<name>/`` (``report.md``, CSV tables,
PNG/SVG figures); ``--export-csv`` adds runs.csv and per-epoch CSVs for committing (``mmlexp.report.export``) and
``--from-csv`` rebuilds from them without MLflow; ``python -m mmlexp.report.readme`` writes the README status table.
The functions below are the building blocks (notebooks import them):

* ``fetch_runs(tracking_uri, experiments, filter_string)``: one row per finished training run; ``read_runs(path)``
  the same frame from a committed ``runs.csv``.
* ``negative_curves(df)`` / ``plot_negative_curves(df)``: the paper's Figure 3 data and figure.
* ``mean_ci``, ``aggregate``, ``paired_tests``: seeds -> mean and t-interval; paired t-tests between losses.
* ``metric_history`` / ``plot_time_to_accuracy``; ``selection_gaps`` / ``plot_learning_curves``;
  ``plot_long_tail``; ``paper_numbers``; ``build_report``.
"""

from mmlexp.report.build import Options, build_report, paper_numbers, paper_table
from mmlexp.report.export import read_runs
from mmlexp.report.figures import plot_long_tail, plot_negative_curves, plot_time_to_accuracy
from mmlexp.report.runs import CELL_KEYS, ReportError, drop_duplicates, fetch_runs, metric_history
from mmlexp.report.selection import plot_learning_curves, selection_gaps
from mmlexp.report.stats import aggregate, mean_ci, negative_curves, paired_tests

__all__ = [
    "fetch_runs",
    "read_runs",
    "negative_curves",
    "plot_negative_curves",
    "mean_ci",
    "aggregate",
    "paired_tests",
    "metric_history",
    "plot_time_to_accuracy",
    "selection_gaps",
    "plot_learning_curves",
    "plot_long_tail",
    "paper_numbers",
    "paper_table",
    "build_report",
    "Options",
    "ReportError",
    "CELL_KEYS",
    "drop_duplicates",
]
