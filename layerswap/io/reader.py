"""Reading safetensors files lazily: a header parsed once, then one ``pread`` per tensor.

Why not ``safe_open`` or ``from_pretrained``: every question the toolkit asks is about one tensor
at a time (its delta, its norm, its bytes), and the checkpoints of real users are 16 GB and more.
So headers are parsed once (no tensor data read), a tensor is read with one ``pread`` of its byte
range (no memory map whose pages would pile up in resident memory), and a layer swap can copy a
tensor's raw bytes from source file to output file without decoding them (see ``writer``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerswap.errors import CheckpointError, InputPathError
from layerswap.io.dtypes import DTYPE_SIZES, torch_dtype_of

if TYPE_CHECKING:
    import torch

_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor's bytes lie, known from the header alone."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors code, e.g. "BF16"
    file: Path
    offset: int  # absolute byte offset in ``file``
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype_of(self.dtype)


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header; read no tensor data.

    Detects zero-byte, truncated and corrupted files and says which file and what to do.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"{path} is {'empty' if size == 0 else 'truncated'} ({size} bytes): re-download or re-save the checkpoint"
                )
            header_len = int.from_bytes(head, "little")
            if header_len <= 0 or header_len > _MAX_HEADER or header_len > size - 8:
                raise CheckpointError(
                    f"{path} is not a valid safetensors file (header length {header_len}, file size {size}): "
                    "re-download or re-save the checkpoint"
                )
            raw = fh.read(header_len)
    except PermissionError as exc:
        raise InputPathError(f"cannot read {path}: permission denied; fix its permissions or pass a readable copy") from exc
    except OSError as exc:  # a folder or a dangling link where a weight file should be
        raise InputPathError(
            f"cannot read {path}: {exc.strerror or exc}; pass a complete model folder"
        ) from exc
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} has a corrupted safetensors header: re-download or re-save the checkpoint") from exc
    data_start = 8 + header_len
    metadata = header.pop("__metadata__", None) or {}
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path} has a malformed header entry for tensor {name!r}: re-save the checkpoint") from exc
        if dtype not in DTYPE_SIZES:
            raise CheckpointError(f"tensor {name!r} in {path} has unsupported dtype {dtype}")
        itemsize = DTYPE_SIZES[dtype]
        if end - begin != math.prod(shape) * itemsize or begin < 0:
            raise CheckpointError(
                f"tensor {name!r} in {path} has a byte range that does not match its shape: the file is corrupted"
            )
        if data_start + end > size:
            raise CheckpointError(
                f"{path} is truncated: tensor {name!r} ends at byte {data_start + end} but the file has {size}; "
                "re-download or re-save the checkpoint"
            )
        infos[name] = TensorInfo(name, shape, dtype, path, data_start + begin, end - begin)
    return infos, {str(k): str(v) for k, v in metadata.items()}


def _pread_into(info: TensorInfo, target: memoryview) -> None:
    """Fill ``target`` (``info.nbytes`` long) with the tensor's bytes."""
    fd = os.open(info.file, os.O_RDONLY)
    try:
        done = 0
        while done < info.nbytes:
            n = os.preadv(fd, [target[done:]], info.offset + done)
            if n <= 0:
                raise CheckpointError(f"{info.file} ended while reading tensor {info.name!r}: the file is truncated")
            done += n
    finally:
        os.close(fd)


def _read_bytes(info: TensorInfo) -> bytearray:
    buf = bytearray(info.nbytes)
    _pread_into(info, memoryview(buf))
    return buf


def read_tensor_into(info: TensorInfo, out: torch.Tensor, scratch: bytearray | None = None) -> torch.Tensor:
    """Read one tensor into the front of a preallocated flat buffer ``out`` (converting to its dtype).

    Returns a view of ``out`` shaped like the tensor. Streaming passes reuse the same buffers for
    every tensor, because page-faulting a fresh buffer of hundreds of MB costs more than the read
    and the conversion. ``scratch`` (at least ``info.nbytes``) holds the raw bytes when the dtypes differ.
    """
    import torch

    n = info.numel
    if out.dim() != 1 or out.numel() < n or not out.is_contiguous():
        raise ValueError(f"buffer of {out.numel()} elements cannot hold tensor {info.name!r} ({n})")
    view = out[:n]
    if n:
        if info.torch_dtype == out.dtype:
            target = memoryview(view.view(torch.uint8).numpy())
        else:
            if scratch is None or len(scratch) < info.nbytes:
                scratch = bytearray(info.nbytes)
            target = memoryview(scratch)[: info.nbytes]
        _pread_into(info, target)
        if info.torch_dtype != out.dtype:
            view.copy_(torch.frombuffer(scratch, dtype=info.torch_dtype, count=n))
    return view.view(info.shape)


def read_tensor(info: TensorInfo, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Read one tensor from its byte range (a private copy, not a memory map)."""
    import torch

    if info.nbytes == 0:
        tensor = torch.empty(info.shape, dtype=info.torch_dtype)
    else:
        tensor = torch.frombuffer(_read_bytes(info), dtype=info.torch_dtype).reshape(info.shape)
    if dtype is not None and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    return tensor


def load_json(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """Read a JSON object (config.json, adapter_config.json, ...) with one-line errors; ``what`` says why it is needed."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputPathError(f"{path} is missing: {what}") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: fix or regenerate it") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data
