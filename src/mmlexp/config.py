"""Validation of the composed config before anything runs, and building its ``_target_`` parts.

Each rule names its key, the bad value and what is allowed, e.g.
``trainer.lr=-1.0: must be a number > 0``.  Hyper-parameters of losses, samplers and encoders
are checked by their own constructors (the error is prefixed with the group name): ``build``
instantiates a node on the allow-list of targets (``OWN_TARGETS`` plus ``allowed_targets``).
A command line Hydra refuses before a run starts (an unknown group option or key, an override it cannot parse, a
run folder it cannot create) is explained by ``explain_overrides`` / ``argv_dir_error`` (the entrypoint's exit 2).
Every refused input is listed in ``docs/bad-inputs.md`` (``tests/test_bad_inputs.py``).
Keys of ``trainer``, ``eval`` and ``tracking`` not in their packaged options are refused (``check_keys``), and
``eval.ks`` is checked against the dataset's item count once the data is loaded (``check_ks``).
"""

import functools
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import execution_whitelist, instantiate
from omegaconf import DictConfig, OmegaConf

from mmlexp.evaluation import LONGTAIL_SPLITS, METRICS, SELECTIONS

OWN_TARGETS = ["mmlexp.*"]


class ConfigError(ValueError):
    """A config value is of the wrong type or outside its allowed range."""


def allowed_targets(cfg: DictConfig) -> list[str]:
    """The ``_target_`` allow-list of a config: mmlexp's own classes plus ``allowed_targets``."""
    return OWN_TARGETS + list(cfg.get("allowed_targets") or [])


def build(group: str, node: DictConfig, allowed: list[str], **kwargs: Any) -> Any:
    """``instantiate`` on the execution allow-list (that list alone: not what Hydra itself may instantiate,
    ``mmlexp.__main__.HYDRA_TARGETS``); constructor errors name the config key."""
    try:
        return instantiate(node, _execution_whitelist_=execution_whitelist(allowed, reset=True), **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, (ValueError, TypeError)):
            raise ConfigError(f"{group}.{err.__cause__}") from err
        raise ConfigError(
            f"{group}._target_={node.get('_target_')!r}: {err}\n"
            f"Allowed targets: {allowed} (extend with allowed_targets=['mypkg.*'])"
        ) from err
    except (ValueError, TypeError) as err:  # the constructor refused a value (Hydra re-raises it as is)
        raise ConfigError(f"{group}.{err}") from err


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def int_at_least(lo: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= lo), f"an integer >= {lo}"


def optional(rule: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
    check, text = rule
    return (lambda v: v is None or check(v)), f"null or {text}"


POSITIVE = (lambda v: _is_num(v) and v > 0), "a number > 0"
NON_NEGATIVE = (lambda v: _is_num(v) and v >= 0), "a number >= 0"
BOOL = (lambda v: isinstance(v, bool)), "true or false"
DEVICE = (
    lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v) is not None,
    "auto, cpu, cuda, cuda:N or mps",
)
KS = (
    lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(k) and k >= 1 for k in v),
    "a non-empty list of integers >= 1",
)


def one_of(*options: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, str) and v in options), f"one of {', '.join(options)}"


OPEN_UNIT = (lambda v: _is_num(v) and 0 < v < 1), "a number in (0, 1) (exclusive)"
TARGETS = (
    lambda v: isinstance(v, (list, tuple)) and all(isinstance(t, str) and t for t in v),
    "a list of module prefixes such as 'mylab.losses.*'",
)

# MLflow's tracking URI schemes (a driver may follow the scheme: postgresql+psycopg2://...); none: a folder path
TRACKING_SCHEMES = (
    "file",
    "sqlite",
    "postgresql",
    "mysql",
    "mssql",
    "http",
    "https",
    "databricks",
    "databricks-uc",
    "uc",
)


def _tracking_scheme(v: Any) -> str | None:
    match = re.match(r"([A-Za-z][\w.-]*)(\+[\w.-]+)?:", v) if isinstance(v, str) else None
    if match and len(match.group(1)) > 1:
        return match.group(1).lower()
    return "" if isinstance(v, str) and v else None  # a folder path (C:\\... on Windows)


TRACKING_URI = (
    lambda v: _tracking_scheme(v) in ("", *TRACKING_SCHEMES),
    "an MLflow tracking URI: sqlite:///FILE, postgresql://..., mysql://..., mssql://..., http(s)://HOST:PORT, "
    "databricks, file:///FOLDER or a folder path",
)

SWITCHES = ("auto", "on", "off")
SWITCH = (lambda v: isinstance(v, bool) or v in SWITCHES, "one of auto, on, off (true/false: on/off)")


def switch(key: str, value: Any) -> str:
    """An auto | on | off setting (``trainer.cuda_graph``, ``trainer.defer_rows``) as one of SWITCHES; YAML reads a
    bare on/off as true/false, taken as on/off."""
    mode = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
    if mode not in SWITCHES:
        raise ValueError(f"{key}={value!r}: must be one of {', '.join(SWITCHES)}")
    return mode


RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": int_at_least(0),
    "device": DEVICE,
    "jobs_per_gpu": int_at_least(1),
    "allowed_targets": TARGETS,
    "trainer.epochs": int_at_least(1),
    "trainer.max_steps": optional(int_at_least(1)),
    "trainer.max_minutes": optional(POSITIVE),
    "trainer.optimizer": one_of("adam", "sparse_adam"),
    "trainer.precision": one_of("fp32", "bf16"),
    "trainer.defer_rows": SWITCH,
    "trainer.cuda_graph": SWITCH,
    "trainer.batch_size": int_at_least(1),
    "trainer.lr": POSITIVE,
    "trainer.l2": NON_NEGATIVE,
    "trainer.clip_grad_norm": optional(POSITIVE),
    "trainer.eval_every": int_at_least(1),
    "trainer.patience": optional(int_at_least(1)),
    "trainer.progress": BOOL,
    "trainer.log_every": int_at_least(1),
    "trainer.num_threads": optional(int_at_least(1)),
    "trainer.checkpoint": BOOL,
    "trainer.memory_check": BOOL,
    "trainer.resume": (
        (lambda v: v is None or (isinstance(v, str) and v != "")),
        "auto, never, or the path of a checkpoint file or run directory",
    ),
    "eval.ks": KS,
    "eval.chunk_size": optional(int_at_least(1)),
    "eval.selection": one_of(*SELECTIONS),
    "eval.valid_fraction": OPEN_UNIT,
    "eval.valid_seed": int_at_least(0),
    "eval.longtail.enabled": BOOL,
    "eval.longtail.groups": int_at_least(1),
    "eval.longtail.split": one_of(*LONGTAIL_SPLITS),
    "num_negatives": int_at_least(1),
    "sampler.num_negatives": int_at_least(1),
    "tracking.enabled": BOOL,
    "tracking.uri": TRACKING_URI,
    "tracking.timeout": POSITIVE,
    "tracking.stale_after_s": POSITIVE,
}


