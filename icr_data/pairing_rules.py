"""Pairing rules and filters by name: the one registry that recipe validation (config.py), the
CLI's `pair --strategy/--filters` choices and help (cli.py) and the pair stage (pairs.py) read.

A rule picks (chosen, rejected) index pairs among one prompt's kept candidates:

    select(adjusted, reward, cfg, rng) -> [(i, j), ...]

`adjusted` holds the rewards after length control (reward - alpha * length), `reward` the raw
rewards (numpy arrays of the same length, at least 2); `cfg` is the PairingConfig, `rng` a
random.Random seeded per prompt. Adding a rule is one function here plus one line in RULES.

This module imports nothing heavy (no numpy, no datasets) and nothing of icr_data, so config.py
and cli.py read it at import time without cost and without an import cycle.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: config imports this module
    from icr_data.config import PairingConfig

Picks = list[tuple[int, int]]


@dataclass(frozen=True)
class Rule:
    select: Callable[[Any, Any, PairingConfig, random.Random], Picks]
    ranked: bool = True
    """True: a pair whose chosen does not outrank its rejected after length control is dropped
    as no_separation. False: the rule picks by raw reward margin (threshold); only a response
    paired with itself is."""

    @property
    def help(self) -> str:
        """The first line of the function's docstring: what the rule pairs."""
        return (self.select.__doc__ or "").strip().splitlines()[0]


def max_min(adjusted, reward, cfg: PairingConfig, rng: random.Random) -> Picks:
    """best vs worst (the paper's)"""
    return [(int(adjusted.argmax()), int(adjusted.argmin()))]


def max_random(adjusted, reward, cfg: PairingConfig, rng: random.Random) -> Picks:
    """best vs a seeded random other"""
    best = int(adjusted.argmax())
    others = [i for i in range(len(adjusted)) if i != best]
    return [(best, rng.choice(others))] if others else [(best, best)]


def top_bottom(adjusted, reward, cfg: PairingConfig, rng: random.Random) -> Picks:
    """every top-k x bottom-k pair (pairing.k)"""
    order = sorted(range(len(adjusted)), key=lambda i: (-adjusted[i], i))
    top, bottom = order[: cfg.k], order[::-1][: cfg.k]
    out = [(i, j) for i in top for j in bottom if i != j and adjusted[i] > adjusted[j]]
    return out or max_min(adjusted, reward, cfg, rng)


def threshold(adjusted, reward, cfg: PairingConfig, rng: random.Random) -> Picks:
    """every pair whose reward margin is at least pairing.threshold"""
    n = len(reward)
    return [(i, j) for i in range(n) for j in range(n)
            if i != j and reward[i] - reward[j] >= cfg.threshold and reward[i] > reward[j]]  # fmt: skip


RULES: dict[str, Rule] = {
    "max_min": Rule(max_min),
    "max_random": Rule(max_random),
    "top_bottom": Rule(top_bottom),
    "threshold": Rule(threshold, ranked=False),
}
"""pairing.rule / --strategy name -> Rule, in the order the help lists them."""

CANDIDATE_FILTERS = ("truncated", "empty", "duplicate", "repetition", "off_target")
"""Checked on each candidate before pairing, in this order (pairs.candidate_drop)."""
PAIR_FILTERS = ("chosen_eq_rejected", "tie", "judge_disagrees")
"""Checked on each selected pair (pairs.make_pairs)."""
FILTERS = CANDIDATE_FILTERS + PAIR_FILTERS
"""Every name pairing.filters / --filters accepts; all of them are on by default."""


def rules_help() -> str:
    """'max_min: best vs worst (the paper's). max_random: ...' for docs and --help."""
    return " ".join(f"{name}: {rule.help}." for name, rule in RULES.items())
