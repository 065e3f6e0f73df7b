"""Per-example scores: the table behind every summary row's metric, for storing and pairing.

Every task keeps one record per example, keyed by ``(task, lang, id)``; its :class:`TaskSpec`
says which record field is the example's score (``score_field``: 0/1 ``correct``, a log-likelihood)
or, for a ratio metric such as bits per byte, which two fields are summed above and below the
line (``ratio_fields``). :func:`example_scores` turns records into that table, so that a sweep can
store it and compare candidates paired on the same examples (:mod:`layerswap.stats`); the summary
rows' ``stderr``, ``ci_low`` and ``ci_high`` come from the same numbers (the task's
:meth:`~layerswap.evaluate.tasks.spec.TaskSpec.aggregate`), and :func:`fill_uncertainty` adds them for a task that did not.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from layerswap.evaluate.uncertainty import UNCERTAINTY_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

    from layerswap.evaluate.tasks.spec import TaskSpec


def _spec(task: TaskSpec | str) -> TaskSpec:
    if isinstance(task, str):
        from layerswap.evaluate.tasks import get_task

        return get_task(task)
    return task


def example_scores(records: Iterable[dict[str, Any]] | Any, task: TaskSpec | str) -> pd.DataFrame:
    """One row per example of ``task`` in ``records``: columns ``task, lang, id, score``.

    ``records`` are an :class:`EvalResult`'s records (or the result itself); ``task`` a task name or
    spec. ``score`` is the record's ``score_field`` as a float (``correct`` True -> 1.0); for a task
    with ``ratio_fields`` (FLORES: bits and UTF-8 bytes per sentence) the table also has ``num`` and
    ``den``, and ``score`` is their per-example ratio, while the task's metric is
    ``sum(num) / sum(den)`` per language. Rows keep the records' order; ``(task, lang, id)`` is unique.
    """
    import pandas as pd

    spec = _spec(task)
    records = getattr(records, "records", records)
    rows = []
    for rec in records:
        if rec.get("task") != spec.name:
            continue
        row: dict[str, Any] = {"task": spec.name, "lang": rec["lang"], "id": str(rec["id"])}
        if spec.ratio_fields is not None:
            num, den = (float(rec[f]) for f in spec.ratio_fields)
            row.update(score=num / den if den else float("nan"), num=num, den=den)
        else:
            row["score"] = float(rec[spec.score_field])
        rows.append(row)
    columns = ["task", "lang", "id", "score"] + (["num", "den"] if spec.ratio_fields is not None else [])
    return pd.DataFrame(rows, columns=columns)


def fill_uncertainty(result: Any, task: TaskSpec | str) -> Any:
    """Add ``n``/``stderr``/``ci_low``/``ci_high`` to the rows of ``task`` that lack them, from its records.

    The built-in tasks fill their rows as they build them; this is for a task registered from
    outside (a plugin) whose runner reports only its metric. ``result`` is an :class:`EvalResult`,
    changed in place and returned. Rows whose records lack the task's score fields stay as they are.
    """
    spec = _spec(task)
    summary = result.summary
    if summary.empty or spec.metric not in summary:
        return result
    try:
        scores = example_scores(result.records, spec)
    except KeyError:
        return result
    for col in ("n", *UNCERTAINTY_COLUMNS):
        if col not in summary:
            summary[col] = float("nan")
    for i in summary.index[(summary["task"] == spec.name) & summary["stderr"].isna()]:
        sub = scores[scores["lang"] == summary.at[i, "lang"]]
        if sub.empty:
            continue
        cols = spec.aggregate(sub, lang=str(summary.at[i, "lang"]))
        for col in UNCERTAINTY_COLUMNS:
            summary.at[i, col] = cols[col]
        if summary.at[i, "n"] != summary.at[i, "n"]:  # NaN: the runner did not count
            summary.at[i, "n"] = len(sub)
    rest = [c for c in summary.columns if c not in UNCERTAINTY_COLUMNS]
    at = rest.index(spec.metric) + 1
    result.summary = summary[rest[:at] + list(UNCERTAINTY_COLUMNS) + rest[at:]]
    return result


def fidelity_scores(records: Any, task: Any, metric: str = "lang_fidelity") -> Any:
    """The per-example table of a fidelity ``metric`` of ``task`` (``task, lang, id, score``), as
    :func:`example_scores` gives the headline's: stable ids, for pairing."""
    from dataclasses import replace

    from layerswap.errors import ConfigError
    from layerswap.evaluate.fidelity import FIELDS
    from layerswap.evaluate.tasks import get_task

    if metric not in FIELDS:
        raise ConfigError(f"unknown fidelity metric {metric!r}: valid metrics are {', '.join(FIELDS)}")
    spec = get_task(task) if isinstance(task, str) else task
    return example_scores(records, replace(spec, score_field=FIELDS[metric], ratio_fields=None))


#: Per-example metrics a generative task stores beside its headline (language and chain-of-thought
#: fidelity: :data:`layerswap.evaluate.fidelity.FIELDS`), so a sweep pairs them like the headline.
EXTRA_METRICS = ("lang_fidelity", "cot_fidelity")


def extra_key(task: str, metric: str) -> str:
    """The ``task`` value of an extra metric's rows in a sweep's per-example scores (``mgsm#lang_fidelity``):
    keyed apart from the headline's rows, which every stored-record check and halving block reads alone."""
    return f"{task}#{metric}"


def extra_scores(records: Any, task: Any) -> Any:
    """The per-example tables of every :data:`EXTRA_METRICS` the records of ``task`` carry (``task`` column
    :func:`extra_key`), concatenated; None when they carry none (a log-likelihood task: ``pd.concat`` skips it)."""
    import pandas as pd

    from layerswap.evaluate.fidelity import FIELDS
    from layerswap.evaluate.tasks import get_task

    spec = get_task(task) if isinstance(task, str) else task
    mine = [r for r in getattr(records, "records", records) if r.get("task") == spec.name]
    frames = [
        fidelity_scores(mine, spec, metric).assign(task=extra_key(spec.name, metric))
        for metric in EXTRA_METRICS
        if mine and all(FIELDS[metric] in r for r in mine)
    ]
    return pd.concat(frames, ignore_index=True) if frames else None
