"""The installed package is one name: a non-editable wheel holds ``bayes_unlearn`` (the facade and its four
layers) and the console script, nothing else at the top of site-packages -- no ``models``, ``inference``,
``unlearning``, ``analysis``, ``benchmarks`` or ``tests`` to collide with a user's own folders -- and a
user's ``models/`` or ``inference.py`` beside their script does not hijack the library's internals."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("models", "inference", "unlearning", "analysis")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # a copy of the sources, so that neither a stale build/ folder in the checkout leaks old files into the
    # wheel nor the build writes into the checkout
    src = out / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info",
                                                             "__pycache__", "results", "docs", ".pytest_cache"))
    # --no-build-isolation: the build backend comes from the dev extras (setuptools, wheel), nothing downloaded
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out)], check=True, cwd=out)
    (whl,) = out.glob("bayes_unlearn-*.whl")
    return whl


def test_the_wheel_holds_one_top_level_package_and_the_console_script(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"bayes_unlearn", f"{wheel.name.split('-py3')[0]}.dist-info"}
    for layer in LAYERS:   # every package folder of every layer, nested ones included
        for init in (ROOT / layer).rglob("__init__.py"):
            assert f"bayes_unlearn/{init.relative_to(ROOT).as_posix()}" in names, f"{init} is not in the wheel"
    assert not [n for n in names if "/benchmarks/" in n or "/tests/" in n or "/docs/" in n]
    (entry,) = [n for n in names if n.endswith("entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry).decode()
    assert "bayes-unlearn = bayes_unlearn.analysis.cli:main" in scripts


def test_an_installed_wheel_imports_its_own_layers_beside_a_users_lookalike_folders(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target",
                    str(site), str(wheel)], check=True)
    assert sorted(p.name for p in site.iterdir() if not p.name.endswith(".dist-info")) in (
        ["bayes_unlearn", "bin"], ["bayes_unlearn"])
    user = tmp_path / "project"   # a user's project with folders named like the library's layers
    for layer in LAYERS:
        (user / layer).mkdir(parents=True)
        (user / layer / "__init__.py").write_text("raise ImportError('the user\\'s own folder was imported')\n")
    (user / "inference.py").write_text("raise ImportError('the user\\'s own module was imported')\n")
    code = ("import bayes_unlearn as bu, bayes_unlearn.analysis.cli\n"
            "print(bu.__file__); print(bu.models.__file__); print(bu.fit.__module__, bu.unlearn.__module__)\n")
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", code], cwd=user, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith(str(site)) and lines[1].startswith(str(site / "bayes_unlearn" / "models"))
    assert lines[2] == "bayes_unlearn.inference.fit bayes_unlearn.unlearning.api"


def test_the_facade_file_imports_under_any_module_name():
    """pytest imports a rootdir ``__init__.py`` under the folder's name, or as ``__init__`` with no parent package
    when that name is not an identifier (a ``mktemp`` clone: every test errored before the facade imported its
    own package absolutely). Loaded that way it must give the installed package's objects, not a second copy."""
    import importlib.util

    import bayes_unlearn

    spec = importlib.util.spec_from_file_location("__init__", ROOT / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.fit is bayes_unlearn.fit and module.Posterior is bayes_unlearn.Posterior
