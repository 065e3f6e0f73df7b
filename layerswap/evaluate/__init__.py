"""Evaluation: MGSM (lm-eval's direct and native CoT formats) in 11 languages, GSM8K, FLORES-200
bits per byte, SIB-200, a log-likelihood proxy for sweeps, and user data; batched and greedy.

``layerswap.evaluate(model, tasks, langs, ...)`` works as a function (the package is callable).
"""

from __future__ import annotations

import sys
import types

from layerswap.evaluate.api import (
    TASKS,
    EvalResult,
    evaluate,
    evaluate_custom,
    evaluate_flores,
    evaluate_gsm8k,
    evaluate_mgsm,
    evaluate_proxy,
    evaluate_sib200,
    format_summary,
    load_custom,
    save_result,
)
from layerswap.evaluate.mgsm import FORMATS, MGSM_LANGUAGES, load_examples, load_exemplars, make_task
from layerswap.evaluate.runner import LoadedModel, as_loaded, generate, load_model
from layerswap.evaluate.tasks import Example, GenerationTask

__all__ = [
    "FORMATS",
    "MGSM_LANGUAGES",
    "TASKS",
    "EvalResult",
    "Example",
    "GenerationTask",
    "LoadedModel",
    "as_loaded",
    "evaluate",
    "evaluate_custom",
    "evaluate_flores",
    "evaluate_gsm8k",
    "evaluate_mgsm",
    "evaluate_proxy",
    "evaluate_sib200",
    "format_summary",
    "generate",
    "load_custom",
    "load_examples",
    "load_exemplars",
    "load_model",
    "make_task",
    "save_result",
]


class _CallableModule(types.ModuleType):
    """``layerswap.evaluate(...)`` calls :func:`evaluate` although ``layerswap.evaluate`` is a package."""

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
