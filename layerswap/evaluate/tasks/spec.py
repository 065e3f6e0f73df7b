"""A task described as data: the :class:`TaskSpec` each module of this package defines as ``TASK``,
and the :class:`EvalRequest` that :func:`~layerswap.evaluate.api.evaluate` hands its runner.

Light on purpose: the CLI lists the registry in its help at start-up, so neither this module nor a
task module's top level imports torch or pandas; a runner imports them when it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerswap.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from layerswap.evaluate.result import EvalResult
    from layerswap.evaluate.runner import LoadedModel


@dataclass(frozen=True)
class EvalRequest:
    """The settings of one ``evaluate`` call as a runner sees them; ``shots`` is already the task's
    default where the caller left it unset."""

    langs: tuple[str, ...] = ("sw", "bn", "te")
    fmt: str = "native_cot"
    shots: int | None = None
    limit: int | None = None
    batch_size: int = 8
    max_new_tokens: int = 256
    data_dir: str | Path | None = None
    data: str | Path | None = None
    question_field: str = "question"
    answer_field: str = "answer"


Runner = Callable[["LoadedModel", EvalRequest], "EvalResult"]


@dataclass(frozen=True)
class TaskSpec:
    """Everything outside a task's module needs to know about it.

    ``metric`` is the headline summary column (what a sweep selects on and plots); ``extra_metrics``
    are reported beside it in the same direction. ``score_field`` is the per-example record field
    whose mean is the metric (``correct``: True/False counts as 1/0); a ratio metric instead names
    ``ratio_fields = (numerator, denominator)``, record fields summed over examples (FLORES: bits and
    UTF-8 bytes per sentence). :func:`~layerswap.evaluate.scores.example_scores` reads these, and the
    summary's ``stderr``/``ci_low``/``ci_high`` of the headline metric come from the same numbers.
    ``training_refused`` names the data specs (keys of the core's ``EVALUATION_SETS``) whose data
    must never be used for training because this task scores on it. The checks run before any
    model is loaded: ``check_language`` (None: any language of the data table), ``check_shots``
    (None: the task takes no exemplars), ``check_request`` (anything else). ``finish`` adjusts the
    combined summary of a run that included the task. ``in_sweep`` is False for a task a sweep
    config cannot describe (custom needs a data file).
    """

    name: str
    summary: str
    run: Runner
    metric: str
    higher_is_better: bool = True
    default_shots: int | None = None
    score_field: str = "correct"
    ratio_fields: tuple[str, str] | None = None
    extra_metrics: tuple[str, ...] = ()
    training_refused: tuple[str, ...] = ()
    check_language: Callable[[str], Any] | None = None
    check_shots: Callable[[int], Any] | None = None
    check_request: Callable[[EvalRequest], Any] | None = None
    finish: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    in_sweep: bool = True

    @property
    def metrics(self) -> tuple[str, ...]:
        """The headline metric, then the extra ones."""
        return (self.metric, *self.extra_metrics)

    def shots_for(self, shots: int | None) -> int | None:
        """The caller's ``--shots``, or this task's default when unset."""
        return self.default_shots if shots is None else shots


def nonnegative_shots(shots: int) -> int:
    """The ``--shots`` check of a task that draws exemplars from a large pool (GSM8K train)."""
    if shots < 0:
        raise ConfigError("--shots must be 0 or more")
    return shots
