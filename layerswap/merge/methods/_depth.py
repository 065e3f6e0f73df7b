"""Weights that follow depth: LiNeS's linear scale of a task vector, the graded swap's smooth cut.

Both are functions of the layer index alone, evaluated when the plan is built, so every layer's
operation carries its own number and the formulas stay per tensor. Nothing here imports torch.
"""

from __future__ import annotations

import math

from layerswap.config import StrictModel
from layerswap.errors import ConfigError


class LinesProfile(StrictModel):
    """LiNeS (Wang et al., ICLR 2025): layer ``l`` of ``L`` scales its task vector by
    ``alpha + beta * l / (L - 1)``: shallow layers keep little of the update, deep layers all of it."""

    alpha: float
    beta: float

    def check(self) -> None:
        """The scale is linear in depth, so its two ends bound it: neither may be negative."""
        for where, value in (("layer 0", self.alpha), ("the last layer", self.alpha + self.beta)):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(
                    f"params.lines scales {where} by {value:g} (alpha + beta * l/(L-1)): a negative or non-finite "
                    "scale flips the update; choose alpha >= 0 and alpha + beta >= 0"
                )

    def scale(self, layer: int, num_layers: int) -> float:
        return self.alpha + self.beta * (layer / (num_layers - 1) if num_layers > 1 else 0.0)


def ramp(x: float, width: float) -> float:
    """A raised-cosine step from 0 (``x <= -width/2``) to 1 (``x >= width/2``); a hard step for width 0."""
    if x <= -width / 2:
        return 0.0
    if x >= width / 2:
        return 1.0
    return 0.5 * (1.0 - math.cos(math.pi * (x + width / 2) / width))


def graded_outer_weight(layer: int, num_layers: int, bottom: int, top: int, width: float) -> float:
    """The outer (language) expert's weight at ``layer``: 1 in the bottom ``bottom`` and top ``top``
    layers far from the cuts, 0 in the middle far from them, a raised cosine ``width`` layers wide
    centred on each cut (the half-integer positions ``bottom - 0.5`` and ``num_layers - top - 0.5``)."""
    low = ramp((bottom - 0.5) - layer, width) if bottom > 0 else 0.0
    high = ramp(layer - (num_layers - top - 0.5), width) if top > 0 else 0.0
    return min(1.0, low + high)


def gradient_at(value: float | list[float], x: float) -> float:
    """A value that may be a gradient over depth, at relative depth ``x`` in [0, 1] (layer ``i`` of
    ``N`` sits at ``i/(N-1)``): a list's points are spread evenly over [0, 1] and linearly
    interpolated, exactly as mergekit reads a parameter gradient (so the two tools agree to the bit)."""
    if not isinstance(value, list):
        return float(value)
    scaled = x * (len(value) - 1)
    i0 = int(scaled)
    i1 = min(len(value) - 1, i0 + 1)
    frac = scaled - i0
    return float((1 - frac) * value[i0] + frac * value[i1])


def layer_positions(num_layers: int) -> list[float]:
    """Each layer's relative depth as mergekit computes it (a single layer sits at 1)."""
    return [i / (num_layers - 1) if num_layers > 1 else 1.0 for i in range(num_layers)]