def metric_names(ks) -> list[str]:
    return [f"{m}@{k}" for k in ks for m in METRICS]


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError on the first value that breaks a rule (an unknown key first: ``check_keys``)."""
    check_keys(cfg)
    for key, (check, allowed) in RULES.items():
        if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            continue  # optional parts (e.g. a sampler without num_negatives)
        value = OmegaConf.select(cfg, key)
        if isinstance(value, (DictConfig,)) or OmegaConf.is_list(value):
            value = OmegaConf.to_container(value)
        if not check(value):
            raise ConfigError(f"{key}={value!r}: must be {allowed}")
    monitor = cfg.trainer.monitor
    names = metric_names(cfg.eval.ks)
    if monitor not in names:
        raise ConfigError(f"trainer.monitor={monitor!r}: must be one of {names} (metrics at eval.ks)")


# config groups with a fixed schema: the keys of their packaged options (loss, encoder, sampler: constructor kwargs)
SCHEMA_GROUPS = ("trainer", "eval", "tracking")
PACKAGED_CONF = Path(__file__).parent / "conf"


@functools.cache
def group_schema(group: str) -> dict[str, Any]:
    """The keys of the packaged options of ``group`` (``conf/<group>/*.yaml``), nested mappings as dicts."""
    merged = OmegaConf.merge({}, *(OmegaConf.load(p) for p in sorted((PACKAGED_CONF / group).glob("*.yaml"))))
    schema: dict[str, Any] = OmegaConf.to_container(merged)  # type: ignore[assignment]
    schema.pop("defaults", None)
    return schema


def check_keys(cfg: DictConfig) -> None:
    """Refuse a key of ``trainer``, ``eval`` or ``tracking`` (or their sub-nodes) that their packaged options do not
    have: an added key (``+trainer.epoch=5``) would be ignored, silently."""
    todo = [(group, cfg.get(group), group_schema(group)) for group in SCHEMA_GROUPS]
    while todo:
        path, node, schema = todo.pop(0)
        if not isinstance(node, DictConfig) or not schema:
            continue
        for key in map(str, node.keys()):
            if key not in schema:
                allowed = ", ".join(sorted(schema))
                raise ConfigError(f"{path}.{key}: no such key in {path}; allowed: {allowed}")
            if isinstance(schema[key], dict):
                todo.append((f"{path}.{key}", node.get(key), schema[key]))


def check_ks(cfg: DictConfig, n_items: int, dataset: str) -> None:
    """``eval.ks`` against the loaded data (before the run is tracked): a k above its item count cannot be ranked."""
    ks = [int(k) for k in cfg.eval.ks]
    if max(ks) > n_items:
        raise ConfigError(f"eval.ks={ks}: each k must be <= the number of items of dataset {dataset} ({n_items})")


# ---------------------------------------------------------------- a command line Hydra refused

# Hydra's command-line flags that take a value (their value is not an override)
_VALUE_FLAGS = ("-c", "--cfg", "-p", "--package", "--experimental-rerun", "--info", "-i")
_OTHER_CONFIG = ("-cd", "--config-dir", "-cp", "--config-path", "-cn", "--config-name")


def command_overrides(argv: list[str]) -> list[str] | None:
    """The Hydra overrides of ``python -m mmlexp`` arguments; None when the command composes another config than
    the packaged one (``--config-dir``, ``--config-name``, ``hydra.searchpath``): then it cannot be composed here."""
    overrides: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg.split("=")[0] in _OTHER_CONFIG or "hydra.searchpath" in arg:
            return None
        elif arg in _VALUE_FLAGS:
            skip = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides


def explain_overrides(argv: list[str], config_dir: str) -> str | None:
    """Why Hydra refused the command line ``argv`` before any run started (composed again here, nothing written):
    the override, the key or option, and what is allowed. None when composing it succeeds (Hydra failed for
    another reason) or when it cannot be composed here."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException, OverrideParseException

    overrides = command_overrides(argv)
    if overrides is None:
        return None
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as err:
        lines = [line for line in err.message.strip().splitlines() if not line.startswith(("See ", "Error "))]
        reason = lines[-1] if lines else "cannot be parsed"
        return f"{err.override!r}: not an override ({reason}); write key=value, group=option or +key=value"
    single = [o.input_line for o in parsed if not o.is_sweep_override() and o.input_line]
    GlobalHydra.instance().clear()  # Hydra's failed run left it initialized
    try:
        with initialize_config_dir(config_dir=str(config_dir)):
            try:
                cfg = compose("config", overrides=single, return_hydra_config=True)
            except ConfigCompositionException as err:
                return _composition_error(err, single)
        return run_dir_error(cfg, "sweep" if {"-m", "--multirun"} & set(argv) else "run")
    except Exception:  # noqa: BLE001 (a config that cannot be composed here at all: Hydra's message stands)
        return None
    finally:
        GlobalHydra.instance().clear()


def _composition_error(err: Exception, overrides: list[str]) -> str:
    """The message for a composition error: an unknown group option, an unknown key, or Hydra's own words."""
    from hydra import compose
    from hydra.errors import MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options:
        group, _, option = str(err.missing_cfg_file).rpartition("/")
        given = next((o for o in overrides if o.lstrip("+~").startswith(f"{group}=")), f"{group}={option}")
        return f"{given}: no option {option!r} in the config group {group}; allowed: {', '.join(err.options)}"
    cause = err.__cause__
    key = getattr(cause, "full_key", None)
    if isinstance(cause, OmegaConfBaseException) and key and "not in struct" in str(cause):
        parent = str(key).rpartition(".")[0]
        rest = [o for o in overrides if o.lstrip("+~").partition("=")[0] != key]
        whole = compose("config", overrides=rest)
        node = OmegaConf.select(whole, parent) if parent else whole
        keys = ", ".join(map(str, node.keys())) if isinstance(node, DictConfig) else "(see conf/)"
        return f"{key}: no such key{f' in {parent}' if parent else ''}; allowed: {keys}"
    return " ".join(line.strip() for line in str(err).strip().splitlines()[:3])


def run_dir_error(cfg: DictConfig, mode: str = "run") -> str | None:
    """Why ``hydra.run.dir`` (``mode="sweep"``: ``hydra.sweep.dir``) of a composed config cannot be created."""
    key = f"hydra.{mode}.dir"
    try:
        return dir_error(key, str(OmegaConf.select(cfg, key)))
    except Exception:  # noqa: BLE001 (an interpolation that does not resolve here)
        return None


def argv_dir_error(argv: list[str]) -> str | None:
    """An explicit ``hydra.run.dir=`` (with ``-m``: ``hydra.sweep.dir=``) that cannot be created, refused before
    Hydra tries (its own refusal is a traceback, after a sweep has opened its stores)."""
    key = "hydra.sweep.dir" if {"-m", "--multirun"} & set(argv) else "hydra.run.dir"
    for arg in reversed(argv):
        name, sep, value = arg.lstrip("+").partition("=")
        if sep and name == key and "${" not in value:
            return dir_error(key, value.strip("'\""))
    return None


def dir_error(key: str, value: str) -> str | None:
    """Why the folder ``value`` of ``key`` cannot be created or written (a file in the way, no write permission)."""
    path = Path(value).expanduser().absolute()
    base = next(p for p in (path, *path.parents) if p.exists())
    if base == path and path.is_dir():
        return None if os.access(path, os.W_OK | os.X_OK) else f"{key}={path}: no write permission on it"
    if not base.is_dir():
        return f"{key}={path}: cannot create it, {base} is a file; choose a folder path"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"{key}={path}: cannot create it, no write permission on {base}; choose a writable folder"
    return None
