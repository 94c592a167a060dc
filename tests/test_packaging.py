"""The wheel builds and works without the source tree: a fresh venv, the pinned CPU torch,
the wheel, and `robustlr presets / config / demo` run from a folder outside the checkout.

The same venv first proves the lean install: torch, numpy and the wheel without its extras
(`--no-deps`) pass `pip check`, run robustlr.aggregation, and the `robustlr` command says in
one line that it needs `robustlr[sim]`; then the wheel's `sim` extra goes in for the rest.

Budget: about 85 s on 2 cores with pip's cache warm, 2.5 min cold (installing torch and the
`sim` extra into the fresh venv is most of it).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging  # builds a wheel and a venv

ROOT = Path(__file__).resolve().parents[1]
# the CPU wheel on our machines; elsewhere any torch the project admits (see the Makefile)
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")


def _run(cmd, cwd, ok=True, **kw):
    # a clean environment: nothing may point back at the source tree (Ray, once started by
    # another test, leaves PYTHONPATH set in this process)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, **kw)
    if ok:
        assert res.returncode == 0, f"{cmd} failed:\n{res.stdout}\n{res.stderr}"
        return res.stdout
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp / "dist"), str(ROOT)], cwd=tmp)
    wheels = list((tmp / "dist").glob("robustlr-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


#: run in the lean venv (torch, numpy, the wheel without extras)
LEAN_PROBE = """
import json, sys, torch
from importlib.metadata import distributions
from robustlr.aggregation import FedAvg, Krum, RobustLR, SignAggregation
U = torch.tensor([[1.0, -2.0, 3.0], [1.0, 2.0, -3.0], [1.0, 2.0, 3.0]])
out = {"rlr": RobustLR(FedAvg(), threshold=2)(U).tolist(), "krum": Krum(f=0)(U).tolist(),
       "sign": SignAggregation()(U).tolist(),
       "installed": sorted(d.metadata["Name"].lower() for d in distributions())}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def venv(wheel):
    """A venv with the pinned torch, numpy and the wheel without its extras; the lean checks run
    here, before ``installed`` adds the ``sim`` extra to the same venv."""
    tmp = wheel.parent.parent
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q"]
    _run([*pip, TORCH_SPEC, "numpy"], cwd=tmp)  # first, so that the wheel's `torch>=2.2` pulls no CUDA build
    _run([*pip, "--no-deps", str(wheel)], cwd=tmp)
    work = tmp / "elsewhere"
    work.mkdir()
    lean = {"check": _run([py, "-m", "pip", "check"], cwd=work, ok=False),
            "probe": _run([py, "-c", LEAN_PROBE], cwd=work, ok=False),
            "cli": _run([str(venv / "bin" / "robustlr"), "presets"], cwd=work, ok=False)}
    return venv, work, lean


@pytest.fixture(scope="module")
def installed(wheel, venv):
    venv, work, _ = venv
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{wheel}[sim]"], cwd=work)
    return venv / "bin" / "robustlr", work


def test_the_wheel_requires_torch_and_numpy_only_and_names_its_extras(wheel):
    import zipfile
    from email.parser import Parser

    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(meta_name).decode())
    requires = meta.get_all("Requires-Dist")
    core = sorted(r for r in requires if "extra ==" not in r)
    assert core == ["numpy>=1.24", "torch>=2.2"], core
    assert set(meta.get_all("Provides-Extra")) == {"sim", "attribution", "femnist", "cifar-images", "flower",
                                                   "ray", "tensorboard", "flame", "all", "test", "docs"}
    sim = sorted(re.split(r"[<>=!~;\[ ]", r)[0] for r in requires if 'extra == "sim"' in r)
    assert sim == ["matplotlib", "pydantic", "rich", "tomli", "typer"], sim


def test_the_lean_install_runs_aggregation_and_names_the_sim_extra(venv):
    _, _, lean = venv
    assert lean["check"].returncode == 0, lean["check"].stdout + lean["check"].stderr  # all Requires-Dist met
    assert lean["probe"].returncode == 0, lean["probe"].stderr
    out = json.loads(lean["probe"].stdout.strip().splitlines()[-1])
    assert out["rlr"] == pytest.approx([1.0, -2.0 / 3.0, -1.0])
    assert out["sign"] == [1.0, 1.0, 1.0] and len(out["krum"]) == 3
    for pkg in ("captum", "h5py", "pillow", "matplotlib", "pydantic", "typer", "rich", "flwr", "scikit-learn"):
        assert pkg not in out["installed"], pkg
    cli = lean["cli"]
    assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr
    assert cli.stderr.strip().endswith("pip install 'robustlr[sim]'"), cli.stderr


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
