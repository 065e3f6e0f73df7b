"""The one swap-geometry rule, shared by the merge, the sweep and the analysis.

A layer swap with ``bottom`` b, ``top`` u and ``transition`` t on an n-layer model gives the outer
(language) expert layers ``[0, b)`` and ``[n - u, n)``, blends t layers inside each boundary that
exists (a side with no outer layers has no transition), and leaves the rest to the middle (math)
expert. It is valid when at least one layer stays purely the middle expert's: a "swap" with no
middle left is the outer expert with blends, not a transfer. The analysis asks for more middle
(``min_middle`` layers between the two outer blocks) when it recommends boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass

from layerswap.errors import ConfigError


@dataclass(frozen=True)
class SwapGeometry:
    bottom: int
    top: int
    transition: int = 0

    @property
    def sides(self) -> int:
        """How many boundaries carry transition layers (0, 1 or 2)."""
        return (self.bottom > 0) + (self.top > 0)

    def between(self, n: int) -> int:
        """Layers between the two outer blocks (transitions and pure middle)."""
        return n - self.bottom - self.top

    def pure_middle(self, n: int) -> int:
        """Layers left purely to the middle expert."""
        return self.between(n) - self.sides * self.transition

    def fits(self, n: int, min_middle: int = 1) -> bool:
        """At least one pure middle layer and ``min_middle`` layers between the outer blocks."""
        return min(self.bottom, self.top, self.transition) >= 0 and self.pure_middle(n) >= 1 and self.between(n) >= min_middle

    def check(self, n: int) -> None:
        """Raise a one-line :class:`ConfigError` unless the swap leaves a middle layer."""
        if not self.fits(n):
            used = n - self.pure_middle(n)
            raise ConfigError(
                f"swap bottom={self.bottom} top={self.top} transition={self.transition} uses {used} of the {n} layers "
                "and leaves no middle layer to the math expert: lower bottom, top or transition"
            )

    def outer_layers(self, n: int) -> list[int]:
        return list(range(self.bottom)) + list(range(n - self.top, n))

    def transition_layers(self, n: int) -> list[int]:
        layers: list[int] = []
        if self.bottom > 0:
            layers += list(range(self.bottom, self.bottom + self.transition))
        if self.top > 0:
            layers += list(range(n - self.top - self.transition, n - self.top))
        return layers

    def transition_step(self, n: int, layer: int) -> int:
        """Distance 1..t of a transition layer from its outer block; 0 for any other layer."""
        if self.bottom > 0 and self.bottom <= layer < self.bottom + self.transition:
            return layer - self.bottom + 1
        if self.top > 0 and n - self.top - self.transition <= layer < n - self.top:
            return n - self.top - layer
        return 0
