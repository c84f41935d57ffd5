"""Estimate how long a tracked sweep will take before starting it (the reproduce-* Makefile targets print this).

    python scripts/estimate_runtime.py +experiment=table2 seed=1,2,3
    python scripts/estimate_runtime.py --sweep "+experiment=quick_fig3 seed=1,2" --sweep "+experiment=quick_tta"

Each sweep is expanded exactly as `python -m mmlexp -m <overrides>` would expand it (the experiment file's
`hydra.sweeper.params` x the command-line sweeps), every job's config is composed (per-dataset / per-loss
batch sizes included), and its time is estimated as

    rows trained x seconds per row + evaluations x eval seconds + overhead

with rows trained = min(epochs x train rows, max_steps x batch size). The seconds per row and per evaluation come
from the cost model of `make reproduce-status` (`mmlexp.reproduce.estimate`): measured on the committed runs
(results/*/epochs) and the MLflow store's finished runs (--tracking-uri, default sqlite:///mlflow.db if it
exists), fitted over the negatives, scaled by benchmarked encoder costs, and the reference speed of the 2-core
development CPU only when nothing is measured. Early stopping is ignored (an upper bound). It is an estimate, not
a promise: other processes on the machine, a GPU or a faster kernel change it a lot.
"""

import argparse
import itertools
import math
import os
import shlex
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

EVAL_SECONDS = {"sample": 0.3}  # the embedded dataset (the cost model knows the full datasets)
OVERHEAD_SECONDS = 5.0  # per run: data from the cache, model, MLflow


def train_rows(dataset: str) -> int:
    from mmlexp.reproduce.estimate import SIZES  # the full datasets' training interactions

    if dataset == "sample":
        path = REPO / "src" / "mmlexp" / "resources" / "sample" / "train.txt"
        return sum(len(line.split()) - 1 for line in path.read_text().splitlines() if line.strip())
    return SIZES.get(dataset, SIZES["gowalla"])[0]


def expand(overrides: list[str]) -> tuple[list[str], list[list[str]]]:
    """(plain overrides, one override list per job): the sweeper's params x the command-line sweeps."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(CONF)):
        cfg = compose("config", overrides=plain, return_hydra_config=True)
    params = cfg.hydra.sweeper.get("params") or {}
    lines = [f"{k}={v}" for k, v in params.items()] + [o.input_line for o in parsed if o.is_sweep_override()]
    axes = []
    for o in parser.parse_overrides(lines):
        key = o.get_key_element()
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        axes.append([f"{key}={v}" for v in values])
    plain = [p for p in plain if not any(p.split("=")[0] == a[0].split("=")[0] for a in axes)]
    return plain, [list(job) for job in itertools.product(*axes)] if axes else [[]]


def measured_speeds(uri: str | None) -> list:
    """Speeds of the committed runs (results/*/epochs) and of the MLflow store's finished runs, if it exists,
    brought to this CPU as the status does (``estimate.on_this_cpu``)."""
    from mmlexp.devices import cpu_name
    from mmlexp.reproduce.estimate import committed_speeds, on_this_cpu, tracked_speeds

    speeds = committed_speeds(REPO / "results")
    if uri and not (uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file()):
        try:
            speeds += tracked_speeds(uri, statuses=("FINISHED",))
        except Exception as err:  # an estimate never blocks a sweep
            print(f"(could not read measured speeds from {uri}: {type(err).__name__})", file=sys.stderr)
    return on_this_cpu(speeds, cpu_name())


def job_estimate(cfg, choices: dict, speeds: list) -> dict:
    from mmlexp.reproduce.estimate import eval_seconds, job_of_config, per_interaction

    job = job_of_config(cfg, choices)
    n_rows, batch = train_rows(job.dataset), job.batch
    epochs, max_steps = int(cfg.trainer.epochs), cfg.trainer.max_steps
    steps_per_epoch = math.ceil(n_rows / batch)
    trained = epochs * n_rows if max_steps is None else min(epochs * n_rows, int(max_steps) * batch)
    n_epochs = epochs if max_steps is None else min(epochs, math.ceil(int(max_steps) / steps_per_epoch))
    n_evals = math.ceil(n_epochs / max(1, int(cfg.trainer.eval_every)))
    per_row, source = per_interaction(job, speeds)
    eval_s, _ = eval_seconds(job, speeds)
    if job.dataset == "sample":
        eval_s = EVAL_SECONDS["sample"]
    seconds = trained * per_row + n_evals * eval_s + OVERHEAD_SECONDS
    return {
        "dataset": job.dataset,
        "encoder": job.encoder,
        "loss": choices.get("loss", "?"),
        "negatives": job.negatives,
        "batch": batch,
        "epochs": n_epochs,
        "partial": trained < n_epochs * n_rows,
        "epoch_s": n_rows * per_row + eval_s,
        "seconds": seconds,
        "source": source,
    }


def estimate(sweeps: list[list[str]], uri: str | None, out=None) -> float:
    from hydra import compose, initialize_config_dir

    from mmlexp.reproduce.estimate import human

    out = out or sys.stdout

    speeds = measured_speeds(uri)
    total_runs, total = 0, 0.0
    for overrides in sweeps:
        plain, jobs = expand(overrides)
        groups = defaultdict(list)
        with initialize_config_dir(config_dir=str(CONF)):
            for job in jobs:
                cfg = compose("config", overrides=plain + job, return_hydra_config=True)
                est = job_estimate(cfg, dict(cfg.hydra.runtime.choices), speeds)
                groups_key = (est["dataset"], est["encoder"], est["loss"], est["negatives"], est["batch"])
                groups[groups_key].append(est)
        seconds = sum(e["seconds"] for g in groups.values() for e in g)
        print(f"sweep `python -m mmlexp -m {' '.join(overrides)}`: {len(jobs)} runs, ~{human(seconds)}", file=out)
        for (dataset, encoder, loss, negatives, batch), ests in sorted(groups.items()):
            e = ests[0]
            budget = f"{e['epochs']} epoch{'s' if e['epochs'] > 1 else ''}" + (" (max_steps)" if e["partial"] else "")
            print(
                f"  {len(ests):3d} x {dataset:9s} {encoder:8s} {loss:8s} N={negatives:<4d} B={batch:<5d} "
                f"{budget:22s} {e['epoch_s']:7.0f} s/full epoch ({e['source']}) -> "
                f"{human(sum(x['seconds'] for x in ests))}",
                file=out,
            )
        total_runs, total = total_runs + len(jobs), total + seconds
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"ESTIMATED total: {total_runs} runs, ~{human(total)} on this machine's CPU ({cores} cores), one run at a "
        "time; early stopping ignored. An estimate from measured or reference speeds, not a measurement.",
        file=out,
    )
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="the overrides of one sweep (as after `python -m mmlexp -m`)")
    p.add_argument("--sweep", action="append", default=[], help="the overrides of one sweep, quoted (repeatable)")
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
        help="MLflow store whose finished runs give measured speeds (default sqlite:///mlflow.db)",
    )
    args = p.parse_args(argv)
    sweeps = [shlex.split(s) for s in args.sweep] + ([args.overrides] if args.overrides else [])
    if not sweeps:
        p.error("give the overrides of a sweep, e.g. +experiment=table2 seed=1,2,3")
    try:
        estimate(sweeps, args.tracking_uri)
    except Exception as err:  # a bad override: say so, but the estimate is advisory
        print(f"estimate_runtime: could not estimate ({type(err).__name__}: {err})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
