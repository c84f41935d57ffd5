"""Where one epoch of LightGCN + SSM (``+experiment=ssm_paper``) and of SimpleX (Gowalla) goes, and what it costs.

Composes the real config (``conf/``) of each case, builds the parts as a run does (``mmlexp.run.build_parts``:
encoder, loss, sampler and optimizer, seeded), then times ``--steps`` training steps (``mmlexp.train.train_step``)
of every case in turn, ``--rounds`` times (interleaved in one process, so that a change of the machine's load hits
every case alike), and one full-ranking evaluation per case.  On a shared machine the absolute times mean little:
each case is reported as a ratio to the first (the reference), and an epoch's estimated cost is that ratio times
the reference's committed epoch time (``--reference-epoch-s``: MF + CCL at 100 negatives, 18.5 s).
``--profile``: a torch profiler table (time per operator, forward and backward) per case.

    MMLEXP_DATA_DIR=../shared/data python benchmarks/profile_ssm_simplex.py \
        --case mf_ccl lightgcn_ssm lightgcn_ssm_before mf_ssm simplex_ccl --rounds 3 --steps 4 --profile

Cases (all Gowalla): mf_ccl (MF + CCL, 100 negatives, the reference); lightgcn_ssm / mf_ssm (+experiment=ssm_paper,
the second with encoder=mf); lightgcn_ssm_matmul (without propagate_rows), lightgcn_ssm_before / mf_ssm_before
(without the speed options: the whole-graph propagation and the gathered [B, B] scores, the path before them);
simplex_ccl / simplex_mml (SimpleX_gowalla_m1, 100 negatives: the MML paper's Table 2 setting).
Positional arguments: Hydra overrides for every case.
"""

import argparse
import os
import statistics
import sys
import time

import torch

# MF + CCL at 100 negatives on Gowalla, the committed run (results/gowalla/epochs/gowalla-mf-ccl-N100-paper-seed1.csv):
# median seconds of an epoch's training and of an evaluation, on this machine with the queue alone.
REFERENCE_EPOCH_S, REFERENCE_EVAL_S = 18.5, 1.9
CASES = {
    "lightgcn_ssm": ["+experiment=ssm_paper"],
    "lightgcn_ssm_matmul": ["+experiment=ssm_paper", "encoder.propagate_rows=false"],
    "lightgcn_ssm_before": ["+experiment=ssm_paper", "encoder.propagate_rows=false", "encoder.in_batch_scores=false"],
    "mf_ssm": ["+experiment=ssm_paper", "encoder=mf"],
    "mf_ssm_before": ["+experiment=ssm_paper", "encoder=mf", "encoder.in_batch_scores=false"],
    "simplex_ccl": ["encoder=simplex", "loss=ccl", "num_negatives=100"],
    "simplex_mml": ["encoder=simplex", "loss=mml", "num_negatives=100"],
    "mf_ccl": ["encoder=mf", "loss=ccl", "num_negatives=100"],
}


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from mmlexp.__main__ import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


class Setup:
    """What a run builds (``mmlexp.run.build_parts``, without the tracking): model, loss, sampler, optimizer."""

    def __init__(self, cfg):
        from mmlexp.config import allowed_targets, build
        from mmlexp.data import load_dataset
        from mmlexp.optim import choose_deferred_rows, make_optimizer
        from mmlexp.train import TrainSettings

        torch.manual_seed(cfg.seed)
        self.data = data = load_dataset(cfg.dataset.name)
        allowed, train = allowed_targets(cfg), data.train
        self.model = build("encoder", cfg.encoder, allowed, n_users=data.n_users, n_items=data.n_items, train=train)
        self.loss_fn = build("loss", cfg.loss, allowed)
        generator = torch.Generator().manual_seed(cfg.seed)
        self.sampler = build("sampler", cfg.sampler, allowed, n_items=data.n_items, train=train, generator=generator)
        defer, _ = choose_deferred_rows(cfg.trainer.defer_rows, self.sampler, cfg.trainer.batch_size, data.n_items,
                                        torch.device("cpu"))  # fmt: skip
        self.optimizer = make_optimizer(self.model, cfg.trainer.lr, cfg.trainer.optimizer, cfg.trainer.l2, defer)
        self.settings = TrainSettings(**{k: cfg.trainer[k] for k in TrainSettings.__dataclass_fields__})
        self.users, self.items = (torch.from_numpy(a) for a in data.train_pairs())

    def evaluate(self) -> dict[str, float]:
        from mmlexp.evaluation import evaluate_embeddings

        user_emb, item_emb = self.model.all_embeddings()
        return evaluate_embeddings(user_emb, item_emb, self.data.train, self.data.test, ks=[20, 50])


