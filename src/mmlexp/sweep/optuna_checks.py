"""The input checks of ``OptunaSweeper`` (``mmlexp.sweep.optuna_sweeper``), all run before the study or the MLflow
store is touched: the budget and parallelism, the pruner and what it needs, and the search space
(``hydra.sweeper.params``, command-line sweeps, ``hydra.sweeper.space``) against the config's keys.  Light imports
only: this package is a Hydra plugin.
"""

import difflib
from typing import Any, Protocol

from omegaconf import OmegaConf

from mmlexp.sweep.errors import SweepError


class SweeperSettings(Protocol):
    """What the checks read of ``OptunaSweeper`` (and set: ``pruner``), so this module does not import it."""

    impl: Any
    pruner: Any
    pruner_config: Any
    space: Any
    custom_search_space: Any
    config: Any


_ABSENT = object()


def checked_search(sweeper: SweeperSettings, arguments: list[str]):
    """The sweep's (distributions, fixed, fixed_overrides), every input checked (``SweepError`` otherwise);
    sets ``sweeper.pruner``."""
    impl = sweeper.impl
    check_budget(impl)
    sweeper.pruner = checked_pruner(sweeper.pruner_config, impl)
    distributions, fixed, fixed_overrides = parsed_params(impl, arguments)
    derived = derived_keys(sweeper, distributions, fixed)
    check_keys(
        sweeper.config,
        list(distributions),
        "unknown search space key {name!r} (hydra.sweeper.params or a command-line sweep): it is not in the config",
    )
    check_keys(sweeper.config, derived, "hydra.sweeper.space writes {name!r}, which is not in the config")
    if not distributions and not derived and not impl.custom_search_space_extender:
        raise SweepError("hydra.sweeper.params is empty: nothing to search")
    return distributions, fixed, fixed_overrides


def check_budget(impl: Any) -> None:
    """``n_trials`` (complete trials the study must have) and ``n_jobs`` (trials launched together)."""
    n = impl.n_trials
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise SweepError(
            f"hydra.sweeper.n_trials={n!r}: must be an integer >= 1 (the number of complete trials the study must have)"
        )
    if not isinstance(impl.n_jobs, int) or impl.n_jobs == 0:
        raise SweepError(
            f"hydra.sweeper.n_jobs={impl.n_jobs!r}: must be an integer >= 1 "
            "(trials launched together), or -1 for one per core"
        )


def parsed_params(impl: Any, arguments: list[str]) -> tuple[dict, dict, list]:
    """(distributions, fixed, fixed_overrides) of ``hydra.sweeper.params`` and the command-line sweeps; a key
    given a fixed value is no longer searched."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    impl._process_searchspace_config()
    try:
        distributions, fixed, fixed_overrides = create_params_from_overrides(
            impl._parse_sweeper_params_config() + list(arguments)
        )
    except Exception as err:  # a malformed sweep expression
        raise SweepError(f"hydra.sweeper.params: {err}") from err
    for name in fixed:
        distributions.pop(name, None)
    return distributions, fixed, fixed_overrides


def derived_keys(sweeper: SweeperSettings, distributions: dict, fixed: dict) -> list[str]:
    """The config keys ``hydra.sweeper.space`` writes (margins, weights), none of them also searched or fixed."""
    from mmlexp.search_space import MarginSpace

    hook = "mmlexp.search_space.custom_search_space"
    if sweeper.space is None and sweeper.custom_search_space != hook:
        return []
    if sweeper.custom_search_space != hook:
        raise SweepError(
            "hydra.sweeper.space is set but hydra.sweeper.custom_search_space is "
            f"{sweeper.custom_search_space!r}: set it to {hook}"
        )
    try:
        derived = MarginSpace.from_config(sweeper.space).keys()
    except (TypeError, ValueError) as err:
        raise SweepError(str(err)) from err
    for name in derived:
        if name in distributions or name in fixed:
            raise SweepError(f"hydra.sweeper.params.{name}: also set by hydra.sweeper.space; remove one")
    return derived


def checked_pruner(pruner_config: Any, impl: Any):
    """The configured pruner (``hydra/sweeper/pruner``), None for ``none``. Jobs report to their trial through
    the storage, so a pruner needs an RDB storage, a study name and one objective."""
    from mmlexp.sweep.pruning import build_pruner

    try:
        pruner = build_pruner(pruner_config)
    except Exception as err:
        cause = err.__cause__ or err
        raise SweepError(f"hydra.sweeper.pruner: {type(cause).__name__}: {cause}") from err
    if pruner is None:
        return None
    name = type(pruner).__name__
    if not impl.storage:
        raise SweepError(
            f"hydra.sweeper.pruner ({name}) needs hydra.sweeper.storage: each job reports "
            "its epochs to its trial through the storage"
        )
    if not impl.study_name:
        raise SweepError(f"hydra.sweeper.pruner ({name}) needs hydra.sweeper.study_name (jobs find the study by name)")
    if len(impl._get_directions()) > 1:
        raise SweepError(f"hydra.sweeper.pruner ({name}): Optuna cannot prune multi-objective studies")
    return pruner


def check_keys(config: Any, names: list[str], message: str) -> None:
    """Each name is a key of the job's config (or a group choice, an addition ``+``, a deletion ``~``); else a
    ``SweepError`` with ``message`` and the closest keys."""
    choices = set(config.hydra.runtime.choices.keys())
    job = OmegaConf.masked_copy(config, [k for k in config.keys() if k != "hydra"])
    known = _leaf_keys(OmegaConf.to_container(job, resolve=False))
    for name in names:
        if name[:1] in "+~" or "/" in name or name in choices:
            continue
        if OmegaConf.select(config, name, default=_ABSENT) is _ABSENT:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            loss = config.hydra.runtime.choices.get("loss")
            raise SweepError(message.format(name=name) + f" (loss={loss}){hint}")


def _leaf_keys(tree: Any, prefix: str = "") -> list[str]:
    if not isinstance(tree, dict):
        return [prefix[:-1]] if prefix else []
    out = [prefix[:-1]] if prefix else []
    for key, value in tree.items():
        out += _leaf_keys(value, f"{prefix}{key}.")
    return out
