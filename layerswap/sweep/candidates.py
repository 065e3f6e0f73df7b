"""The sweep's candidates: an analysis's ranked swaps, a grid of swaps, and the baselines.

Baselines come from the merge-method registry (``layerswap.merge.methods``). Each candidate is
turned into a merge config here too, so the loop only merges and evaluates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layerswap.errors import ConfigError, InputPathError
from layerswap.io import read_data_yaml
from layerswap.io.swap_geometry import SwapGeometry
from layerswap.merge.methods import sweep_baselines
from layerswap.sweep.config import Candidate, CandidatesSpec, SweepConfig
from layerswap.sweep.selection import SWAP_METHOD


def swap_candidate(bottom: int, top: int, transition: int = 0, *, score: float | None = None, source: str = "grid") -> Candidate:
    """A layer swap taking ``bottom`` and ``top`` layers from the language expert."""
    return Candidate(
        name=f"swap-b{bottom}-u{top}" + (f"-t{transition}" if transition else ""),
        method=SWAP_METHOD,
        params={"bottom": bottom, "top": top, "transition": transition},
        bottom=bottom,
        top=top,
        transition=transition,
        analysis_score=score,
        source=source,
    )


def read_boundary_candidates(path: str | Path, top_n: int) -> list[Candidate]:
    """The ranked ``candidates`` of an analysis ``boundaries.yaml``."""
    path = Path(path)
    if not path.exists():
        raise InputPathError(f"boundaries file {path} does not exist: run layerswap analyze first or drop candidates.boundaries")
    data = read_data_yaml(path) or {}  # not YAML, a folder or a FIFO: one line, never a wait
    entries = data.get("candidates") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path} has no 'candidates' list: pass the boundaries.yaml written by layerswap analyze")
    out = []
    for entry in entries[:top_n]:
        try:
            out.append(swap_candidate(int(entry["bottom"]), int(entry["top"]), int(entry.get("transition", 0)), score=None if entry.get("score") is None else float(entry["score"]), source="analysis"))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{path}: every candidate needs integer bottom, top (and transition) and a score") from None
    return out


def baseline_candidates(spec: CandidatesSpec, num_layers: int, middle: tuple[int, int] | None) -> list[Candidate]:
    """The baselines named in ``spec``, as the merge-method registry builds them.

    ``middle`` (the best swap's math block) is what ``revert`` keeps from the math expert.
    """
    density = {"ties": spec.ties_density, "dare_ties": spec.dare_density, "dare_linear": spec.dare_density}
    found = sweep_baselines(spec.baselines, num_layers=num_layers, middle=middle, density=density, seed=spec.seed)
    return [Candidate(name=name, method=method, params=params, source="baseline") for name, method, params in found]


def _check_swap(cand: Candidate, num_layers: int) -> None:
    """The one swap-geometry rule: a swap must leave at least one middle layer to the math expert."""
    SwapGeometry(cand.bottom or 0, cand.top or 0, cand.transition or 0).check(num_layers)


def _swaps(spec: CandidatesSpec, num_layers: int) -> list[Candidate]:
    """Analysis swaps (ranked), then the grid's; a grid swap the analysis scored keeps its score."""
    found: list[Candidate] = []
    if spec.boundaries:
        found += read_boundary_candidates(spec.boundaries, spec.top_n)
    if spec.grid:
        found += [swap_candidate(b, u, t) for b in spec.grid.bottom for u in spec.grid.top for t in spec.grid.transition]
    scores = {c.name: c.analysis_score for c in found if c.analysis_score is not None}
    out = []
    for cand in found:
        _check_swap(cand, num_layers)
        if cand.name in scores and cand.analysis_score is None:
            cand = cand.model_copy(update={"analysis_score": scores[cand.name]})
        out.append(cand)
    return out


def build_candidates(config: SweepConfig, num_layers: int) -> list[Candidate]:
    """Analysis candidates first (ranked), then the grid, then baselines; duplicates dropped.

    The first swap sets the revert baseline's middle layers, so revert is compared on the same split.
    """
    seen: dict[str, Candidate] = {}
    for cand in _swaps(config.candidates, num_layers):
        seen.setdefault(cand.name, cand)
    best_swap = next(iter(seen.values()), None)
    middle = None if best_swap is None else (best_swap.bottom or 0, num_layers - (best_swap.top or 0) - 1)
    for cand in baseline_candidates(config.candidates, num_layers, middle):
        seen.setdefault(cand.name, cand)
    if not seen:
        raise ConfigError("the sweep has no candidates: give candidates.boundaries, candidates.grid or baselines")
    return list(seen.values())


def merge_config_for(candidate: Candidate, config: SweepConfig) -> dict[str, Any] | None:
    """The merge config (a dict for :func:`layerswap.merge.config.merge_config`) of a candidate."""
    if candidate.method == "identity":
        return None
    data: dict[str, Any] = {
        "method": candidate.method,
        "experts": {"math": config.math, "lang": config.lang},
        "base": config.base,
        "params": dict(candidate.params),
    }
    if config.non_layer is not None and candidate.method == SWAP_METHOD:
        data["non_layer"] = config.non_layer
    return data
