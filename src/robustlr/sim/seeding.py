"""Random streams derived from (seed, purpose, round, agent), never from shared global state.

Every random choice of a run (agent sampling, poisoning, batch order, dropout, noise) draws
from a generator built here from the experiment seed and the coordinates of that choice, so
the numbers of a run do not depend on the order in which agents are trained, on how many
run at once, or on where a resumed run restarted.
"""

from __future__ import annotations

import numpy as np
import torch

# purposes: fixed small integers so that streams never collide
SETUP = 1  # corrupt-agent choice, poisoning, partition
SAMPLE = 2  # agents sampled in a round
BATCHES = 3  # an agent's batch order in a round
DROPOUT = 4  # an agent's dropout masks in a round
NOISE = 5  # server noise in a round
INIT = 6  # model initialisation
SUBSET = 7  # train_limit subset
TRIGGER = 8  # an optimised trigger's batch order in a round (A3FL)
ROOT = 9  # the server's root dataset (FLTrust)
CRFL = 10  # CRFL's noise on the model sent to the agents in a round; its test-time smoothing (round 0)


def seed_of(seed: int, purpose: int, *coords: int) -> int:
    """A 63-bit integer seed for the given stream."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, purpose, *[int(c) for c in coords]])
    return int(ss.generate_state(2, dtype=np.uint32).astype(np.uint64) @ np.array([1 << 32, 1], dtype=np.uint64)) & (
        (1 << 63) - 1
    )


def numpy_rng(seed: int, purpose: int, *coords: int) -> np.random.Generator:
    return np.random.default_rng(seed_of(seed, purpose, *coords))


def torch_generator(seed: int, purpose: int, *coords: int, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed_of(seed, purpose, *coords))
    return g
