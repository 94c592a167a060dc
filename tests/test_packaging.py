"""The wheel builds and works without the source tree: a fresh venv, the pinned CPU torch,
the wheel, and `robustlr presets / config / demo` run from a folder outside the checkout.

Budget: about 40-60 s on 2 cores (installing torch into the fresh venv is most of it).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the CPU wheel on our machines; elsewhere any torch the project admits (see the Makefile)
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")


def _run(cmd, cwd, **kw):
    # a clean environment: nothing may point back at the source tree (Ray, once started by
    # another test, leaves PYTHONPATH set in this process)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, **kw)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp / "dist"), str(ROOT)], cwd=tmp)
    wheels = list((tmp / "dist").glob("robustlr-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, TORCH_SPEC], cwd=tmp)  # first, so that the wheel's `torch>=2.2` pulls no CUDA build
    _run([*pip, str(wheels[0])], cwd=tmp)
    work = tmp / "elsewhere"
    work.mkdir()
    return venv / "bin" / "robustlr", work


def test_the_installed_package_is_not_the_source_tree(installed):
    exe, work = installed
    out = _run([str(exe.parent / "python"), "-c", "import robustlr, sys; print(robustlr.__file__)"], cwd=work)
    assert str(ROOT) not in out and "site-packages" in out


def test_presets_and_config_come_from_package_data(installed):
    exe, work = installed
    assert "iid-rlr-clip-noise" in _run([str(exe), "presets"], cwd=work)
    cfg = json.loads(_run([str(exe), "config", "iid-rlr-clip-noise"], cwd=work))
    assert (cfg["rlr_threshold"], cfg["clip_norm"], cfg["rounds"]) == (4, 4.0, 200)


def test_demo_runs_from_the_wheel(installed, data_dir):
    exe, work = installed
    out = _run([str(exe), "demo", "--setting", "iid", "--set", "rounds=1", "--set", "train_limit=300",
                "--set", "threads=1", "--out", str(work / "demo"), "--data-dir", str(data_dir)], cwd=work)
    assert "FedAvg + RLR, attack" in out and "Table 1" in out  # the paper's numbers are package data too
    assert (work / "demo" / "demo.png").is_file()
