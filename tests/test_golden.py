"""Golden test: training numerics pinned bit for bit, so that a refactor can show it changed nothing.

Sixteen short seeded runs on the embedded ``sample`` (``tests/golden_runs.py``: CPU, one thread, 2 epochs,
dim 16), through the real entrypoint ``mmlexp.run.train``, cover every optimiser path (dense Adam, deferred
rows with its clipped and fallback steps, ``sparse_adam``), every encoder (mf, simplex, svdpp, lightgcn, ngcf),
every loss and every sampler (uniform, popularity, in_batch, shared, hard), plus bf16 scoring and
``eval.selection=valid``.  Each run's final model tables, optimiser moments and MLflow metric histories are
hashed (SHA-256) and compared with ``tests/golden/digests.json``; a failure names the configuration and which
of tables / moments / metrics moved.

Regenerate the digests only when a change moves bits on purpose (say so in the commit), and never while a
reproduction run is in flight:

    .venv/bin/python scripts/golden_digests.py            # which digests moved, per configuration
    .venv/bin/python scripts/golden_digests.py --update   # rewrite tests/golden/digests.json

The bits depend on the platform (torch / numpy / numba versions, the CPU's instruction set); on another
platform than the one recorded in digests.json the comparisons are skipped, naming the difference.
"""

from pathlib import Path

import pytest

from tests.golden_runs import BASE, CONFIGS, DIGESTS_FILE, KINDS, environment, load_expected, moved, run_config

EXPECTED = load_expected()
UPDATE = "`.venv/bin/python scripts/golden_digests.py --update`"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for every golden run of the session (creating one takes seconds)."""
    return tmp_path_factory.mktemp("golden-store")


def _platform_difference() -> str:
    here, there = environment(), EXPECTED["environment"]
    return ", ".join(f"{k}: {there.get(k)} there, {v} here" for k, v in sorted(here.items()) if v != there.get(k))


DIFFERS = _platform_difference()
# the digests hold on the platform they were made on (CPU kind, torch, numpy, numba); elsewhere they cannot compare
same_platform = pytest.mark.skipif(
    bool(DIFFERS), reason=f"{DIGESTS_FILE.name} was made on another platform ({DIFFERS}); regenerate with {UPDATE}"
)


def test_the_digests_file_matches_the_configurations():
    assert EXPECTED["base"] == BASE, f"golden_runs.BASE changed since {DIGESTS_FILE.name} was written: run {UPDATE}"
    assert list(EXPECTED["configs"]) == list(CONFIGS), f"configurations changed: run {UPDATE}"
    for name, overrides in CONFIGS.items():
        assert EXPECTED["configs"][name]["overrides"] == overrides, f"{name}: overrides changed: run {UPDATE}"


def test_every_encoder_loss_sampler_and_optimiser_path_is_pinned():
    """A new option in conf/encoder, conf/loss or conf/sampler needs a golden configuration."""
    from mmlexp.__main__ import CONFIG_DIR

    used = {override for overrides in CONFIGS.values() for override in overrides}
    for group in ("encoder", "loss", "sampler"):
        for option in sorted(p.stem for p in Path(CONFIG_DIR, group).glob("*.yaml")):
            assert f"{group}={option}" in used, f"{group}={option} is in no golden configuration (tests/golden_runs.py)"
    assert {"trainer.defer_rows=off", "trainer.defer_rows=on", "trainer.optimizer=sparse_adam"} <= used


@same_platform
@pytest.mark.parametrize("name", list(CONFIGS))
def test_training_numerics_are_unchanged(name, store, tmp_path):
    want = EXPECTED["configs"].get(name)
    assert want is not None and want["overrides"] == CONFIGS[name], f"{name}: no digests recorded: run {UPDATE}"
    got = run_config(CONFIGS[name], tmp_path, store)
    changed = moved(want, got)
    kept = [kind for kind in KINDS if kind not in changed]
    assert not changed, (
        f"{name}: {', '.join(changed)} moved"
        + (f" ({', '.join(kept)} unchanged)" if kept else "")
        + f" against {DIGESTS_FILE.name}; if the change is meant to move bits, run {UPDATE}"
    )


@same_platform
def test_another_seed_moves_every_digest(store, tmp_path):
    """The digests see a change: the first configuration with seed 2020 instead of 2019 moves all three."""
    name = next(iter(CONFIGS))
    got = run_config([*CONFIGS[name], "seed=2020"], tmp_path, store)
    assert moved(EXPECTED["configs"][name], got) == list(KINDS)
