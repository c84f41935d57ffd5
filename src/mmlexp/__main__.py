"""``python -m mmlexp loss=mml dataset=gowalla``: the one training entrypoint (a thin Hydra main)."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_DIR = os.environ.get("MMLEXP_CONFIG_DIR", str(Path(__file__).resolve().parents[2] / "conf"))


@hydra.main(config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    from mmlexp.run import ConfigError, DataError, train

    try:
        return train(cfg)
    except (ConfigError, DataError) as err:
        print(f"mmlexp: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    if any("pruner=" in arg for arg in sys.argv[1:]):  # Hydra's own "Could not find" would exit 1
        from mmlexp.sweep.pruning import check_pruner_argv

        if error := check_pruner_argv(sys.argv[1:], CONFIG_DIR):
            print(f"mmlexp: error: {error}", file=sys.stderr)
            sys.exit(2)
    main()
