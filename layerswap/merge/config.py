"""The merge config: one pydantic schema for every method, loadable from YAML.

The top level names the base, the experts (label -> path) and the method; ``params`` holds the
method's own parameters and is validated against that method's schema, so an unknown key is
reported with the list of valid ones. Labels are free, but ``layer_swap`` defaults to the labels
``math`` (middle layers) and ``lang`` (bottom/top layers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from layerswap.config import StrictModel, load_config, validate_config
from layerswap.errors import ConfigError

METHODS: tuple[str, ...] = ("layer_swap", "revert", "linear", "task_arithmetic", "ties", "dare_linear", "dare_ties")
#: Methods that only pick each tensor from one source (no arithmetic) unless transitions/overlaps ask for it.
SELECTION_METHODS: tuple[str, ...] = ("layer_swap", "revert")
#: Methods that combine task vectors (expert - base) and so need the base.
TASK_VECTOR_METHODS: tuple[str, ...] = ("task_arithmetic", "ties", "dare_linear", "dare_ties")
RESERVED_LABELS = ("base", "average", "merge")


class LayerSwapParams(StrictModel):
    """Middle layers from ``middle``; bottom ``bottom`` and top ``top`` layers from ``outer``;
    ``transition`` blended layers on each inner boundary."""

    bottom: int = Field(ge=0)
    top: int = Field(ge=0)
    transition: int = Field(0, ge=0)
    transition_weights: Literal["linear", "average"] = "linear"
    middle: str = "math"
    outer: str = "lang"


class RevertParams(StrictModel):
    """Each expert keeps its update only in ``keep[label]`` layers (``"0-4,16-17"`` or a list)."""

    keep: dict[str, str | list[int]]


class _Weighted(StrictModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())
    weights: dict[str, float] | None = None


class LinearParams(_Weighted):
    """``sum_i w_i * theta_i``; weights must sum to 1 unless ``normalize`` divides by their sum."""

    normalize: bool = False


class TaskArithmeticParams(_Weighted):
    """``base + lambda * sum_i w_i * delta_i``."""

    lambda_: float = Field(1.0, alias="lambda")
    normalize: bool = False


class TiesParams(_Weighted):
    """Trim each delta to ``density`` by magnitude, elect the sign by total mass, disjoint mean."""

    density: float | dict[str, float] = 0.2
    lambda_: float = Field(1.0, alias="lambda")
    normalize: bool = True


class DareParams(_Weighted):
    """Drop each delta entry with probability ``1 - density`` and rescale the survivors."""

    density: float | dict[str, float] = 0.5
    lambda_: float = Field(1.0, alias="lambda")
    normalize: bool = False
    rescale: Literal["density", "l1", "none"] = "density"
    seed: int = 0


PARAM_MODELS: dict[str, type[StrictModel]] = {
    "layer_swap": LayerSwapParams,
    "revert": RevertParams,
    "linear": LinearParams,
    "task_arithmetic": TaskArithmeticParams,
    "ties": TiesParams,
    "dare_linear": DareParams,
    "dare_ties": DareParams,
}


class MergeConfig(StrictModel):
    """A merge: base, experts, method and its params, non-layer policy, output options."""

    method: str
    experts: dict[str, str]
    base: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    non_layer: str | None = None
    dtype: str | None = None
    donor: str | None = None
    output: Literal["auto", "adapter", "full"] = "auto"
    max_shard_size: int | str = "5GB"

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"unknown method {value!r}; valid methods: {', '.join(METHODS)}")
        return value

    @field_validator("experts")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("name at least one expert, e.g. experts: {math: ./math, lang: ./lang}")
        bad = [k for k in value if k in RESERVED_LABELS]
        if bad:
            raise ValueError(f"expert label {bad[0]!r} is reserved; use another name")
        return value

    # -- resolved views ---------------------------------------------------------------------
    def method_params(self) -> Any:
        """The validated parameters of the method (a ConfigError lists the valid keys)."""
        model = PARAM_MODELS[self.method]
        valid = [f.alias or name for name, f in model.model_fields.items()]
        unknown = [k for k in self.params if k not in valid]
        if unknown:
            raise ConfigError(f"unknown parameter {unknown[0]!r} for method {self.method}; valid parameters: {', '.join(valid)}")
        params = validate_config(model, self.params, source=f"params of method {self.method}")
        self._check(params)
        return params

    def non_layer_policy(self) -> str:
        if self.non_layer is not None:
            return self.non_layer
        if self.method == "layer_swap":
            return self.params.get("middle", "math")
        if self.method == "revert":
            return "base"
        return "merge"

    def _check(self, p: Any) -> None:
        labels = list(self.experts)
        policy = self.non_layer_policy()
        valid_policies = labels + ["base", "average"] + ([] if self.method in SELECTION_METHODS else ["merge"])
        if policy not in valid_policies:
            raise ConfigError(f"non_layer {policy!r} is not valid for {self.method}; use one of: {', '.join(valid_policies)}")
        if (policy == "base" or self.method in TASK_VECTOR_METHODS or self.method == "revert") and self.base is None:
            raise ConfigError(f"method {self.method} with non_layer {policy} needs a base: add base: PATH to the config")
        if isinstance(p, LayerSwapParams):
            for role, label in (("middle", p.middle), ("outer", p.outer)):
                if label not in self.experts:
                    raise ConfigError(
                        f"layer_swap {role} expert {label!r} is not among the experts ({', '.join(labels)}): "
                        f"set params.{role} to one of them"
                    )
            if p.middle == p.outer:
                raise ConfigError("layer_swap needs two different experts for params.middle and params.outer")
        elif isinstance(p, RevertParams):
            unknown = [k for k in p.keep if k not in self.experts]
            if unknown:
                raise ConfigError(f"revert keeps layers of {unknown[0]!r}, which is not an expert; experts: {', '.join(labels)}")
            if not p.keep:
                raise ConfigError("revert needs params.keep: {EXPERT: LAYERS}, e.g. keep: {lang: '0-4,16-17'}")
        elif isinstance(p, _Weighted):
            if p.weights is not None:
                unknown = [k for k in p.weights if k not in self.experts]
                missing = [k for k in self.experts if k not in p.weights]
                if unknown or missing:
                    raise ConfigError(
                        f"params.weights must give one weight per expert ({', '.join(labels)}); "
                        + (f"{unknown[0]!r} is not an expert" if unknown else f"{missing[0]!r} has none")
                    )
            weights = self.weights(p)
            total = sum(weights.values())
            if not all(math.isfinite(w) for w in weights.values()):
                raise ConfigError("params.weights must be finite numbers")
            if isinstance(p, LinearParams) and not p.normalize and abs(total - 1.0) > 1e-6:
                raise ConfigError(
                    f"linear weights sum to {total:g}, not 1: fix them or set params.normalize: true to divide by their sum"
                )
            if getattr(p, "normalize", False) and abs(total) < 1e-8:
                raise ConfigError("params.weights sum to 0, so normalize cannot divide by them: change the weights")
            if isinstance(p, TiesParams) or (isinstance(p, DareParams) and self.method == "dare_ties"):
                if p.normalize and any(w <= 0 for w in weights.values()):
                    raise ConfigError(f"{self.method} with normalize needs positive weights: the disjoint mean divides by them")
            if isinstance(p, (TiesParams, DareParams)):
                for label, d in self.densities(p).items():
                    if not 0.0 < d <= 1.0:
                        raise ConfigError(f"density {d:g} of {label!r} is out of range: use a value in (0, 1]")

    def weights(self, p: Any) -> dict[str, float]:
        """Per-expert weights: given, or equal (linear: 1/n) / all 1 (task vectors)."""
        if p.weights is not None:
            return {k: float(p.weights[k]) for k in self.experts}
        w = 1.0 / len(self.experts) if self.method == "linear" else 1.0
        return {k: w for k in self.experts}

    def densities(self, p: Any) -> dict[str, float]:
        if isinstance(p.density, Mapping):
            missing = [k for k in self.experts if k not in p.density]
            if missing:
                raise ConfigError(f"params.density gives no density for expert {missing[0]!r}")
            return {k: float(p.density[k]) for k in self.experts}
        return {k: float(p.density) for k in self.experts}

    def validate_all(self) -> MergeConfig:
        self.method_params()
        return self


def load_merge_config(path: str, overrides: Mapping[str, Any] | None = None) -> MergeConfig:
    """Read and fully validate a merge YAML (method params included)."""
    return load_config(MergeConfig, path, overrides).validate_all()


def merge_config(data: Mapping[str, Any]) -> MergeConfig:
    """Validate a merge config given as a dict (the sweep builds these in code)."""
    return validate_config(MergeConfig, data, source="merge config").validate_all()


def swap_config(
    *,
    math: str,
    lang: str,
    bottom: int,
    top: int,
    transition: int = 0,
    base: str | None = None,
    non_layer: str | None = None,
    dtype: str | None = None,
) -> MergeConfig:
    """The config of the ``swap`` shortcut."""
    data: dict[str, Any] = {
        "method": "layer_swap",
        "experts": {"math": str(math), "lang": str(lang)},
        "base": str(base) if base is not None else None,
        "params": {"bottom": bottom, "top": top, "transition": transition},
        "non_layer": non_layer,
        "dtype": dtype,
    }
    return merge_config(data)
