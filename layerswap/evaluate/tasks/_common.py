"""What the task modules share, so that each keeps only what is its own: the runner that maps an
:class:`~layerswap.evaluate.tasks.spec.EvalRequest` onto a task's ``evaluate_*`` function, the
per-language loop, timing, and the local-file-or-Hub data loading.

Not a task (its name starts with ``_``, so the registry passes it over), and light like the task
modules' top level: what pulls in pandas or torch is imported inside the functions that run.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from layerswap.errors import InputPathError
from layerswap.evaluate.tasks.spec import EvalRequest, Runner
from layerswap.io import language, require_fields, resolve_data_dir

if TYPE_CHECKING:
    from layerswap.evaluate.result import EvalResult, ModelLike
    from layerswap.evaluate.runner import LoadedModel
    from layerswap.io import Language

T = TypeVar("T")
_REQUEST_FIELDS = tuple(f.name for f in fields(EvalRequest))


def request_runner(evaluate: Callable[..., EvalResult], **computed: Callable[[EvalRequest], Any]) -> Runner:
    """The task's runner: ``evaluate(lm, ...)`` with every request field that ``evaluate`` has a
    parameter of the same name for, plus ``computed`` ones (parameter name -> value from the request)."""
    params = inspect.signature(evaluate).parameters
    passed = [name for name in _REQUEST_FIELDS if name in params and name not in computed]

    def run(lm: LoadedModel, req: EvalRequest) -> EvalResult:
        return evaluate(lm, **{name: getattr(req, name) for name in passed}, **{k: f(req) for k, f in computed.items()})

    run.__name__ = run.__qualname__ = f"run_{evaluate.__name__}"
    return run


def per_language(model: ModelLike, tokenizer: Any, items: Iterable[T], one: Callable[[LoadedModel, T], EvalResult]) -> EvalResult:
    """Load the model once, run ``one(lm, item)`` for each language (or language entry), combined."""
    from layerswap.evaluate.result import EvalResult, as_lm

    lm = as_lm(model, tokenizer)
    result = EvalResult()
    for item in items:
        result.extend(one(lm, item))
    return result


def per_data_language(
    model: ModelLike,
    tokenizer: Any,
    langs: Sequence[str],
    data_dir: str | Path | None,
    one: Callable[[LoadedModel, Language, Path | None], EvalResult],
) -> EvalResult:
    """:func:`per_language` for a task that reads each language's own data files (FLORES, SIB-200):
    ``one(lm, language entry, local data root or None)``; the languages and the data folder are
    resolved before the model loads."""
    codes = [language(lang) for lang in langs]
    root = resolve_data_dir(data_dir)
    return per_language(model, tokenizer, codes, lambda lm, lg: one(lm, lg, root))


def timed(work: Callable[[], T]) -> tuple[T, float]:
    """``work()`` and the seconds it took, rounded as the summary shows them."""
    t0 = time.perf_counter()
    value = work()
    return value, round(time.perf_counter() - t0, 2)


def one_row(records: list[dict[str, Any]], row: dict[str, Any]) -> EvalResult:
    """One language's records and its summary row."""
    from layerswap.evaluate.result import EvalResult

    return EvalResult.of(records, [row])


def local_rows(rows: Callable[[Path], Iterator[tuple[int, dict[str, Any]]]], path: Path, required: Sequence[str], take: Sequence[str]) -> list[tuple]:
    """The ``take`` fields of every record of a local file read by ``rows`` (``iter_jsonl``,
    ``iter_tsv``); a record without one of the ``required`` fields names its line."""
    out = []
    for lineno, rec in rows(path):
        require_fields(rec, list(required), path=path, lineno=lineno)
        out.append(tuple(rec[f] for f in take))
    return out


def hub_rows(what: str, row: Callable[[dict[str, Any]], T], *dataset: str, split: str) -> list[T]:
    """``row(d)`` for each record of a Hub dataset split; any failure says to pass ``--data-dir``."""
    try:
        import datasets

        return [row(d) for d in datasets.load_dataset(*dataset, split=split)]
    except Exception as exc:
        raise InputPathError(f"no local data folder and {what} could not be loaded ({exc}): pass --data-dir") from exc
