"""Rivulet is a package: pyproject.toml (PEP 621), a `rivulet` console entry
point, `--version`, py.typed, runtime dependencies apart from the test
extras and pinned by requirements.txt; a wheel installed into a fresh venv
runs `rivulet run --input FILE` from any directory.

The install test is offline: the wheel is built without build isolation and
installed without dependencies; the fresh venv sees the dependencies of this
one through a .pth file, never the source tree. With RIVULET_NETWORK_TESTS=1
a second test does the real thing: `pip install -c requirements.txt .` from
the package index into a fresh venv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SAMPLE = ROOT / "samples" / "events_sample.csv"


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{path.name}: {line} is not pinned"
        found[_name(requirement.name)] = spec.version
    return found


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_pyproject_declares_the_package():
    project = PYPROJECT["project"]
    assert project["name"] == "rivulet"
    assert project["scripts"] == {"rivulet": "daemon.cli:main"}
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "daemon.version.__version__"}
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        assert (ROOT / package / "__init__.py").is_file() and (ROOT / package / "py.typed").is_file(), package


@pytest.mark.parametrize("extra, lock", [(None, "requirements.txt"), ("test", "requirements-dev.txt"),
                                         ("lint", "requirements-dev.txt")])
def test_every_dependency_is_pinned_by_its_lock_and_the_pin_is_in_range(extra, lock):
    project = PYPROJECT["project"]
    declared = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    locked = pins(ROOT / lock)
    for text in declared:
        requirement = Requirement(text)
        name = _name(requirement.name)
        assert name in locked, f"{name} is not pinned in {lock}"
        assert requirement.specifier.contains(locked[name]), f"{lock} pins {name}=={locked[name]} outside {text}"
    if extra is None:  # the runtime lock holds nothing the package does not declare
        assert set(locked) == {_name(Requirement(t).name) for t in declared}
        assert not {"pytest", "hypothesis", "moto", "ruff", "duckdb"} & set(locked)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy: setuptools leaves build/ and *.egg-info beside the sources.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(out), str(source)],
        capture_output=True, text=True, timeout=300, cwd=out)
    assert build.returncode == 0, build.stderr
    (built,) = out.glob("rivulet-*.whl")
    return built


def test_a_wheel_in_a_fresh_venv_runs_from_any_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
         str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The dependencies of this venv, not its source tree (tests run with ROOT on sys.path, the venv never does).
    (site / "rivulet_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RIVULET_DATA_DIR")}
    rivulet = venv / "bin" / "rivulet"

    where = subprocess.run([str(python), "-c", "import daemon.cli, config.settings as s; print(daemon.cli.__file__);"
                            " print(s.DEFAULT_PROFILE.is_file())"], cwd=elsewhere, env=env, capture_output=True,
                           text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    module_file, profile_found = where.stdout.split()
    assert module_file.startswith(str(site)) and profile_found == "True"
    assert (site / "daemon" / "py.typed").is_file() and (site / "streams" / "py.typed").is_file()

    from daemon.version import __version__

    version = subprocess.run([str(rivulet), "--version"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert version.stdout.strip() == f"rivulet {__version__}"
    events = elsewhere / "my events.csv"
    events.write_bytes(SAMPLE.read_bytes())
    result = subprocess.run([str(rivulet), "run", "--input", events.name, "--lateness", "3h", "--json"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"valid": 17' in result.stdout
    assert (elsewhere / "data" / "counts.sqlite3").is_file()  # data_dir is relative to where it runs
    query = subprocess.run([str(rivulet), "query", "buckets", "--customer", "b4f9279a0196e40632e947dd1a88e857",
                            "--start", "2021-03-01T00:00:00Z", "--end", "2021-03-01T05:00:00Z"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert query.returncode == 0, query.stderr
    assert [b["count"] for b in __import__("json").loads(query.stdout)["buckets"]] == [3, 3, 2, 4, 3]
    # Without the source tree there is no bundled sample: no arguments print the help.
    bare = subprocess.run([str(rivulet)], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2 and "usage: rivulet" in bare.stdout


@pytest.mark.skipif(os.environ.get("RIVULET_NETWORK_TESTS") != "1", reason="needs the package index: RIVULET_NETWORK_TESTS=1")
def test_pip_install_from_the_index_in_a_fresh_venv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--quiet"]
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "data", "node_modules", "__pycache__",
                                                                ".hypothesis", "bench"))
    install = subprocess.run([*pip, "install", "-c", str(ROOT / "requirements.txt"), str(source)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    installed = subprocess.run([*pip, "list", "--format", "freeze"], capture_output=True, text=True).stdout
    assert "pytest" not in installed and "hypothesis" not in installed and "moto" not in installed
    result = subprocess.run([str(venv / "bin" / "rivulet"), "run", "--input", str(SAMPLE)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "valid (counted)" in result.stdout
