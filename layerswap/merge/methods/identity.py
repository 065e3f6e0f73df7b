"""The sweep's single-model baselines: the base or one expert alone (``identity`` candidates).

Not a merge method: an identity candidate is evaluated as a revert that keeps every layer of one
expert (or none, for the base), so it runs through the same in-memory merge as every candidate.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from layerswap.merge.methods._registry import BaselineCandidate, BaselineContext, baseline

SOURCES = ("base", "math", "lang")


def _identity(source: str, context: BaselineContext) -> BaselineCandidate:
    return source, "identity", {"source": source}


for _rank, _source in enumerate(SOURCES):
    baseline(_source, rank=_rank)(partial(_identity, _source))


def identity_merge(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """The merge config (method, params, non_layer) of an identity candidate's ``params``."""
    source = params["source"]
    if source == "base":
        return {"method": "revert", "params": {"keep": {"math": []}}, "non_layer": "base"}
    return {"method": "revert", "params": {"keep": {source: list(range(num_layers))}}, "non_layer": source}
