"""The evaluation tasks by name: every module of this package that defines ``TASK`` is one.

Adding a task is one file here (its :class:`~layerswap.evaluate.tasks.spec.TaskSpec` and runner)
plus its tests: ``evaluate``, the CLI help, the sweep and the report read this registry, and the
fine-tuning data rules are checked against each task's ``training_refused``.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from layerswap.errors import ConfigError
from layerswap.evaluate.tasks.spec import TaskSpec

#: Listed first, in this order (the order of the help and of every "valid tasks are" message);
#: any other task module follows by name.
LISTED_FIRST = ("mgsm", "gsm8k", "flores", "sib200", "proxy", "custom")
_NOT_TASKS = frozenset({"registry", "spec", "lm_eval_bridge"})  # the bridge builds a spec per lm_eval:<name>


def _discover() -> dict[str, TaskSpec]:
    names = [m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name not in _NOT_TASKS and not m.name.startswith("_")]
    names.sort(key=lambda n: (LISTED_FIRST.index(n) if n in LISTED_FIRST else len(LISTED_FIRST), n))
    tasks: dict[str, TaskSpec] = {}
    for name in names:
        module = importlib.import_module(f"{__package__}.{name}")
        spec = getattr(module, "TASK", None)
        if not isinstance(spec, TaskSpec):
            raise TypeError(f"{module.__name__} defines no TASK = TaskSpec(...): every module of {__package__} is a task")
        if spec.name in tasks:
            raise TypeError(f"{module.__name__}: task {spec.name!r} is defined twice")
        tasks[spec.name] = spec
    return tasks


#: Every evaluation task by name, in listing order.
TASKS: dict[str, TaskSpec] = _discover()


def register(spec: TaskSpec) -> TaskSpec:
    """Add a task defined outside this package (a plugin, a test); names are unique."""
    if spec.name in TASKS:
        raise ConfigError(f"task {spec.name!r} is registered already")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The task called ``name``; an unknown name lists the valid ones. ``lm_eval:<task or YAML path>`` is
    any lm-evaluation-harness task (:mod:`~layerswap.evaluate.tasks.lm_eval_bridge`), checked and added
    to :data:`TASKS` on first use."""
    try:
        return TASKS[name]
    except KeyError:
        if isinstance(name, str) and name.startswith("lm_eval:"):
            from layerswap.evaluate.tasks.lm_eval_bridge import spec_for

            return TASKS.setdefault(name, spec_for(name))
        raise ConfigError(f"unknown task {name!r}: valid tasks are {', '.join(TASKS)}, or lm_eval:<lm-eval task or YAML path>") from None


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` is better, from the task that reports it (headline or extra)."""
    for spec in TASKS.values():
        if metric in spec.metrics:
            return spec.higher_is_better
    known = sorted({m for spec in TASKS.values() for m in spec.metrics})
    raise ConfigError(f"unknown metric {metric!r}: no evaluation task reports it (known: {', '.join(known)})")
