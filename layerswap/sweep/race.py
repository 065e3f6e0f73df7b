"""The successive-halving race as data: its plan, its units of work, each round's decision and the
result (:mod:`~layerswap.sweep.halving` runs it; the report and the selection module read it)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

#: Why a race stopped.
ONE_LEFT = "one candidate left"
FULL_SET = "survivors indistinguishable on every example allowed"
DATA_END = "survivors indistinguishable on every example of the data"
BUDGET = "the budget of example-evaluations is spent"
#: Even the closest pair of survivors would need more than ``max_examples`` per language to be told apart
#: (:func:`~layerswap.sweep.race_stats.closest_pair`): more rounds would spend examples without a decision.
NO_SEPARATION = "the survivors could not be separated within max_examples"

@dataclass(frozen=True)
class HalvingPlan:
    """The race's settings: examples per block and at most per candidate (per language), the budget
    of example-evaluations (all languages), the family-wise alpha and the metric's direction."""

    task: str
    block: int
    max_examples: int
    languages: int = 1
    budget: int | None = None
    alpha: float = 0.05
    higher_is_better: bool = True

    @property
    def rounds(self) -> int:
        """The most rounds the race can take (one block each)."""
        return math.ceil(self.max_examples / self.block)

    @property
    def alpha_round(self) -> float:
        """The one-sided level of a round's comparisons with its leader (before Holm): ``alpha`` split over the
        rounds and over the two directions a comparison can take. The leader is chosen from the same data, so
        of two tied candidates either may lead and drop the other: at ``alpha / rounds`` a tie at the top gave
        a wrong winner in 11 and 12 of 200 simulated sweeps of means and bits per byte (``bench_verdicts.py``)."""
        return self.alpha / (2 * self.rounds)

    def span(self, round_: int) -> tuple[int, int]:
        """Example positions (per language) of round ``round_``'s block."""
        start = round_ * self.block
        return start, min(start + self.block, self.max_examples)

    def key(self) -> str:
        """What the decisions depend on besides the scores (stored with each round)."""
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def separation_level(self) -> float:
        """The two-sided level at which the race asks whether more examples could separate its survivors:
        its own test, ``alpha / rounds`` over both directions."""
        return 2.0 * self.alpha_round


def separation_note(plan: HalvingPlan, closest: dict[str, Any]) -> str:
    """``the survivors could not be separated within max_examples=96: `a` vs `b` needs ~412 examples``."""
    if math.isinf(closest["needed"]):
        return f"{NO_SEPARATION}={plan.max_examples}: no two survivors differ on the examples so far"
    per = " per language" if plan.languages > 1 else ""
    return f"{NO_SEPARATION}={plan.max_examples}: `{closest['a']}` vs `{closest['b']}` needs ~{int(closest['needed'])} examples{per}"


@dataclass(frozen=True)
class Unit:
    """One piece of work: one candidate on one block of examples."""

    candidate: str
    round: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.candidate}.{self.start}-{self.stop}"


@dataclass
class RoundDecision:
    """The end of a round: who was compared with whom, who was dropped, whether the race stops."""

    round: int
    examples: int  # per language, every survivor of the round
    leader: str
    entered: list[str]
    survivors: list[str]
    eliminated: list[str]
    rows: list[dict[str, Any]]  # one per entered candidate: n, mean, diff, se, bound, level, p, status
    spent: int  # example-evaluations of the screen so far
    stop: str | None = None
    #: The survivors' pair the fewest examples would separate (``a, b, diff, needed`` per language), if any.
    closest: dict[str, Any] | None = None
    #: The stop reason with its figures, as the log and the report print it (None: ``stop`` says it all).
    note: str | None = None

    @property
    def stop_line(self) -> str | None:
        """Why the race stopped here, in words (None when it went on)."""
        return self.note or self.stop

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HalvingResult:
    """Every round, each candidate's scores (all its units), and the final ranking."""

    plan: HalvingPlan
    rounds: list[RoundDecision]
    scores: dict[str, pd.DataFrame]
    seconds: dict[str, float] = field(default_factory=dict)
    merge_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def survivors(self) -> list[str]:
        return self.rounds[-1].survivors if self.rounds else []

    @property
    def spent(self) -> int:
        return self.rounds[-1].spent if self.rounds else 0

    def ranking(self) -> list[str]:
        """Candidates by the last round they entered (later first), survivors of that round before those it
        dropped, then by their mean in that round."""
        last: dict[str, tuple[int, bool, float]] = {}
        sign = 1.0 if self.plan.higher_is_better else -1.0
        for dec in self.rounds:
            for row in dec.rows:
                mean = row["mean"] if row["mean"] == row["mean"] else -math.inf
                dropped = row.get("status") == "eliminated"
                last[row["candidate"]] = (dec.round, dropped, sign * mean if math.isfinite(mean) else -math.inf)
        order = list(last)
        return sorted(order, key=lambda c: (-last[c][0], last[c][1], -last[c][2], order.index(c)))

    def table(self) -> pd.DataFrame:
        """One row per round and candidate entered: the statistics of :func:`decide`."""
        return pd.DataFrame(
            [{"round": d.round, "examples": d.examples, "leader": d.leader, **row} for d in self.rounds for row in d.rows]
        )


def round_units(plan: HalvingPlan, round_: int, survivors: Sequence[str]) -> list[Unit]:
    """The one place the work of a round is enumerated: each survivor on the round's block."""
    start, stop = plan.span(round_)
    return [Unit(name, round_, start, stop) for name in survivors]


def shard(units: Sequence[Unit], rank: int = 0, world: int = 1) -> list[Unit]:
    """The units process ``rank`` of ``world`` runs (round robin, so every process gets a similar share)."""
    return [u for i, u in enumerate(units) if i % world == rank]
