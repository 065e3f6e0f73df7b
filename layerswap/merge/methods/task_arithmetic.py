"""Task arithmetic: ``base + lambda * sum_i w_i * (theta_i - theta_base)``."""

from __future__ import annotations

from layerswap.merge.methods._registry import BaselineCandidate, BaselineContext, baseline, register
from layerswap.merge.methods._weighted import TaskVectorMethod, TaskVectorParams


class TaskArithmeticParams(TaskVectorParams):
    """``base + lambda * sum_i w_i * delta_i``."""


@register
class TaskArithmetic(TaskVectorMethod):
    name = "task_arithmetic"
    summary = "base + lambda * the weighted sum of the experts' deltas"
    params_model = TaskArithmeticParams
    rank = 40


@baseline("task_arithmetic", rank=40)
def _task_arithmetic_baseline(context: BaselineContext) -> BaselineCandidate:
    return "task-arithmetic", "task_arithmetic", {"weights": {"math": 1.0, "lang": 1.0}, "lambda": 1.0}
