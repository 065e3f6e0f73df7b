"""The one dtype table: safetensors codes, their torch names and sizes, and the names users write.

Plans, validation and raw byte copies work on codes alone, so torch is imported only by the two
functions that hand out a ``torch.dtype``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerswap.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: Each safetensors dtype code: its torch dtype name (``config.json`` writes ``"dtype": "bfloat16"``)
#: and its bytes per element, enough to plan, validate and copy tensors without torch.
_DTYPE_TABLE: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
    "BOOL": ("bool", 1), "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
}  # fmt: skip
DTYPE_SIZES: dict[str, int] = {code: size for code, (_, size) in _DTYPE_TABLE.items()}
TORCH_DTYPE_NAMES: dict[str, str] = {code: name for code, (name, _) in _DTYPE_TABLE.items()}
FLOAT_CODES = frozenset(code for code, name in TORCH_DTYPE_NAMES.items() if "float" in name)
_CODE_OF_TORCH_NAME = {name: code for code, name in TORCH_DTYPE_NAMES.items()}
#: Names a user may write for an output dtype, and the safetensors code each means.
DTYPE_ALIASES: dict[str, str] = {
    "float32": "F32", "fp32": "F32", "float16": "F16", "fp16": "F16", "bfloat16": "BF16", "bf16": "BF16",
}  # fmt: skip


def torch_dtype_of(code: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype code (imports torch)."""
    import torch

    return getattr(torch, TORCH_DTYPE_NAMES[code])


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors code of a torch dtype."""
    code = _CODE_OF_TORCH_NAME.get(str(dtype).removeprefix("torch."))
    if code is not None:
        return code
    raise ConfigError(f"dtype {dtype} cannot be stored in safetensors by layerswap: use one of {', '.join(sorted(DTYPE_ALIASES))}")


def parse_dtype_code(value: str | torch.dtype) -> str:
    """``bf16``/``bfloat16``/``BF16``/a torch dtype -> its safetensors code; a ConfigError lists the valid names."""
    if not isinstance(value, str):
        return dtype_code(value)
    key = value.strip()
    if key in DTYPE_SIZES:
        return key
    if key.lower() in DTYPE_ALIASES:
        return DTYPE_ALIASES[key.lower()]
    raise ConfigError(f"unknown dtype {value!r}: use one of {', '.join(sorted(DTYPE_ALIASES))}")


def parse_dtype(value: str | torch.dtype) -> torch.dtype:
    """Accept ``bf16``/``bfloat16``/``BF16``/a torch dtype; raise a ConfigError listing the valid names."""
    if not isinstance(value, str):
        return value
    return torch_dtype_of(parse_dtype_code(value))
