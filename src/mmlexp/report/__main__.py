"""``python -m mmlexp.report``: tracked runs -> ``reports/<name>/`` (tables beside the paper's, figures, tests)."""

import argparse
import sys
from pathlib import Path

from mmlexp.report.build import Options, build_report
from mmlexp.report.runs import ReportError, default_tracking_uri


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mmlexp.report",
        description="Read finished MLflow runs (sweep parent runs left out) and write reports/<name>/: the paper's "
        "Table 2 / Table 3 beside ours (mean, 95%% t-interval over seeds, difference), Figure 3 "
        "(accuracy vs negatives), paired t-tests, time to accuracy, long tail, run ids, report.md.",
    )
    p.add_argument(
        "--tracking-uri",
        default=default_tracking_uri(),
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    p.add_argument(
        "--experiment", nargs="+", metavar="NAME", help="MLflow experiment name(s) (default: every experiment)"
    )
    p.add_argument("--name", help="report folder name (default: the experiment names joined by '-', or 'all')")
    p.add_argument(
        "--out",
        help="parent folder of the report (default: reports; with --from-csv: the folder "
        "above runs.csv, so that the folder is rebuilt in place)",
    )
    p.add_argument(
        "--export-csv",
        action="store_true",
        help="committable results: also write runs.csv without machine paths and epochs/<cell>-seed<k>.csv "
        "(each run's per-epoch metrics), then build the report from those CSVs (no timestamp)",
    )
    p.add_argument(
        "--from-csv",
        metavar="RUNS_CSV",
        help="rebuild from a runs.csv written by --export-csv (and its epochs/), without MLflow",
    )
    p.add_argument(
        "--filter",
        default="",
        metavar="MLFLOW_FILTER",
        help="MLflow search filter AND-ed with status FINISHED, e.g. \"params.trainer.epochs = '100'\"",
    )
    p.add_argument("--dataset", nargs="+", help="keep only these datasets")
    p.add_argument("--encoder", nargs="+", help="keep only these encoders")
    p.add_argument("--loss", nargs="+", help="keep only these losses")
    p.add_argument("--selection", nargs="+", help="keep only these selection protocols (paper, valid)")
    p.add_argument(
        "--sweep", nargs="+", metavar="ID", help="keep only runs of these sweeps (sweep.id tag or parent run id)"
    )
    p.add_argument("--baseline-loss", default="ccl", help="the loss every other loss is paired against (default: ccl)")
    p.add_argument(
        "--focus-negatives",
        type=int,
        help="negatives of the runs in the time-to-accuracy and long-tail figures (default: 100 if present)",
    )
    p.add_argument("--tta-runs", nargs="+", metavar="RUN_ID", help="run ids for the time-to-accuracy figure")
    p.add_argument(
        "--keep-duplicates",
        action="store_true",
        help="keep every run of a repeated (cell, seed, epochs) (default: the latest only)",
    )
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not 0 < args.confidence < 1:
        print(f"mmlexp.report: error: --confidence {args.confidence}: must be in (0, 1)", file=sys.stderr)
        return 2
    if args.from_csv and args.export_csv:
        print("mmlexp.report: error: --from-csv and --export-csv: choose one", file=sys.stderr)
        return 2
    out, name = args.out, args.name
    if args.from_csv and out is None and name is None:  # rebuild the folder of runs.csv in place
        folder = Path(args.from_csv).resolve().parent
        out, name = str(folder.parent), folder.name
    opts = Options(
        tracking_uri=args.tracking_uri,
        experiments=args.experiment,
        name=name,
        out=out or "reports",
        filter_string=args.filter,
        datasets=args.dataset,
        encoders=args.encoder,
        losses=args.loss,
        selections=args.selection,
        sweep_ids=args.sweep,
        baseline_loss=args.baseline_loss,
        focus_negatives=args.focus_negatives,
        tta_runs=args.tta_runs,
        keep_duplicates=args.keep_duplicates,
        confidence=args.confidence,
        runs_csv=args.from_csv,
        export_csv=args.export_csv,
    )
    try:
        path = build_report(opts)
    except ReportError as err:
        print(f"mmlexp.report: error: {err}", file=sys.stderr)
        return 2
    print(f"report written to {path}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
