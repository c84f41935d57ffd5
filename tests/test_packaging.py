"""The wheel holds every config of conf/ (src/mmlexp/conf links to it), the `mmlexp` command and the Hydra plugin."""

import configparser
import importlib
import importlib.util
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import CONF, REPO


def test_the_package_config_dir_is_the_top_level_conf():
    from mmlexp.__main__ import PACKAGED_CONFIG_DIR

    assert (REPO / "src" / "mmlexp" / "conf").resolve() == CONF.resolve()
    assert PACKAGED_CONFIG_DIR == str(CONF.resolve())


def tracked_copy(dest):
    """The checkout's tracked files (links kept as links) under ``dest``: a build writes build/ and *.egg-info
    next to its sources, which must not be the checkout."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name, follow_symlinks=False)
    return dest


@pytest.mark.skipif(importlib.util.find_spec("build") is None, reason="needs the `build` package (dev extra)")
def test_wheel_ships_every_config_and_the_entry_points(tmp_path):
    source = tracked_copy(tmp_path / "source")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("mmlexp-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    expected = {"mmlexp/conf/" + p.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml")}
    assert len(expected) > 40 and expected <= names
    assert "mmlexp/resources/sample/train.txt" in names
    eps = configparser.ConfigParser()
    eps.read_string(entry_points)
    assert eps["console_scripts"]["mmlexp"] == "mmlexp.__main__:main"
    module, _, name = eps["hydra.plugins"]["mmlexp_optuna"].partition(":")  # the Hydra plugin resolves
    assert getattr(importlib.import_module(module), name).__name__ == "OptunaSweeper"
