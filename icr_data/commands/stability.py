"""Score stability: a seeded sample of candidates scored again in other batches, and the largest
|difference| in their summed log-probs from the main pass, checked against a bound.

    check = Stability(fraction=0.02, bound=1e-3, seed=0, total=n)   # ScorePhase.stability
    rows = check.probe(scoring_rows)    # a shard's sample, in its seeded order, in batches of 3
    facts = check.facts(diffs, n)       # the manifest's scoring.stability (card.stability)
    require(facts)                      # StabilityError above the bound: no version is written

Why: a candidate's log-probs must not depend on which rows it was batched with. Padding, batch
shape and the kernels they select change the order of floating-point sums; in float32 on a CPU
that moves a summed log-prob by about 1e-6 nats, in bfloat16 on a GPU by far more, and a scorer
with a real defect (padding leaking into attention, a position read off by one) by whole nats.
Rewards are differences of these sums, and pairs are argmax/argmin of rewards: a spread near the
margins reorders them.

The sample (scoring.stability_sample f, seeded by the recipe's sampling.seed): per shard of n_s
of the run's n candidates, min(n_s, max(ceil(16 n_s / n), ceil(f n_s))) rows (sample_size), so at
least 16 in all (every candidate when there are fewer) and at least the fraction f, whichever way
the work is split into processes (`score --shard`). A shard's rows are ranked by
sha256(seed, prompt_id, lang, sample_idx) and the first k taken, so the same candidates are drawn
whichever command cuts the shards (a build, a rescore of it). In that random order they are scored
in batches of PROBE_BATCH rows (the research code's batch size), where the main pass sorts rows
longest first and fills batches of up to scoring.max_batch_size rows to the token budget: each
sampled row meets other neighbours and another padded width.

The score phase (score_phase.py) runs the sample as tasks of each role's pass, while the model is
loaded, keyed by their content like every score task (a resumed run redoes nothing; the bound is
in no key, so raising it recomputes nothing); both scorer backends take the batches from the rows'
score.BATCH_COLUMN. The figure is taken when the candidates are assembled (build's merge, a
rescore) and checked before pairing.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from icr_data.base.errors import IcrError

if TYPE_CHECKING:
    from datasets import Dataset

MINIMUM = 16
"""Rows rescored at least (all of them when a run has fewer)."""
PROBE_BATCH = 3
"""Rows per batch of the rescoring (the research code's scoring batch size)."""
ORDER = (
    f"batches of {PROBE_BATCH} rows in a seeded random order (the main pass: longest first, "
    "batches filled to the token budget)"
)
COLUMNS = {"policy": "logp_policy", "reference": "logp_ref"}


class StabilityError(IcrError):
    """Log-probs that move with their batch by more than scoring.stability_bound."""


def sample_size(n_shard: int, total: int, fraction: float) -> int:
    """Rows of a shard of `n_shard` (of the run's `total` candidates) to rescore (module doc)."""
    if fraction <= 0 or n_shard <= 0:
        return 0
    share = math.ceil(MINIMUM * n_shard / max(total, n_shard))
    return min(n_shard, max(share, math.ceil(fraction * n_shard)))


def _rank(seed: int, prompt_id, lang: str, sample_idx: int) -> bytes:
    return hashlib.sha256(f"{seed}\x1f{prompt_id}\x1f{lang}\x1f{sample_idx}".encode()).digest()


@dataclass
class Stability:
    """The check's settings for one run (scoring.stability_sample, scoring.stability_bound, the
    recipe's seed) and `total`, the run's candidates (None: those of the shards it is given)."""

    fraction: float
    bound: float
    seed: int = 0
    total: int | None = None

    def positions(self, rows: Dataset, total: int) -> list[int]:
        """The rows of a shard to rescore, in the order they are rescored."""
        k = sample_size(len(rows), total, self.fraction)
        if not k:
            return []
        keys = zip(rows["prompt_id"], rows["lang"], rows["sample_idx"])
        ranks = [_rank(self.seed, p, lang, i) for p, lang, i in keys]
        return sorted(range(len(rows)), key=ranks.__getitem__)[:k]

    def probe(self, rows: Dataset, total: int) -> Dataset | None:
        """The shard's sample as the log-prob passes score it again: its rows in the rescoring
        order, each with its batch number (score.BATCH_COLUMN); None when nothing is sampled."""
        from datasets import Dataset, Value

        from icr_data.stages.score import BATCH_COLUMN

        at = self.positions(rows, total)
        if not at:
            return None
        sample = rows.select(at)  # a small table, built anew (add_column would flatten, loudly)
        features = sample.features.copy()
        features[BATCH_COLUMN] = Value("int64")
        batches = [j // PROBE_BATCH for j in range(len(at))]
        return Dataset.from_dict({**sample.to_dict(), BATCH_COLUMN: batches}, features=features)

    def facts(self, diffs: dict[str, list[float]], candidates: int) -> dict:
        """What the manifest records (scoring.stability), from each role's |differences|."""
        worst = {COLUMNS[r]: _max(d) for r, d in diffs.items()}
        rescored = len(next(iter(diffs.values()), []))
        return {
            "measured": True,
            "rescored": rescored,
            "candidates": candidates,
            "fraction": self.fraction,
            "minimum": MINIMUM,
            "batch_size": PROBE_BATCH,
            "order": ORDER,
            "max_abs_diff": worst,
            "max": max(worst.values(), default=0.0),
            "unit": "nats (summed response log-prob)",
            "bound": self.bound,
        }


def _max(values: list[float]) -> float:
    """The largest value; NaN (a pass that produced none) counts as infinite."""
    return max((v if v == v else math.inf for v in values), default=0.0)


def not_measured(bound: float) -> dict:
    """The manifest's scoring.stability with scoring.stability_sample 0."""
    return {"measured": False, "fraction": 0.0, "bound": bound}


def require(facts: dict) -> None:
    """A StabilityError (one line: the figure, the bound, what to do) above the bound."""
    if not facts.get("measured") or facts["max"] <= facts["bound"]:
        return
    each = ", ".join(f"{c} {v:.1e}" for c, v in facts["max_abs_diff"].items())
    raise StabilityError(
        f"score stability: {facts['rescored']} candidates scored again in other batches moved "
        f"a summed log-prob by up to {facts['max']:.2e} nats ({each}), above "
        f"scoring.stability_bound {facts['bound']:g}: the scores depend on how rows are batched; "
        "no version written. The scores are kept: a rerun with a larger bound (--set "
        "scoring.stability_bound=X, e.g. for bfloat16 on a GPU) recomputes nothing"
    )
