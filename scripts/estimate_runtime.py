"""Estimate how long a tracked sweep will take before starting it (the reproduce-* Makefile targets print this).

    python scripts/estimate_runtime.py +experiment=table2 seed=1,2,3
    python scripts/estimate_runtime.py --sweep "+experiment=quick_fig3 seed=1,2" --sweep "+experiment=quick_tta"

Each sweep is expanded exactly as `python -m mmlexp -m <overrides>` would expand it (the experiment file's
`hydra.sweeper.params` x the command-line sweeps), every job's config is composed (per-dataset / per-loss
batch sizes included), and its time is estimated as

    rows trained x seconds per row (a + b * negatives) x encoder factor + evaluations x eval seconds + overhead

with rows trained = min(epochs x train rows, max_steps x batch size). The seconds per row are MEASURED when the
MLflow store (--tracking-uri, default sqlite:///mlflow.db if it exists) holds finished runs of the same
(dataset, encoder, negatives) with `interactions_per_s`; otherwise they come from the reference numbers below
(MF + MML, Gowalla, batch 256, on the 2-core development CPU: ~60 s/epoch at 100 negatives, ~300 s/epoch at
800; evaluation ~3 s). Early stopping is ignored (an upper bound). It is an estimate, not a promise: other
processes on the machine, a GPU or a faster kernel change it a lot.
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

SEC_PER_ROW = 3.2e-5  # per training row, independent of the negatives (MF, CPU, batch 256)
SEC_PER_ROW_NEG = 4.2e-7  # per training row and negative
ENCODER_FACTOR = {"mf": 1.0, "simplex": 1.5, "svdpp": 1.5, "lightgcn": 3.0, "ngcf": 4.0}
EVAL_SECONDS = {"gowalla": 3.0, "yelp2018": 3.5, "sample": 0.3}
OVERHEAD_SECONDS = 5.0  # per run: data from the cache, model, MLflow
MIN_MEASURED_ROWS = 50_000  # runs that trained fewer rows do not count as measurements
TRAIN_ROWS = {"gowalla": 810_128, "yelp2018": 1_237_259}


def train_rows(dataset: str) -> int:
    if dataset in TRAIN_ROWS:
        return TRAIN_ROWS[dataset]
    if dataset == "sample":
        path = REPO / "src" / "mmlexp" / "resources" / "sample" / "train.txt"
        return sum(len(line.split()) - 1 for line in path.read_text().splitlines() if line.strip())
    return TRAIN_ROWS["gowalla"]


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


def measured_rates(uri: str | None) -> tuple[dict, dict]:
    """Median seconds per training row per (dataset, encoder, negatives) and eval seconds per dataset from the
    finished runs of an MLflow store (empty when there is none)."""
    if not uri:
        return {}, {}
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        return {}, {}
    try:
        from mlflow.entities import ViewType
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
        runs = (
            client.search_runs(
                ids, "attributes.status = 'FINISHED' and metrics.interactions_per_s > 0", max_results=5000
            )
            if ids
            else []
        )
    except Exception as err:  # an estimate never blocks a sweep
        print(f"(could not read measured speeds from {uri}: {type(err).__name__})", file=sys.stderr)
        return {}, {}
    rows, evals = defaultdict(list), defaultdict(list)
    for r in runs:
        p, m, t = r.data.params, r.data.metrics, r.data.tags
        if not p.get("num_negatives") or t.get("device", "cpu") != "cpu":
            continue
        if m.get("steps", 0) * float(p.get("trainer.batch_size", 0)) < MIN_MEASURED_ROWS:
            continue  # a few steps measure the warm-up, not the speed
        key = (t.get("dataset"), t.get("choice.encoder"), int(float(p["num_negatives"])))
        rows[key].append(1.0 / m["interactions_per_s"])
        if "eval_time_s" in m:
            evals[t.get("dataset")].append(m["eval_time_s"])
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return ({k: (med(v), len(v)) for k, v in rows.items()}, {k: (med(v), len(v)) for k, v in evals.items()})


def job_estimate(cfg, choices: dict, rates: dict, evals: dict) -> dict:
    dataset = str(cfg.dataset.name)
    encoder = choices.get("encoder", "mf")
    negatives = int(cfg.num_negatives) if "num_negatives" in cfg else int(cfg.sampler.get("num_negatives", 0) or 0)
    n_rows, batch = train_rows(dataset), int(cfg.trainer.batch_size)
    epochs, max_steps = int(cfg.trainer.epochs), cfg.trainer.max_steps
    steps_per_epoch = math.ceil(n_rows / batch)
    trained = epochs * n_rows if max_steps is None else min(epochs * n_rows, int(max_steps) * batch)
    n_epochs = epochs if max_steps is None else min(epochs, math.ceil(int(max_steps) / steps_per_epoch))
    n_evals = math.ceil(n_epochs / max(1, int(cfg.trainer.eval_every)))
    if (dataset, encoder, negatives) in rates:
        per_row, n = rates[(dataset, encoder, negatives)]
        source = f"measured ({n} run{'s' if n > 1 else ''})"
    else:
        per_row = (SEC_PER_ROW + SEC_PER_ROW_NEG * negatives) * ENCODER_FACTOR.get(encoder, 2.0)
        source = "estimate"
    eval_s = evals.get(dataset, (EVAL_SECONDS.get(dataset, 3.0), 0))[0]
    seconds = trained * per_row + n_evals * eval_s + OVERHEAD_SECONDS
    return {
        "dataset": dataset,
        "encoder": encoder,
        "loss": choices.get("loss", "?"),
        "negatives": negatives,
        "batch": batch,
        "epochs": n_epochs,
        "partial": trained < n_epochs * n_rows,
        "epoch_s": n_rows * per_row + eval_s,
        "seconds": seconds,
        "source": source,
    }


def human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def estimate(sweeps: list[list[str]], uri: str | None, out=None) -> float:
    from hydra import compose, initialize_config_dir

    out = out or sys.stdout

    rates, evals = measured_rates(uri)
    total_runs, total = 0, 0.0
    for overrides in sweeps:
        plain, jobs = expand(overrides)
        groups = defaultdict(list)
        with initialize_config_dir(config_dir=str(CONF)):
            for job in jobs:
                cfg = compose("config", overrides=plain + job)
                choices = dict(o.split("=", 1) for o in job if "=" in o)
                est = job_estimate(cfg, choices, rates, evals)
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
