"""Evaluation: MGSM (lm-eval's direct and native CoT formats) in 11 languages, GSM8K, FLORES-200
bits per byte, SIB-200, a log-likelihood proxy for sweeps, and user data; batched and greedy.
Every summary row carries ``n`` and the ``stderr``, ``ci_low``, ``ci_high`` of its headline metric;
``example_scores(records, task)`` gives the per-example scores behind it (for paired comparisons).

``layerswap.evaluate(model, tasks, langs, ...)`` works as a function (the package is callable).
Names load on first use: the CLI reads the task registry (:mod:`layerswap.evaluate.tasks`) at
start-up and must not pay for torch or pandas there.
"""

from layerswap.lazy import lazy_exports

_HOMES = {
    "layerswap.evaluate.api": ("evaluate",),
    "layerswap.evaluate.result": ("EvalResult", "format_summary", "save_result"),
    "layerswap.evaluate.scores": ("example_scores", "fidelity_scores", "fill_uncertainty"),
    "layerswap.evaluate.tasks": ("TASKS", "TaskSpec", "get_task", "higher_is_better"),
    "layerswap.evaluate.tasks.custom": ("evaluate_custom", "load_custom"),
    "layerswap.evaluate.tasks.flores": ("evaluate_flores",),
    "layerswap.evaluate.tasks.gsm8k": ("evaluate_gsm8k",),
    "layerswap.evaluate.tasks.mgsm": ("evaluate_mgsm",),
    "layerswap.evaluate.tasks.proxy": ("evaluate_proxy",),
    "layerswap.evaluate.tasks.sib200": ("evaluate_sib200",),
    "layerswap.evaluate.mgsm": ("FORMATS", "MGSM_LANGUAGES", "load_examples", "load_exemplars", "make_task"),
    "layerswap.evaluate.runner": ("LoadedModel", "as_loaded", "generate", "load_model"),
    "layerswap.evaluate.generation": ("Example", "GenerationTask"),
}
__all__ = lazy_exports(__name__, {name: module for module, names in _HOMES.items() for name in names}, call="evaluate")
