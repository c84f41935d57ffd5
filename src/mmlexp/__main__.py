"""``mmlexp loss=mml dataset=gowalla`` (or ``python -m mmlexp ...``): the one training entrypoint (a thin Hydra main).

The configs ship inside the package (``mmlexp/conf``, in a checkout a link to the top-level ``conf/``);
``MMLEXP_CONFIG_DIR`` replaces them, ``--config-dir DIR`` / ``hydra.searchpath=[...]`` add your own.
"""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

PACKAGED_CONFIG_DIR = str((Path(__file__).parent / "conf").resolve())
CONFIG_DIR = os.environ.get("MMLEXP_CONFIG_DIR", PACKAGED_CONFIG_DIR)
_started: list[bool] = []  # set once Hydra calls the task: a refusal before it is the command line's


# What Hydra itself may instantiate from the config: mmlexp's sweepers and callbacks, Hydra's launcher plugins
# (submitit for SLURM), the handlers of Hydra's logging config. Targets a run instantiates (losses, samplers,
# encoders, pruners, samplers of a search) are checked against their own lists on top of this one (mmlexp.config).
HYDRA_TARGETS = ("mmlexp.*", "hydra_plugins.*", "logging.StreamHandler", "logging.FileHandler")


@hydra.main(config_path=CONFIG_DIR, config_name="config", execution_whitelist=HYDRA_TARGETS)
def _main(cfg: DictConfig) -> float:
    from mmlexp.checkpoint import CheckpointWriteError
    from mmlexp.hooks import in_multirun
    from mmlexp.run import ConfigError, DataError, Diverged, train

    _started.append(True)
    try:
        return train(cfg)
    except (ConfigError, DataError, Diverged) as err:
        if in_multirun():  # the sweeper records the failed job and carries on with the others
            raise
        if isinstance(err, Diverged):
            print(
                f"mmlexp: error: the run FAILED: {err}; try a lower trainer.lr or trainer.clip_grad_norm",
                file=sys.stderr,
            )
            sys.exit(1)
        print(f"mmlexp: error: {err}", file=sys.stderr)
        sys.exit(2)
    except CheckpointWriteError as err:  # the disk, not the input: exit 1, the previous checkpoint resumable
        if in_multirun():
            raise
        print(f"mmlexp: error: the run stopped: {err}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    """``mmlexp`` and ``python -m mmlexp``: a pruner that Hydra would refuse with exit 1 ("Could not find", "No
    match in the defaults list") is refused here with exit 2 and what is allowed; then Hydra runs ``_main``. A command
    line Hydra refuses before the run starts (an unknown option, key or run directory) exits 2 too, with what is
    allowed (``mmlexp.config.explain_overrides``)."""
    _started.clear()
    if any(arg.lstrip("+").startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for arg in sys.argv[1:]):
        from mmlexp.config import argv_dir_error

        if error := argv_dir_error(sys.argv[1:]):
            print(f"mmlexp: error: {error}", file=sys.stderr)
            sys.exit(2)
    if any("pruner=" in arg for arg in sys.argv[1:]):
        from mmlexp.sweep.pruning import check_pruner_argv

        if error := check_pruner_argv(sys.argv[1:], CONFIG_DIR):
            print(f"mmlexp: error: {error}", file=sys.stderr)
            sys.exit(2)
    try:
        _main()
    except SystemExit as stop:
        if stop.code == 1 and not _started:
            from mmlexp.config import explain_overrides

            if why := explain_overrides(sys.argv[1:], CONFIG_DIR):
                print(f"mmlexp: error: {why}", file=sys.stderr)
                sys.exit(2)
        raise


if __name__ == "__main__":
    main()
