"""A task described as data: the :class:`TaskSpec` each module of this package defines as ``TASK``,
and the :class:`EvalRequest` that :func:`~layerswap.evaluate.api.evaluate` hands its runner.

The interface a task implements (lm-eval's task YAML, ``metric_list`` with its ``aggregation``, is the model):

- ``run(lm, request) -> EvalResult``: one record per example, keyed by ``(task, lang, id)`` with stable ids,
  and one summary row per language with the headline ``metric`` and, beside it, ``n``, ``stderr``,
  ``ci_low``, ``ci_high`` (:func:`~layerswap.evaluate.uncertainty.mean_columns` or ``ratio_columns``;
  :func:`~layerswap.evaluate.scores.fill_uncertainty` adds them for a runner that does not).
- The per-example score: the record field ``score_field`` (a mean metric), or ``ratio_fields`` (a ratio of
  sums, such as bits per byte). :meth:`TaskSpec.aggregate` turns a language's scores into the metric's
  value and interval: the one place a mean and a ratio metric are told apart. The sweep stores the
  scores, keeps the interval the runner reported, and aggregates scores itself only where no runner
  summarised them (a halving race's blocks).
- ``scores_blocks``: the runner honours ``request.offset`` (score examples ``offset`` to ``limit`` only),
  so a halving sweep asks it for one block at a time through the registry; any other task is run on the
  first ``limit`` examples and the block's kept.
- ``check_language``, ``check_shots``, ``check_request`` run before any model loads.

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
    #: Examples to skip before scoring (only a task with ``scores_blocks`` reads it: a halving block).
    offset: int = 0


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
    config cannot describe (custom needs a data file). ``scores_blocks``: the runner honours
    ``EvalRequest.offset``.
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
    scores_blocks: bool = False

    @property
    def metrics(self) -> tuple[str, ...]:
        """The headline metric, then the extra ones."""
        return (self.metric, *self.extra_metrics)

    @property
    def is_ratio(self) -> bool:
        """The metric is a ratio of sums over examples (``ratio_fields``), not a mean of per-example scores."""
        return self.ratio_fields is not None

    def aggregate(self, scores: pd.DataFrame, *, lang: str | None = None) -> dict[str, float]:
        """The headline metric of one language's per-example scores (``score``, and ``num``/``den`` for
        a ratio: :func:`~layerswap.evaluate.scores.example_scores`'s columns) with its uncertainty:
        ``value``, ``stderr``, ``ci_low``, ``ci_high`` and ``n``. A mean: the mean of ``score`` with the
        standard error of the mean and a normal interval (Wilson's for 0/1 scores); a ratio:
        ``sum(num) / sum(den)`` with a percentile bootstrap over examples (2000 resamples, seed 0).
        NaN or infinite scores give NaN standard error and interval and a one-line warning."""
        from layerswap.evaluate.uncertainty import mean_columns, ratio_columns

        nan = float("nan")
        if scores is None or scores.empty:
            return {"value": nan, "stderr": nan, "ci_low": nan, "ci_high": nan, "n": nan}
        if self.is_ratio and scores["num"].notna().all() and scores["den"].notna().all():
            value = float(scores["num"].sum() / scores["den"].sum())
            columns = ratio_columns(scores["num"].tolist(), scores["den"].tolist(), task=self.name, lang=lang)
        else:
            value = float(scores["score"].mean())
            columns = mean_columns(scores["score"].tolist(), task=self.name, lang=lang)
        return {"value": value, **columns, "n": len(scores)}

    def shots_for(self, shots: int | None) -> int | None:
        """The caller's ``--shots``, or this task's default when unset."""
        return self.default_shots if shots is None else shots


def nonnegative_shots(shots: int) -> int:
    """The ``--shots`` check of a task that draws exemplars from a large pool (GSM8K train)."""
    if shots < 0:
        raise ConfigError("--shots must be 0 or more")
    return shots
