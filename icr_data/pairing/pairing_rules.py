"""Pairing rules: which candidates of a prompt are paired. registry.PAIRING_RULES names them for
recipe validation, the CLI's `pair --strategy` choices and help, and the pair stage (pairs.py).

A rule picks (chosen, rejected) pairs for a batch of prompts that each have n kept candidates:

    select(adjusted, reward, cfg, rng) -> (prompt, chosen, rejected)

`adjusted` holds the rewards after length control (reward - alpha * length), `reward` the raw
rewards, both numpy arrays of shape (prompts, n), n >= 2; `cfg` is the PairingConfig and `rng(p)`
the random.Random seeded for prompt p of the batch. It returns three integer arrays, one entry a
pair: the prompt's row in the batch and the chosen and rejected columns, ordered by prompt (pairs
of one prompt in the rule's order). argmax/argmin along axis 1 pick the first of equals, as the
pair stage expects. Adding a rule is one function here plus one line in
base/registry.py's PAIRING_RULES.

A rule may instead be written for one prompt, `select(adjusted, reward, cfg, rng) -> [(i, j)]`
on 1-d arrays with `rng` a random.Random, and registered as `Rule(f, batched=False)`; the pair
stage then calls it once per prompt (simpler, slower).

This module imports nothing heavy (no numpy, no datasets).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from icr_data.base.registry import PAIRING_RULES

if TYPE_CHECKING:
    from icr_data.base.config import PairingConfig


@dataclass(frozen=True)
class Rule:
    select: Callable[..., Any]
    ranked: bool = True
    """True: a pair whose chosen does not outrank its rejected after length control is dropped
    as no_separation. False: the rule picks by raw reward margin (threshold); only a response
    paired with itself is."""
    batched: bool = False
    """True: `select` takes a batch of prompts, (prompts, n) arrays (see above). False: one
    prompt, 1-d arrays, a list of (chosen, rejected) index pairs back."""

    @property
    def help(self) -> str:
        """The first line of the function's docstring: what the rule pairs."""
        return (self.select.__doc__ or "").strip().splitlines()[0]


def max_min(adjusted, reward, cfg: PairingConfig, rng: Callable[[int], random.Random]):
    """best vs worst (the paper's)"""
    import numpy as np

    return np.arange(len(adjusted)), adjusted.argmax(axis=1), adjusted.argmin(axis=1)


def max_random(adjusted, reward, cfg: PairingConfig, rng: Callable[[int], random.Random]):
    """best vs a seeded random other"""
    import numpy as np

    prompts, n = adjusted.shape
    best = adjusted.argmax(axis=1)
    # others = every index but the best, in order; rng.choice(others) is others[draw]
    draw = np.array([rng(p).choice(range(n - 1)) for p in range(prompts)], dtype=np.int64)
    return np.arange(prompts), best, draw + (draw >= best)


def top_bottom(adjusted, reward, cfg: PairingConfig, rng: Callable[[int], random.Random]):
    """every top-k x bottom-k pair (pairing.k)"""
    import numpy as np

    order = np.argsort(-adjusted, axis=1, kind="stable")  # best first, the lower index on ties
    top, bottom = order[:, : cfg.k], order[:, ::-1][:, : cfg.k]
    i, j = top[:, :, None], bottom[:, None, :]
    rows = np.arange(len(adjusted))[:, None, None]
    ok = (i != j) & (adjusted[rows, i] > adjusted[rows, j])
    p, a, b = np.nonzero(ok)
    none = np.flatnonzero(~ok.reshape(len(adjusted), -1).any(axis=1))  # these fall back to max_min
    prompt = np.concatenate([p, none])
    chosen = np.concatenate([top[p, a], adjusted[none].argmax(axis=1)])
    rejected = np.concatenate([bottom[p, b], adjusted[none].argmin(axis=1)])
    keep = np.argsort(prompt, kind="stable")
    return prompt[keep], chosen[keep], rejected[keep]


def threshold(adjusted, reward, cfg: PairingConfig, rng: Callable[[int], random.Random]):
    """every pair whose reward margin is at least pairing.threshold"""
    import numpy as np

    i, j = reward[:, :, None], reward[:, None, :]
    n = reward.shape[1]
    ok = ~np.eye(n, dtype=bool) & (i - j >= cfg.threshold) & (i > j)
    return np.nonzero(ok)


MAX_MIN = Rule(max_min, batched=True)
MAX_RANDOM = Rule(max_random, batched=True)
TOP_BOTTOM = Rule(top_bottom, batched=True)
THRESHOLD = Rule(threshold, ranked=False, batched=True)
"""The rules; registry.PAIRING_RULES names them (pairing.rule / --strategy), in the order the
help lists them."""


def rules_help() -> str:
    """'max_min: best vs worst (the paper's). max_random: ...' for docs and --help."""
    return " ".join(f"{name}: {PAIRING_RULES.load(name).help}." for name in PAIRING_RULES)
