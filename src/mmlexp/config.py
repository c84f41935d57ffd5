"""Validation of the composed config before anything runs, and building its ``_target_`` parts.

Each rule names its key, the bad value and what is allowed, e.g.
``trainer.lr=-1.0: must be a number > 0``.  Hyper-parameters of losses, samplers and encoders
are checked by their own constructors (the error is prefixed with the group name): ``build``
instantiates a node on the allow-list of targets (``OWN_TARGETS`` plus ``allowed_targets``).
"""

import math
import re
from collections.abc import Callable
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mmlexp.evaluation import LONGTAIL_SPLITS, METRICS, SELECTIONS

OWN_TARGETS = ["mmlexp.*"]


class ConfigError(ValueError):
    """A config value is of the wrong type or outside its allowed range."""


def allowed_targets(cfg: DictConfig) -> list[str]:
    """The ``_target_`` allow-list of a config: mmlexp's own classes plus ``allowed_targets``."""
    return OWN_TARGETS + list(cfg.get("allowed_targets") or [])


def build(group: str, node: DictConfig, allowed: list[str], **kwargs: Any) -> Any:
    """``instantiate`` on the execution allow-list; constructor errors name the config key."""
    try:
        return instantiate(node, _execution_whitelist_=allowed, **kwargs)
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
    "tracking.timeout": POSITIVE,
    "tracking.stale_after_s": POSITIVE,
}


def metric_names(ks) -> list[str]:
    return [f"{m}@{k}" for k in ks for m in METRICS]


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError on the first value that breaks a rule."""
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
