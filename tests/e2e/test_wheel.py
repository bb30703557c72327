"""A built wheel, installed away from the repository, runs its commands from any folder and writes only
there: the configs are package data, and nothing lands beside the installed package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..helpers import ROOT

pytestmark = pytest.mark.slow

SKIP = {".git", ".venv", "runs", "data", "build", "dist", "__pycache__", ".pytest_cache"}


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


def test_an_installed_wheel_runs_the_demo_from_another_folder(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=lambda _, names: [n for n in names if n in SKIP
                                                                       or n.endswith(".egg-info")])
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(wheels), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("vsrpp_dist-*.whl")
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                                str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert (site / "vsrpp_dist" / "configs" / "demo.yaml").is_file(), "the configs are package data"
    before = files_under(site)

    work = tmp_path / "somewhere_else"
    work.mkdir()
    # the installed copy first on the path, ahead of this checkout's editable install
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    where = subprocess.run([sys.executable, "-c", "import vsrpp_dist; print(vsrpp_dist.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=60)
    assert where.stdout.strip() == str(site / "vsrpp_dist" / "__init__.py")
    demo = subprocess.run([str(site / "bin" / "vsrpp"), "demo", "train.total_steps=2", "validation.every=0",
                           "checkpoint.rolling_every=0"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert (work / "data" / "demo" / "shards" / "train" / "manifest.json").is_file()
    assert (work / "runs" / "demo" / "checkpoint_latest" / "model.safetensors").is_file()
    assert files_under(site) == before, "nothing is written beside the installed package"
    # a config by name from any folder
    helped = subprocess.run([str(site / "bin" / "vsrpp"), "train", "--config", "configs/tiny.yaml", "--help-config"],
                            cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "init.from" in helped.stdout, helped.stderr[-2000:]
