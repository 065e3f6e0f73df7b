"""The merge config: one pydantic schema for every method, loadable from YAML.

The top level names the base, the experts (label -> path) and the method; ``params`` holds the
method's own parameters and is validated against that method's schema (from the method registry,
:mod:`layerswap.merge.methods`), so an unknown key is reported with the list of valid ones. Labels
are free, but ``layer_swap`` defaults to the labels ``math`` (middle layers) and ``lang`` (bottom/top
layers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator

from layerswap.config import StrictModel, check_name, load_config, validate_config
from layerswap.errors import ConfigError
from layerswap.merge.methods import METHODS, MergeMethod, get_method

RESERVED_LABELS = ("base", "average", "merge")


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
        for label in value:
            check_name(label, "expert label", error=ValueError)
        return value

    @field_validator("dtype")
    @classmethod
    def _float_dtype(cls, value: str | None) -> str | None:
        """The output dtype must be a floating point one: an integer or bool cast zeroes the weights."""
        if value is None:
            return value
        from layerswap.io import FLOAT_CODES, parse_dtype_code

        try:
            code = parse_dtype_code(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if code not in FLOAT_CODES:
            raise ValueError(
                f"dtype {value!r} is not a floating point type (casting weights to it would destroy them): use bf16, fp16 or fp32"
            )
        return value

    @field_validator("max_shard_size")
    @classmethod
    def _size(cls, value: int | str) -> int | str:
        from layerswap.io import parse_size

        try:
            parse_size(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    # -- resolved views ---------------------------------------------------------------------
    @property
    def merge_method(self) -> MergeMethod:
        """The registered method this config names."""
        return get_method(self.method)

    def method_params(self) -> Any:
        """The validated parameters of the method (a ConfigError lists the valid keys)."""
        model = self.merge_method.params_model
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
        return self.merge_method.default_non_layer(self.params)

    def _check(self, p: Any) -> None:
        """Rules every method shares (non-layer policy, base), then the method's own."""
        method = self.merge_method
        policy = self.non_layer_policy()
        valid_policies = list(self.experts) + ["base", "average"] + ([] if method.selection else ["merge"])
        if policy not in valid_policies:
            raise ConfigError(f"non_layer {policy!r} is not valid for {self.method}; use one of: {', '.join(valid_policies)}")
        if (policy == "base" or method.needs_base) and self.base is None:
            raise ConfigError(f"method {self.method} with non_layer {policy} needs a base: add base: PATH to the config")
        method.check(self, p)

    def validate_all(self) -> MergeConfig:
        self.method_params()
        return self


def load_merge_config(path: str, overrides: Mapping[str, Any] | None = None, *, document: int | None = None) -> MergeConfig:
    """Read and fully validate a merge YAML (method params included); ``document`` picks one of a
    file of several (``---``), which is refused without it."""
    return load_config(MergeConfig, path, overrides, document=document).validate_all()


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


class SwapOptions(StrictModel):
    """The ``swap`` shortcut's settings (its command-line options are generated from these fields):
    a layer swap of two experts, validated as the merge config :meth:`merge_config` returns."""

    math: str = Field(description="Math expert (model folder or LoRA adapter): the middle layers.")
    lang: str = Field(description="Language expert: the bottom and top layers.")
    bottom: int = Field(description="Number of bottom layers from the language expert.")
    top: int = Field(description="Number of top layers from the language expert.")
    transition: int = Field(0, description="Blended layers on each inner boundary.")
    base: str | None = Field(None, description="Base model (needed for LoRA experts and non_layer=base).")
    non_layer: str | None = Field(None, description="Embeddings/norm/LM head from: math, lang, base or average.")
    dtype: str | None = Field(None, description="Output dtype (bf16, fp16, fp32); default: the inputs' dtype.")

    def merge_config(self) -> MergeConfig:
        return swap_config(**self.model_dump())
