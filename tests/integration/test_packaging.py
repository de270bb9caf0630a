"""Packaging: `make dist` builds an sdist and a wheel that pass twine, and both install.

A fresh venv with nothing but the wheel (no index, no libvirt headers) runs the plugin as a
guest would: both entry points, `--check-config` on the shipped guest example, one poll of a
captured guest tree. `pip install .` from a checkout and from the sdist is tried too, in fresh
venvs; those need the package index for setuptools (build isolation), so a machine without it
skips them locally (fails under CI=true).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from tests.stack.common import unavailable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FIXTURE_ROOT = ROOT / "tests/fixtures/guest/virtio-6.18-inflated-deflate-on-oom/root"
SOURCE_FILES = (
    "pyproject.toml",
    "README.md",
    "MANIFEST.in",
    "telegraf_balloon",
    "examples",
    "telegraf.d",
)


def _run(
    cmd: list[str], timeout: float = 300, cwd: Optional[Path] = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False
    )


def _checkout(dest: Path) -> Path:
    """What a clean clone holds for building: the package, its metadata and shipped files."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCE_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=ignore)
        else:
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The `make dist` recipe run on a copy of the checkout: dist/ with one sdist, one wheel."""
    for module in ("build", "twine", "wheel", "setuptools"):
        if _run([sys.executable, "-c", f"import {module}"]).returncode != 0:
            unavailable(f"{module} is not installed (the test extra has it)")
    base = tmp_path_factory.mktemp("dist")
    source = _checkout(base / "telegraf-balloon")
    out = base / "dist"
    built = _run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), "."], cwd=source
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    yield out


def _fresh_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin"


def test_make_dist_is_the_recipe_tested_here() -> None:
    recipe = _run(["make", "-n", "dist"], cwd=ROOT)
    assert recipe.returncode == 0, recipe.stderr
    assert "-m build --no-isolation --outdir dist ." in recipe.stdout
    assert "twine check --strict dist/*" in recipe.stdout


def test_sdist_and_wheel_pass_twine(dist: Path) -> None:
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(dist.iterdir())
    checked = _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, wheels + sdists)])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
    assert {"telegraf_balloon/sample.toml", "telegraf_balloon/py.typed"} <= names
    assert any(n.endswith("entry_points.txt") for n in names)
    with tarfile.open(sdists[0]) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    for shipped in (
        "examples/guest.toml",
        "examples/grafana/balloon.json",
        "telegraf.d/telegraf-balloon.conf",
        "README.md",
    ):
        assert shipped in members, shipped
    assert not any(m.startswith("tests/") for m in members)


def test_wheel_installs_without_index_and_runs_in_a_guest(dist: Path, tmp_path: Path) -> None:
    [wheel] = dist.glob("*.whl")
    bin_dir = _fresh_venv(tmp_path / "venv")
    installed = _run([str(bin_dir / "pip"), "install", "--no-index", str(wheel)])
    assert installed.returncode == 0, installed.stderr
    # no extra: no libvirt binding, nothing built
    assert _run([str(bin_dir / "python"), "-c", "import libvirt"]).returncode != 0
    for command in (
        [str(bin_dir / "telegraf-balloon")],
        [str(bin_dir / "python"), "-m", "telegraf_balloon"],
    ):
        version = _run([*command, "--version"], cwd=tmp_path)
        assert version.returncode == 0 and version.stdout.startswith("telegraf-balloon "), version
    checked = _run(
        [
            str(bin_dir / "telegraf-balloon"),
            "--check-config",
            "--config",
            str(ROOT / "examples/guest.toml"),
        ],
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stderr
    config = tmp_path / "guest.toml"
    config.write_text(
        f'[agent]\nhostname = "guest-01"\n[[sources.guest]]\nroot = "{FIXTURE_ROOT}"\n'
    )
    polled = _run(
        [str(bin_dir / "telegraf-balloon"), "--once", "--config", str(config)], cwd=tmp_path
    )
    assert polled.returncode == 0, polled.stderr
    [line] = [x for x in polled.stdout.splitlines() if x.startswith("balloon,")]
    assert "guest=guest-01" in line and "balloon_actual_bytes=1073741824i" in line


@pytest.mark.parametrize("what", ["checkout", "sdist"])
def test_pip_install_in_a_fresh_venv(what: str, dist: Path, tmp_path: Path) -> None:
    """`pip install .` (and the sdist) as a guest does it: no extra, no libvirt headers."""
    target = (
        _checkout(tmp_path / "telegraf-balloon")
        if what == "checkout"
        else next(dist.glob("*.tar.gz"))
    )
    bin_dir = _fresh_venv(tmp_path / "venv")
    installed = _run([str(bin_dir / "pip"), "install", str(target)], timeout=600)
    if installed.returncode != 0 and "satisfies the requirement setuptools" in installed.stderr:
        unavailable("no package index to fetch setuptools for the isolated build")
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    version = _run([str(bin_dir / "python"), "-m", "telegraf_balloon", "--version"], cwd=tmp_path)
    assert version.returncode == 0 and "telegraf-balloon" in version.stdout
