"""Golden runs: short seeded trainings on the embedded ``sample`` whose final bits are pinned.

The one place that says which configurations are pinned (``CONFIGS``), how one is run (``run_config``: the
real entrypoint ``mmlexp.run.train`` on a Hydra-composed config) and what is hashed (``digest_*``).  Both
``tests/test_golden.py`` (asserts) and ``scripts/golden_digests.py`` (shows the diff, ``--update`` rewrites
``tests/golden/digests.json``) import it.

Three SHA-256 digests per configuration, so that a failure says what moved:

* ``tables``: the final model state (``checkpoint.pt``'s ``model``: every ``state_dict`` tensor, in name order,
  its name, dtype, shape and raw bytes);
* ``moments``: the final optimiser state (``checkpoint.pt``'s ``optimizer["state"]``: per parameter index,
  every entry -- ``step``, ``exp_avg``, ``exp_avg_sq`` -- tensors as raw bytes, other values as their repr);
* ``metrics``: every metric history of the run in the MLflow store (per-epoch loss, L2 penalty, Recall / NDCG
  / ... @K, long-tail metrics, ``best/`` metrics, steps), values as ``repr(float)``; the wall-clock ones
  (``*_time_s``, ``*_per_s``) are left out, they are not numerics.

Bits depend on the platform (torch / numpy / numba versions, the CPU's instruction set): the file keeps one
set of digests per platform (``platforms``: each ``environment()`` with its digests), so that every machine the
project runs on can pin its own bits; the test compares with this platform's set and skips, naming the
platforms recorded, where there is none.
"""

import contextlib
import hashlib
import json
import platform
import re
from pathlib import Path
from typing import Any

import torch

DIGESTS_FILE = Path(__file__).resolve().parent / "golden" / "digests.json"
KINDS = ("tables", "moments", "metrics")
WALL_CLOCK = re.compile(r"(_time_s|_per_s)$")  # epoch_time_s, eval_time_s, wall_time_s, interactions_per_s

# Every run: CPU, one thread, 2 epochs of 22 steps (batch 2048), dim 16, 20 negatives, seed 2019, checkpoints on.
BASE = [
    "dataset=sample",
    "device=cpu",
    "seed=2019",
    "trainer.num_threads=1",
    "trainer.progress=false",
    "trainer.epochs=2",
    "trainer.batch_size=2048",
    "trainer.resume=never",
    "trainer.checkpoint=true",
    "tracking.save_checkpoint=true",
    "encoder.dim=16",
    "num_negatives=20",
]
# Deferred rows pay (and are exercised) where a step reads few item rows: small batches, few negatives.
DEFER = ["trainer.defer_rows=on", "trainer.batch_size=256", "num_negatives=4"]

# name -> overrides on top of BASE.  Optimiser paths: dense Adam (TableAdam, trainer.defer_rows=off), deferred
# rows (TableAdam, trainer.defer_rows=on: MF only, the other encoders have no rows_read; with sampler=hard it
# falls back to dense every step) and trainer.optimizer=sparse_adam (LazyAdam).  Every encoder, loss and
# sampler appears at least once.
CONFIGS: dict[str, list[str]] = {
    "mf-mml-uniform-adam": ["encoder=mf", "loss=mml", "sampler=uniform", "trainer.defer_rows=off"],
    "mf-bsl-popularity-adam-valid-bf16": [
        "encoder=mf",
        "loss=bsl",
        "sampler=popularity",
        "trainer.defer_rows=off",
        "eval.selection=valid",
        "trainer.precision=bf16",
        "trainer.batch_size=8192",  # bf16 autocast is slow on the CPU: 6 steps an epoch
    ],
    "mf-ccl-uniform-defer": ["encoder=mf", "loss=ccl", "sampler=uniform", *DEFER],
    # a clip this tight leaves the deferred clip factor undecided: every step takes the dense fallback
    "mf-bpr-shared-defer-clip": ["encoder=mf", "loss=bpr", "sampler=shared", *DEFER, "trainer.clip_grad_norm=0.05"],
    "mf-softmax-in_batch-defer": ["encoder=mf", "loss=softmax", "sampler=in_batch", *DEFER],
    # sampler=hard scores the model: defer_rows=on stays dense (deferred_rows.rows_read is None)
    "mf-hinge-hard-defer": ["encoder=mf", "loss=hinge", "sampler=hard", *DEFER],
    "mf-ssm-popularity_shared-sparse_adam": [
        "encoder=mf",
        "loss=ssm",
        "sampler=popularity",
        "sampler.shared=true",
        "trainer.optimizer=sparse_adam",
    ],
    "mf-infonce-in_batch-sparse_adam": [
        "encoder=mf",
        "loss=infonce",
        "sampler=in_batch",
        "trainer.batch_size=512",  # in-batch negatives: N = B - 1
        "trainer.optimizer=sparse_adam",
    ],
    "simplex-mml-uniform-adam": ["encoder=simplex", "loss=mml", "sampler=uniform"],
    "simplex-ccl-hard-sparse_adam": ["encoder=simplex", "loss=ccl", "sampler=hard", "trainer.optimizer=sparse_adam"],
    "svdpp-bce-shared-adam": ["encoder=svdpp", "loss=bce", "sampler=shared"],
    "svdpp-bpr-uniform_exclude-sparse_adam": [
        "encoder=svdpp",
        "loss=bpr",
        "sampler=uniform",
        "sampler.exclude_positives=true",
        "trainer.optimizer=sparse_adam",
    ],
    "lightgcn-ssm-shared-adam": ["encoder=lightgcn", "loss=ssm", "sampler=shared"],
    "lightgcn-triplet-hard-sparse_adam": [
        "encoder=lightgcn",
        "loss=triplet",
        "sampler=hard",
        "trainer.optimizer=sparse_adam",
    ],
    "ngcf-mse-popularity-adam": ["encoder=ngcf", "loss=mse", "sampler=popularity"],
    "ngcf-contrastive-uniform-sparse_adam": [
        "encoder=ngcf",
        "loss=contrastive",
        "sampler=uniform",
        "trainer.optimizer=sparse_adam",
    ],
}


