"""The lean install: the core (torch, numpy) runs robustlr.aggregation, torch + numpy + flwr run the
Flower strategies, and every feature of an extra that is missing says which extra to install.

Each "missing" package is made unimportable by ``sys.modules[name] = None`` (in a subprocess, or
with monkeypatch here), so these tests need no second venv and no network; the packaging test
(tests/test_packaging.py) checks the same on a real venv with the wheel and no extras.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from robustlr.errors import MissingDependencyError, RobustlrError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

#: every import name an extra brings (tomli is imported only before Python 3.11)
OPTIONAL = ("pydantic", "typer", "rich", "matplotlib", "captum", "h5py", "PIL", "flwr", "ray", "tensorboard",
            "sklearn")
#: what flwr itself imports (its own dependencies, not robustlr's)
FLWR_NEEDS = ("typer", "rich")


def _probe(code: str, blocked: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where the ``blocked`` packages cannot be imported."""
    prelude = f"import sys\nfor _m in {list(blocked)!r}:\n    sys.modules[_m] = None\n"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def _last_json(res: subprocess.CompletedProcess) -> dict:
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_aggregation_runs_on_torch_and_numpy_alone():
    out = _last_json(_probe("""
        import json, torch
        import robustlr
        from robustlr.aggregation import (Bulyan, ClipAndNoise, CoordinateMedian, FedAvg, FoolsGold, GeometricMedian,
                                          Krum, NormBounding, RobustLR, SignAggregation, TrimmedMean, Flame)
        from robustlr.errors import MissingDependencyError
        U = torch.tensor([[1.0, -2.0, 3.0], [1.0, 2.0, -3.0], [1.0, 2.0, 3.0]])
        rlr = RobustLR(FedAvg(), threshold=2)(U).tolist()
        U7 = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
        for rule in (CoordinateMedian(), SignAggregation(), FoolsGold(), TrimmedMean(0.2), Krum(f=1), Bulyan(f=1),
                     GeometricMedian(), NormBounding(FedAvg(), 1.0), ClipAndNoise(FedAvg(), clip_norm=1.0),
                     RobustLR(Krum(f=1), threshold=3)):
            assert rule(U7, agent_ids=list(range(7))).shape == (5,)
        errors = {}
        for name, call in (("flame", lambda: Flame()(U7)), ("sim", lambda: robustlr.load_config("demo-iid")),
                           ("flower", lambda: __import__("robustlr.integrations.flower"))):
            try:
                call()
            except MissingDependencyError as exc:
                errors[name] = str(exc)
        loaded = sorted(m for m in sys.modules if m.startswith("robustlr."))
        print(json.dumps({"rlr": rlr, "errors": errors, "loaded": loaded}))
    """, OPTIONAL))
    assert out["rlr"] == pytest.approx([1.0, -2.0 / 3.0, -1.0])
    for extra, msg in out["errors"].items():
        assert f"pip install 'robustlr[{extra}]'" in msg, msg
    assert sorted(out["errors"]) == ["flame", "flower", "sim"]
    assert "scikit-learn" in out["errors"]["flame"] and "pydantic" in out["errors"]["sim"]
    # nothing of the simulator, the CLI or the reports was imported on the way
    assert not [m for m in out["loaded"] if m.split(".")[1] in ("sim", "cli", "reports", "experiments", "analysis")]


def test_flower_strategies_need_flwr_and_nothing_of_the_simulator():
    pytest.importorskip("flwr", reason="the Flower extra: pip install 'robustlr[flower]'")
    out = _last_json(_probe("""
        import json
        from flwr.serverapp.strategy import FedAvg
        from robustlr.aggregation import CoordinateMedian
        from robustlr.errors import MissingDependencyError
        from robustlr.integrations.flower import (ArrayLayout, RobustLRStrategy, RuleStrategy, foolsgold_strategy,
                                                  sign_aggregation_strategy, trainable_keys)
        built = [type(s).__name__ for s in (RuleStrategy(CoordinateMedian()), sign_aggregation_strategy(),
                                            foolsgold_strategy(), RobustLRStrategy(FedAvg(), threshold=2))]
        try:  # robustlr's own apps run the simulator's federation: they need the sim extra
            import robustlr.integrations.flower.apps
            apps = "imported"
        except MissingDependencyError as exc:
            apps = str(exc)
        loaded = sorted(m for m in sys.modules if m.startswith("robustlr."))
        print(json.dumps({"built": built, "apps": apps, "loaded": loaded}))
    """, tuple(m for m in OPTIONAL if m not in ("flwr", *FLWR_NEEDS))))
    assert out["built"] == ["RuleStrategy", "RuleStrategy", "RuleStrategy", "RobustLRStrategy"]
    assert "pip install 'robustlr[sim]'" in out["apps"]
    assert not [m for m in out["loaded"] if m.split(".")[1] in ("sim", "cli", "reports", "experiments", "analysis")]


def test_the_console_script_names_the_sim_extra_in_one_line():
    res = _probe("""
        from robustlr.cli import main
        sys.argv = ["robustlr", "presets"]
        main()
    """, ("typer", "rich", "pydantic"))
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == ("error: the robustlr command needs typer, rich and pydantic, which are not "
                                  "installed: pip install 'robustlr[sim]'")
    assert "Traceback" not in res.stderr and res.stdout == ""


