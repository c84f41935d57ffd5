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

    .venv/bin/python scripts/golden_digests.py                  # which digests moved, per configuration
    .venv/bin/python scripts/golden_digests.py --update         # this platform's digests; the others dropped
    .venv/bin/python scripts/golden_digests.py --add-platform   # pin a new machine beside the others

The bits depend on the platform (torch / numpy / numba versions, the CPU's instruction set): digests.json keeps
one set per platform, and on a platform it has no set for the comparisons are skipped, naming those it has.
"""

import json
from pathlib import Path

import pytest

from tests.golden_runs import (
    BASE,
    CONFIGS,
    DIGESTS_FILE,
    KINDS,
    environment,
    load_expected,
    moved,
    pins_these_configurations,
    platform_digests,
    run_config,
    write_expected,
)

EXPECTED = load_expected()
HERE = platform_digests(EXPECTED)
UPDATE = "`.venv/bin/python scripts/golden_digests.py --update`"
ADD = "`.venv/bin/python scripts/golden_digests.py --add-platform` (from the code of the runs in flight)"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for every golden run of the session (creating one takes seconds)."""
    return tmp_path_factory.mktemp("golden-store")


def _platforms() -> str:
    return "; ".join(
        ", ".join(f"{k} {p['environment'].get(k)}" for k in ("llvm_host_cpu", "torch_cpu_capability", "torch"))
        for p in EXPECTED["platforms"]
    )


# the digests hold on the platform they were made on (CPU kind, torch, numpy, numba); elsewhere they cannot compare
same_platform = pytest.mark.skipif(
    HERE is None,
    reason=f"{DIGESTS_FILE.name} has no digests for this platform ({environment()}; it has: {_platforms()}); "
    f"pin it with {ADD}",
)


def test_the_digests_file_matches_the_configurations():
    assert pins_these_configurations(EXPECTED), f"golden_runs.BASE or CONFIGS changed: run {UPDATE}"
    assert list(EXPECTED["configs"]) == list(CONFIGS), f"configurations reordered: run {UPDATE}"
    for platform in EXPECTED["platforms"]:
        assert set(platform["environment"]) == set(environment()), f"{platform['environment']}: run {UPDATE}"
        assert list(platform["digests"]) == list(CONFIGS), f"{platform['environment']}: run {UPDATE}"
        assert all(set(d) == set(KINDS) for d in platform["digests"].values())


def test_a_file_written_for_other_configurations_is_told_apart():
    """``scripts/golden_digests.py --add-platform`` refuses such a file: its platforms' digests are of other runs."""
    first = next(iter(CONFIGS))
    other_override = {**EXPECTED, "configs": {**EXPECTED["configs"], first: {"overrides": [*CONFIGS[first], "seed=7"]}}}
    one_fewer = {**EXPECTED, "configs": {n: c for n, c in EXPECTED["configs"].items() if n != first}}
    other_base = {**EXPECTED, "base": [*BASE, "seed=7"]}
    assert [pins_these_configurations(e) for e in (other_override, one_fewer, other_base, {})] == [False] * 4


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
    want = HERE.get(name) if HERE else None
    assert want is not None, f"{name}: no digests recorded: run {UPDATE}"
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
    assert HERE is not None and moved(HERE[name], got) == list(KINDS)


def test_each_platform_keeps_its_own_digests(tmp_path):
    """``--add-platform`` records this platform beside the others; ``--update`` drops theirs (stale after a change
    that moves bits on purpose); a platform is found by its whole environment."""
    path = tmp_path / "digests.json"
    ours = {name: dict.fromkeys(KINDS, f"{name}-here") for name in CONFIGS}
    elsewhere = {**environment(), "llvm_host_cpu": "a-cpu-not-this-one"}
    theirs = {name: dict.fromkeys(KINDS, f"{name}-there") for name in CONFIGS}
    path.write_text(json.dumps({"base": BASE, "platforms": [{"environment": elsewhere, "digests": theirs}]}))
    assert platform_digests(load_expected(path)) is None
    write_expected(ours, keep_others=True, path=path)
    both = load_expected(path)
    assert platform_digests(both) == ours and platform_digests(both, elsewhere) == theirs
    assert both["configs"] == {name: {"overrides": CONFIGS[name]} for name in CONFIGS}
    write_expected(ours, keep_others=False, path=path)
    assert [p["environment"] for p in load_expected(path)["platforms"]] == [environment()]
