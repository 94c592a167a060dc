"""Backdoor attacks: trojan patterns, their distributed (DBA) parts, and data poisoning.

A new attack on the data goes in ``poison.py`` (who poisons what) with its pattern in
``trojans.py``; an attack on the training itself (a corrupt agent's loss) is a local-training
option in :mod:`robustlr.sim.engines`.
"""

from robustlr.attacks.dba import dba_parts
from robustlr.attacks.poison import poison, poison_agents, select_poisoned
from robustlr.attacks.trojans import TROJANS, apply_trojan, trojan_mask

__all__ = ["TROJANS", "apply_trojan", "dba_parts", "poison", "poison_agents", "select_poisoned", "trojan_mask"]