def _block(monkeypatch, *tops: str) -> None:
    """Make ``tops`` and every loaded submodule of them unimportable for this test."""
    for name in list(sys.modules):
        if name in tops or name.startswith(tuple(f"{t}." for t in tops)):
            monkeypatch.setitem(sys.modules, name, None)
    for t in tops:
        monkeypatch.setitem(sys.modules, t, None)


def test_require_names_the_distribution_and_passes_modules_through(monkeypatch):
    from robustlr._optional import require

    assert require("json", "os.path", extra="x", feature="f") is os.path
    _block(monkeypatch, "PIL", "sklearn")
    with pytest.raises(MissingDependencyError) as info:
        require("PIL", "json", "sklearn.cluster", extra="x", feature="a feature")
    assert str(info.value) == ("a feature needs pillow and scikit-learn, which are not installed: "
                               "pip install 'robustlr[x]'")
    assert isinstance(info.value, ImportError) and isinstance(info.value, RobustlrError)


def _explain(tmp_path):
    from robustlr.analysis.features import explain_runs

    explain_runs(tmp_path / "a", tmp_path / "b", tmp_path / "c", tmp_path / "out")


def _tff(tmp_path):
    from robustlr.data.femnist.tff import load_tff_emnist

    load_tff_emnist(tmp_path / "train.h5", tmp_path / "test.h5")


def _image_folder(tmp_path):
    from robustlr.data.cifar.image_folder import _load_image_folder

    _load_image_folder(None)  # the check comes before anything is read


def _tensorboard(tmp_path):
    from robustlr.reports.tensorboard import export_tensorboard

    export_tensorboard(tmp_path, tmp_path / "tb")


def _figures(tmp_path):
    from robustlr.reports.plots import plot_runs

    plot_runs({}, tmp_path / "x.png")


def _flame(tmp_path):
    from robustlr.aggregation import Flame

    Flame()(torch.eye(3))


def _ray_sweep(tmp_path):
    from robustlr.experiments.ray_backend import RayBackend

    RayBackend().open(tmp_path, [])


@pytest.mark.parametrize("call, blocked, extra, package", [
    (_explain, ("captum",), "attribution", "captum"),
    (_tff, ("h5py",), "femnist", "h5py"),
    (_image_folder, ("PIL",), "cifar-images", "pillow"),
    (_tensorboard, ("tensorboard",), "tensorboard", "tensorboard"),
    (_figures, ("matplotlib",), "sim", "matplotlib"),
    (_flame, ("sklearn",), "flame", "scikit-learn"),
    (_ray_sweep, ("ray",), "ray", "ray"),
], ids=["explain", "femnist-h5", "cifar-image-folder", "tensorboard", "figures", "flame", "ray-sweep"])
def test_each_extra_feature_names_its_extra(call, blocked, extra, package, tmp_path, monkeypatch):
    _block(monkeypatch, *blocked)
    with pytest.raises(MissingDependencyError, match=rf"needs {package}\b.*pip install 'robustlr\[{extra}\]'"):
        call(tmp_path)


def test_robustlr_explain_without_captum_is_one_line_and_exit_2(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from robustlr.cli import app

    for d in "abc":
        (tmp_path / d).mkdir()
    _block(monkeypatch, "captum")
    res = CliRunner().invoke(app, ["explain", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c"),
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())  # rich wraps at the terminal's width
    assert text == ("error: Gradient SHAP (robustlr explain) needs captum, which is not installed: "
                    "pip install 'robustlr[attribution]'")


def test_the_extras_hold_what_they_say():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == ["numpy>=1.24", "torch>=2.2"]
    extras = project["optional-dependencies"]
    features = {k: v for k, v in extras.items() if k not in ("all", "test", "docs")}
    assert set(extras["docs"]) <= set(extras["test"])  # the site's strict build is a test
    assert sorted(features) == ["attribution", "cifar-images", "femnist", "flame", "flower", "ray", "sim", "tensorboard"]
    union = {req for reqs in features.values() for req in reqs}
    assert set(extras["all"]) == union and len(extras["all"]) == len(union)  # each once, none forgotten
    assert union <= set(extras["test"])  # `make test` installs .[test]: every feature is tested
    assert {r.split(">")[0].split("<")[0] for r in set(extras["test"]) - union - set(extras["docs"])} == {
        "pytest", "hypothesis", "build"}


def test_robustlr_run_on_flower_without_flwr_is_one_line_and_exit_2(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from robustlr.cli import app

    _block(monkeypatch, "flwr")
    for name in [m for m in sys.modules if m.startswith("robustlr.integrations.flower")]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, without flwr
    res = CliRunner().invoke(app, ["run", "demo-iid", "--engine", "flower", "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert " ".join(res.output.split()) == ("error: robustlr.integrations.flower needs flwr, which is not "
                                            "installed: pip install 'robustlr[flower]'")
    assert not (tmp_path / "run").exists()
