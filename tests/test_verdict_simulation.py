"""The family-wise guarantee of a halving sweep (race, then final verdicts), checked by a small simulation.

``benchmarks/bench_verdicts.py`` runs up to 1,000 simulated sweeps per scenario; here a small version of
the same code (50 sweeps of a tied scenario on 0/1 scores: two candidates share the top, so any named
winner is wrong) checks that the winner-error rate's 95% Clopper-Pearson interval is consistent with
<= alpha, and that the check can fail: a procedure that names the leader whatever the verdicts say fails it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_verdicts", ROOT / "benchmarks" / "bench_verdicts.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_wrong_winner_is_named_at_most_at_alpha_and_naming_the_leader_fails_the_check(bench):
    tied = bench.Scenario("tied", "mgsm", (0.0, 0.0, -0.8, -1.6), block=16, max_examples=48)
    assert tied.tied and tied.best == {"swap-b1-u1", "swap-b2-u1"}
    found = bench.simulate(tied, 50, procedures=("verdicts", "leader"))
    good, bad = found["verdicts"], found["leader"]
    assert good["sweeps"] == bad["sweeps"] == 50
    assert good["consistent"] and good["ci_low"] <= bench.ALPHA, good
    # The deliberately bad procedure names a winner in every sweep: with two tied at the top, each is wrong.
    assert bad["named"] == 1.0 and bad["errors"] >= 45 and not bad["consistent"], bad


def test_the_check_is_not_vacuous_a_separable_best_is_named(bench):
    """A procedure that never names a winner would pass the error check: where the best is clearly
    separable, the sweep's verdicts do name it."""
    clear = bench.Scenario("clear", "mgsm", (2.5, -1.5, -2.0, -2.5), block=32, max_examples=64)
    found = bench.simulate(clear, 10)["verdicts"]
    assert found["errors"] == 0 and found["power"] >= 0.8, found
