"""The allocator tuning changes where memory comes from, never a number; it can be turned off."""

import json
import os
import subprocess
import sys

import pytest

CODE = r"""
import json, sys, numpy as np, torch
from robustlr.sim.engines import EngineContext, LocalSettings
from robustlr.sim.engines.allocator import tune_allocator
from robustlr.sim.engines.sequential import SequentialEngine
torch.set_num_threads(1)
torch.manual_seed(0)
x, y = torch.randn(96, 1, 28, 28), torch.randint(0, 10, (96,))
s = LocalSettings(epochs=1, batch_size=32, lr=0.1, momentum=0.9, grad_clip=10.0, clip_norm=0.0, seed=0, precision="fp32")
eng = SequentialEngine(EngineContext("mnist-cnn", 10, s, x, y, [np.arange(96)], torch.device("cpu"), max_agents=1))
u = eng.train_agent(eng.layout.flatten(eng.model).clone(), np.arange(96), 1, 0)
print(json.dumps({"tuned": tune_allocator(), "hex": [float(v).hex() for v in u[::997]]}))
"""


def _run(env_value):
    env = {**os.environ, "ROBUSTLR_MALLOC_TUNING": env_value}
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_tuned_and_untuned_allocators_give_bitwise_the_same_update():
    on, off = _run("1"), _run("0")
    assert (on["tuned"], off["tuned"]) == (True, False)
    assert on["hex"] == off["hex"]