def environment() -> dict[str, str]:
    """What the bits depend on besides the code: library versions and the CPU's instruction set."""
    import numba
    import numpy
    from llvmlite import binding

    return {
        "machine": platform.machine(),
        "torch": torch.__version__,
        "torch_cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "llvm_host_cpu": binding.get_host_cpu_name(),
    }


def _tensor_bytes(h: "hashlib._Hash", name: str, value: Any) -> None:
    """Feed one named value: a tensor as name, dtype, shape and raw bytes; anything else as its repr."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.layout != torch.strided:
            t = t.to_dense()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    else:
        h.update(f"{name}|{type(value).__name__}|{value!r}|".encode())


def digest_tables(model_state: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name in sorted(model_state):
        _tensor_bytes(h, name, model_state[name])
    return h.hexdigest()


def digest_moments(optimizer_state: dict[str, Any]) -> str:
    h = hashlib.sha256()
    state = optimizer_state["state"]
    for index in sorted(state):
        for key in sorted(state[index]):
            _tensor_bytes(h, f"{index}.{key}", state[index][key])
    return h.hexdigest()


def digest_metrics(tracking_uri: str, run_id: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    h = hashlib.sha256()
    for key in sorted(client.get_run(run_id).data.metrics):
        if WALL_CLOCK.search(key):
            continue
        for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.value)):
            h.update(f"{key}|{m.step}|{float(m.value)!r}\n".encode())
    return h.hexdigest()


def run_config(overrides: list[str], workdir: Path, store: Path) -> dict[str, str]:
    """Train ``BASE + overrides`` through ``mmlexp.run.train`` with ``workdir`` as the working directory (the run
    directory, ``outputs/<date>/<time>``, is made there) and the MLflow store ``store/mlflow.db``; return the
    three digests of the run.  torch's thread count is restored afterwards."""
    from hydra import compose, initialize_config_dir

    from mmlexp.__main__ import CONFIG_DIR
    from mmlexp.checkpoint import CHECKPOINT_FILE
    from mmlexp.run import train

    uri = f"sqlite:///{store}/mlflow.db"
    tracking = [f"tracking.uri={uri}", f"tracking.artifact_location={store}/artifacts", "tracking.experiment=golden"]
    with initialize_config_dir(config_dir=CONFIG_DIR):  # no version_base: as the CLI's @hydra.main composes
        cfg = compose("config", overrides=[*BASE, *tracking, *overrides])
    workdir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()  # trainer.num_threads=1 holds in the first run of a process too
    try:
        with contextlib.chdir(workdir):
            train(cfg)
    finally:
        torch.set_num_threads(threads)
    (path,) = workdir.glob(f"outputs/*/*/{CHECKPOINT_FILE}")  # the run's own directory: one per workdir
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["tracking_uri"] == uri, state["tracking_uri"]
    return {
        "tables": digest_tables(state["model"]),
        "moments": digest_moments(state["optimizer"]),
        "metrics": digest_metrics(uri, state["run_id"]),
    }


def load_expected(path: Path = DIGESTS_FILE) -> dict[str, Any]:
    """``{"base", "configs": {name: {"overrides"}}, "platforms": [{"environment", "digests": {name: ...}}]}``."""
    return json.loads(path.read_text())


def pins_these_configurations(expected: dict[str, Any]) -> bool:
    """Whether a digests file was written for today's ``BASE`` and ``CONFIGS`` (else its digests are of other runs)."""
    configs = {name: c["overrides"] for name, c in expected.get("configs", {}).items()}
    return expected.get("base") == BASE and configs == CONFIGS


def platform_digests(expected: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, dict[str, str]] | None:
    """This platform's digests (name -> tables, moments, metrics) in ``expected``; None if it has none."""
    env = env or environment()
    return next((p["digests"] for p in expected.get("platforms", []) if p["environment"] == env), None)


def write_expected(digests: dict[str, dict[str, str]], keep_others: bool, path: Path = DIGESTS_FILE) -> None:
    """Record ``digests`` (name -> the three digests) as this platform's set, with each configuration's overrides.
    ``keep_others``: the other platforms' sets stay (this platform is added, or replaced); else they are dropped
    (a change that moves bits on purpose: their digests are stale, and only their own machines can remake them)."""
    env = environment()
    old = load_expected(path).get("platforms", []) if keep_others and path.exists() else []
    others = [p for p in old if p["environment"] != env]
    body = {
        "base": BASE,
        "configs": {name: {"overrides": CONFIGS[name]} for name in CONFIGS if name in digests},
        "platforms": [
            *others,
            {"environment": env, "digests": {name: digests[name] for name in CONFIGS if name in digests}},
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2) + "\n")


def moved(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """The kinds (tables, moments, metrics) whose digest differs."""
    return [kind for kind in KINDS if expected.get(kind) != actual.get(kind)]