def time_steps(setup: Setup, steps: int, profile: bool):
    """Seconds per step over ``steps`` steps (and the profiler's table when ``profile``)."""
    from mmlexp.train import train_step

    settings = setup.settings
    order = torch.randperm(setup.users.shape[0], generator=torch.Generator().manual_seed(0))
    batches = order[: steps * settings.batch_size].split(settings.batch_size)
    setup.model.train()
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if profile else None
    if prof is not None:
        prof.__enter__()
    start, cpu = time.perf_counter(), time.process_time()
    for rows in batches:
        args = (setup.model, setup.loss_fn, setup.sampler, setup.optimizer, setup.users[rows], setup.items[rows])
        train_step(*args, settings)
    seconds, cpu = (time.perf_counter() - start) / len(batches), (time.process_time() - cpu) / len(batches)
    if prof is not None:
        prof.__exit__(None, None, None)
    return seconds, prof, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", nargs="+", choices=sorted(CASES), required=True, help="the first is the reference")
    parser.add_argument("--steps", type=int, default=5, help="steps per case and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each times every case in turn")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference-epoch-s", type=float, default=REFERENCE_EPOCH_S)
    parser.add_argument("--reference-eval-s", type=float, default=REFERENCE_EVAL_S)
    parser.add_argument("--profile", action="store_true", help="a torch profiler table per case")
    parser.add_argument("--no-eval", action="store_true")
    parser.add_argument("--rows", type=int, default=20, help="profiler table rows")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every case")
    args = parser.parse_args()
    from mmlexp.allocator import keep_freed_memory

    keep_freed_memory()  # as train.fit does: large per-step temporaries reused, not page-faulted in again
    torch.set_num_threads(args.threads)
    setups = {case: Setup(compose(["dataset=gowalla", *CASES[case], *args.overrides])) for case in args.case}
    torch.set_num_threads(args.threads)  # numba's pool start may reset it
    print(f"torch {torch.__version__}, {args.threads} thread(s), load {os.getloadavg()[0]:.1f} at the start")
    for setup in setups.values():
        time_steps(setup, args.warmup, profile=False)
    times: dict[str, list[float]] = {case: [] for case in setups}
    cpu: dict[str, list[float]] = {case: [] for case in setups}
    for _ in range(args.rounds):  # interleaved: a change of load hits every case alike
        for case, setup in setups.items():
            wall, _, used = time_steps(setup, args.steps, profile=False)
            times[case].append(wall)
            cpu[case].append(used)
    report(setups, times, args)
    # CPU seconds the process used per step: the work, whatever share of the cores it got (with one thread, close
    # to the wall time of a step on an otherwise idle core)
    print("CPU s/step (process time): " + ", ".join(f"{c} {statistics.median(v):.3f}" for c, v in cpu.items()))
    print(
        "CPU s/epoch (process time x steps): "
        + ", ".join(f"{c} {statistics.median(v) * steps_per_epoch(setups[c]):.0f}" for c, v in cpu.items())
    )


def report(setups: dict, times: dict[str, list[float]], args) -> None:
    ref = args.case[0]
    ref_step = statistics.median(times[ref])
    evals = {case: evaluation_seconds(setup) for case, setup in setups.items()} if not args.no_eval else {}
    print(f"load {os.getloadavg()[0]:.1f} at the end; reference {ref}: {args.reference_epoch_s} s/epoch train, "
          f"{args.reference_eval_s} s eval (committed results)")  # fmt: skip
    print("| case | B | steps/epoch | ms/step here | x reference/step | epoch here (s) | est. epoch (s) | eval x ref |")
    print("|---|---|---|---|---|---|---|---|")
    ref_epoch_here = ref_step * steps_per_epoch(setups[ref])
    for case, setup in setups.items():
        step = statistics.median(times[case])
        epoch_here = step * steps_per_epoch(setup)
        est = args.reference_epoch_s * epoch_here / ref_epoch_here
        ev = f"{evals[case] / evals[ref]:.2f}" if evals else "-"
        print(f"| {case} | {setup.settings.batch_size} | {steps_per_epoch(setup)} | {step * 1e3:.0f} | "
              f"{step / ref_step:.2f} | {epoch_here:.0f} | {est:.0f} | {ev} |")  # fmt: skip
    if evals:
        print("eval seconds here (second call): " + ", ".join(f"{c} {s:.1f}" for c, s in evals.items()))
    if args.profile:
        for case, setup in setups.items():
            _, prof, _ = time_steps(setup, max(2, args.steps), profile=True)
            print(f"\n{case}: where a step's time goes (torch profiler, self CPU time)")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


def steps_per_epoch(setup: Setup) -> int:
    return -(-setup.users.shape[0] // setup.settings.batch_size)


def evaluation_seconds(setup: Setup) -> float:
    """Seconds of the second full-ranking evaluation (the first compiles the ranking kernels); prints its CPU time."""
    setup.model.eval()
    setup.evaluate()
    start, cpu = time.perf_counter(), time.process_time()
    setup.evaluate()
    print(f"eval CPU s (process time): {time.process_time() - cpu:.1f}")
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
