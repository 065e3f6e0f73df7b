"""The sweep's candidates: each lens's ranked swaps (one candidate per geometry), a grid of swaps, and the baselines.

Baselines come from the merge-method registry (``layerswap.merge.methods``). Each candidate is
turned into a merge config here too, so the loop only merges and evaluates.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class LensSource:
    """One analysis the sweep takes swaps from: a lens's ``boundaries.yaml`` and what it says.

    ``name`` is the lens (the file's ``kind``: ``deltas``, ``importance``, ``cka`` ...); ``why`` is set,
    and ``data`` empty, for a lens of a ``--lens`` folder that has no recommendation (it was skipped)."""

    name: str
    path: Path
    data: dict[str, Any]
    why: str | None = None

    def ranked(self) -> list[tuple[tuple[int, int, int], float | None]]:
        """The file's ranked ``candidates`` as ``((bottom, top, transition), score)``."""
        entries = self.data.get("candidates")
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"{self.path} has no 'candidates' list: pass the boundaries.yaml written by layerswap analyze")
        out = []
        for entry in entries:
            try:
                geometry = (int(entry["bottom"]), int(entry["top"]), int(entry.get("transition", 0)))
                out.append((geometry, None if entry.get("score") is None else float(entry["score"])))
            except (KeyError, TypeError, ValueError):
                raise ConfigError(f"{self.path}: every candidate needs integer bottom, top (and transition) and a score") from None
        return out


def _read_source(path: Path, fallback: str) -> LensSource:
    data = read_data_yaml(path) or {}  # not YAML, a folder or a FIFO: one line, never a wait
    if not isinstance(data, dict):
        raise ConfigError(f"{path} has no 'candidates' list: pass the boundaries.yaml written by layerswap analyze")
    return LensSource(str(data.get("kind") or fallback), path, data)


def _skipped_lenses(folder: Path, found: set[str]) -> list[LensSource]:
    """The lenses of a ``--lens`` folder without a recommendation, with the reason its ``lenses.csv`` gives."""
    table = folder / "lenses.csv"
    if not table.is_file():
        return []
    import pandas as pd

    rows = pd.read_csv(table)
    return [
        LensSource(str(r["lens"]), folder / str(r["lens"]), {}, why=str(r["reason"]))
        for _, r in rows.iterrows()
        if str(r["lens"]) not in found
    ]


def lens_sources(paths: list[str]) -> list[LensSource]:
    """Every analysis named by ``candidates.boundaries``, in order: a ``boundaries.yaml``, a folder that
    holds one (``layerswap analyze`` or ``layerswap importance``), or a ``--lens`` folder (one per lens,
    in its ``lenses.csv`` order). A lens named twice is told apart by its folder (``deltas@run2``)."""
    out: list[LensSource] = []
    for entry in paths:
        path = Path(entry).expanduser()
        if not path.exists():
            raise InputPathError(f"boundaries file {path} does not exist: run layerswap analyze first or drop candidates.boundaries")
        if not path.is_dir():
            out.append(_read_source(path, "analysis"))
        elif (path / "boundaries.yaml").exists():
            out.append(_read_source(path / "boundaries.yaml", path.name))
        else:
            files = sorted(path.glob("*/boundaries.yaml"))
            if not files and not (path / "lenses.csv").is_file():
                raise InputPathError(
                    f"candidates.boundaries {path} is a folder without boundaries.yaml: pass a boundaries.yaml or a folder layerswap analyze wrote"
                )
            found = [_read_source(f, f.parent.name) for f in files]
            order = {name: i for i, name in enumerate(_lens_order(path))}
            found.sort(key=lambda s: order.get(s.name, len(order)))
            out += found + _skipped_lenses(path, {s.name for s in found})
    seen: dict[str, int] = {}
    for i, source in enumerate(out):
        seen[source.name] = seen.get(source.name, 0) + 1
        if seen[source.name] > 1:
            out[i] = replace(source, name=f"{source.name}@{source.path.parent.name}")
    return out


def _lens_order(folder: Path) -> list[str]:
    table = folder / "lenses.csv"
    if not table.is_file():
        return []
    import pandas as pd

    return [str(n) for n in pd.read_csv(table)["lens"]]


def lens_candidates(paths: list[str], top_n: int) -> list[Candidate]:
    """The first ``top_n`` swaps each lens proposes, each geometry once (in the order first proposed),
    naming every lens that proposed it; the score is the first source's for that geometry (so the
    score of every candidate is on one lens's scale), None where that source does not rank it."""
    sources = [s for s in lens_sources(paths) if s.why is None]
    if not sources:
        return []
    first = {g: score for g, score in sources[0].ranked()}
    proposed: dict[tuple[int, int, int], list[str]] = {}
    for source in sources:
        for geometry, _ in source.ranked()[:top_n]:
            proposed.setdefault(geometry, []).append(source.name)
    return [
        swap_candidate(*g, score=first.get(g), source="analysis").model_copy(update={"lenses": lenses})
        for g, lenses in proposed.items()
    ]


def baseline_candidates(spec: CandidatesSpec, num_layers: int, middle: tuple[int, int] | None) -> list[Candidate]:
    """The baselines named in ``spec``, as the merge-method registry builds them.

    ``middle`` (the best swap's math block) is what ``revert`` keeps from the math expert.
    """
    density = {"ties": spec.ties_density, "dare_ties": spec.dare_density, "dare_linear": spec.dare_density}
    found = sweep_baselines(spec.baselines, num_layers=num_layers, middle=middle, density=density, seed=spec.seed, data=spec.baseline_data)
    return [Candidate(name=name, method=method, params=params, source="baseline") for name, method, params in found]


def _check_swap(cand: Candidate, num_layers: int) -> None:
    """The one swap-geometry rule: a swap must leave at least one middle layer to the math expert."""
    SwapGeometry(cand.bottom or 0, cand.top or 0, cand.transition or 0).check(num_layers)


def _swaps(spec: CandidatesSpec, num_layers: int) -> list[Candidate]:
    """Analysis swaps (ranked), then the grid's; a grid swap the analysis scored keeps its score."""
    found: list[Candidate] = []
    if spec.boundaries:
        found += lens_candidates(spec.boundaries, spec.top_n)
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
