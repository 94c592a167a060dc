"""Backdoor attacks: trojan patterns, their distributed (DBA) parts, and data poisoning."""

from robustlr.attacks.poison import poison, select_poisoned
from robustlr.attacks.trojans import TROJANS, apply_trojan, dba_parts, trojan_mask

__all__ = ["TROJANS", "apply_trojan", "dba_parts", "poison", "select_poisoned", "trojan_mask"]
