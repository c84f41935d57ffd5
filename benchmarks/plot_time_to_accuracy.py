"""``benchmarks/results/time_to_accuracy_gowalla_cpu.png`` from the committed CSV next to it.

The CSV holds the per-epoch Recall@20 of each time-to-accuracy run (MF on Gowalla, paper settings,
100 negatives, 2-core CPU: MML runs, and the MML and BSL runs of the Gowalla reproduction, copied from
``results/gowalla/epochs/``), with ``seconds`` since the start of training, evaluation included. Add a run with

    python -m mmlexp dataset=gowalla loss=mml num_negatives=100 trainer.max_minutes=25 trainer.num_threads=2 \\
        tracking.experiment=time-to-accuracy
    python -c "from mmlexp.report import metric_history; metric_history(URI, [RUN_ID]).to_csv(...)"  # append rows

then ``python benchmarks/plot_time_to_accuracy.py`` (prints when each run first reached Recall@20 >= 0.18).
"""

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

RESULTS = Path(__file__).resolve().parent / "results"
LABELS = {  # run id -> what code it measured
    "8725cafd14e243ff87fd5775c16e98d0": "MML N=100, code of two sessions before",
    "41d17eeac2f84b07914d79d7a94d442f": "MML N=100, code of the session before",
    "337e0d03f74d41308d7bd9f561c75c76": "MML N=100, 2026-12-01 (host noisy: 15-28 s/epoch)",
    "e403cc37e53d489ea76ff5a5f8297ebb": "MML N=100, reproduction run (paused at times for benchmarks)",
    "c9171d6e23674162ba2360626516ac5c": "BSL N=100, reproduction run (BSL's paper settings)",
}
TARGET, MINUTES = 0.18, 20


def main():
    history = pd.read_csv(RESULTS / "time_to_accuracy_gowalla_cpu.csv")
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    for run_id, run in history.groupby("run_id", sort=False):
        run = run.sort_values("epoch")
        ax.plot(run["seconds"] / 60, run["recall@20"], label=LABELS.get(run_id, run_id[:8]), linewidth=1.3)
        hit = run[run["recall@20"] >= TARGET]
        first = f"epoch {int(hit.iloc[0].epoch)} at {hit.iloc[0].seconds / 60:.1f} min" if len(hit) else "never"
        print(
            f"{run_id[:8]}: {len(run)} epochs in {run['seconds'].max() / 60:.1f} min, best Recall@20 "
            f"{run['recall@20'].max():.4f}, first >= {TARGET}: {first}"
        )
    ax.axhline(TARGET, color="grey", linestyle=":", linewidth=1)
    ax.axvline(MINUTES, color="grey", linestyle="--", linewidth=1, label=f"{MINUTES}-minute target")
    ax.set_xlabel("wall-clock minutes since training start (evaluation included)")
    ax.set_ylabel("Recall@20")
    ax.set_title("Gowalla, MF at 100 negatives, paper settings, 2-core CPU")
    ax.set_ylim(0.08, 0.19)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(RESULTS / "time_to_accuracy_gowalla_cpu.png", dpi=120)


if __name__ == "__main__":
    main()
