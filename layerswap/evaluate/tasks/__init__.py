"""The evaluation-task registry: one module per task, each defining ``TASK = TaskSpec(...)``.

``TASKS`` maps names to specs in listing order; ``get_task(name)`` raises a ConfigError naming the
valid tasks; ``higher_is_better(metric)`` answers for any metric a task reports.
"""

from layerswap.evaluate.tasks.registry import TASKS, get_task, higher_is_better, register
from layerswap.evaluate.tasks.spec import EvalRequest, TaskSpec, nonnegative_shots

__all__ = ["TASKS", "EvalRequest", "TaskSpec", "get_task", "higher_is_better", "nonnegative_shots", "register"]
