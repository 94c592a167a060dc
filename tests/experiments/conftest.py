"""Fixtures of the sweep tests: the tiny suite (4 runs of 3 rounds on a 300-image Fashion-MNIST
subset) and one local sweep of it, shared by the local and the Ray sweep tests (read only)."""

import pytest

TINY_SUITE = """# a tiny suite for tests
name = "tiny"
preset = "demo-iid"

[budget.lite]
rounds = 3
train_limit = 300
precision = "fp32"
checkpoint_every = 1
eval_every = 1

[[row]]
label = "fedavg"
rlr_threshold = 0

[[row]]
label = "rlr"

[grid]
seed = [0, 1]
"""


@pytest.fixture
def suite_file(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY_SUITE)
    return p


@pytest.fixture(scope="session")
def tiny_suite_text() -> str:
    return TINY_SUITE


@pytest.fixture(scope="session")
def tiny_local_sweep(tmp_path_factory, fmnist_dir):
    """The tiny suite swept locally with ``-j 2`` (read only: the reference numbers)."""
    from robustlr.experiments.suite import load_suite
    from robustlr.experiments.sweep import sweep

    d = tmp_path_factory.mktemp("tiny-local")
    (d / "tiny.toml").write_text(TINY_SUITE)
    out = d / "results"
    state = sweep(load_suite(d / "tiny.toml"), out, "lite", jobs=2, data_dir=str(fmnist_dir))
    assert (state.done, state.failed) == (4, [])
    return out
