"""Reading safetensors files lazily: a header parsed once, then one ``pread`` per tensor.

Why not ``safe_open`` or ``from_pretrained``: every question the toolkit asks is about one tensor
at a time (its delta, its norm, its bytes), and the checkpoints of real users are 16 GB and more.
So headers are parsed once (no tensor data read), a tensor is read through a memory map of its own
byte range only, converted straight from the mapped pages into its result (one copy, as
``safe_open(...).get_tensor(k).to(dtype)`` minus safetensors' intermediate copy) and unmapped at
once (so mapped pages never pile up in resident memory), and a layer swap can copy a tensor's raw
bytes from source file to output file without decoding them (see ``writer``).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import stat
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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


#: Bounds on what a header or a JSON file may hold (the format's valid headers nest 3 deep).
_MAX_JSON = 64 * 1024 * 1024
_MAX_DEPTH = 32
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))  # fmt: skip
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def open_regular(path: str | os.PathLike[str], *, fix: str, missing: str | None = None) -> int:
    """Open a regular file for reading (a descriptor); anything else is an InputPathError ending in ``fix``.

    Links are followed (the Hugging Face cache links every file into its blobs), but what they lead
    to must be a regular file: a FIFO, device or folder is refused before ``open``, which is
    non-blocking so a FIFO swapped in meanwhile cannot hang, and checked again on the descriptor.
    """
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            fd = os.open(path, _READ_FLAGS)
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                return fd
            os.close(fd)
    except FileNotFoundError as exc:
        link = " (a dangling link)" if os.path.islink(path) else ""
        raise InputPathError(missing or f"cannot read {path}: it does not exist{link}; {fix}") from exc
    except PermissionError as exc:
        raise InputPathError(f"cannot read {path}: permission denied; fix its permissions or pass a readable copy") from exc
    except OSError as exc:
        raise InputPathError(f"cannot read {path}: {exc.strerror or type(exc).__name__}; {fix}") from exc
    raise _not_regular(path, st.st_mode, fix)


def _not_regular(path: str | os.PathLike[str], mode: int, fix: str) -> InputPathError:
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return InputPathError(f"cannot read {path}: it is {kind}, not a regular file; {fix}")


def refuse_special_files(folder: str | os.PathLike[str], *, fix: str) -> None:
    """Refuse a folder holding a FIFO, device or socket (links followed), or a link out of the folder.

    Whatever reads its files (our reader, a donor-file copy, transformers' tokenizer loading) could
    block on a FIFO or read a device; and a file whose real path lies outside the folder given (a
    ``model.safetensors`` linked to another model, ``tokenizer_config.json`` to ``/proc/self/environ``)
    is not the folder's to read. Hugging Face cache links keep working (:func:`folder_roots`)."""
    try:
        with os.scandir(folder) as entries:
            paths = [entry.path for entry in entries]
    except PermissionError as exc:
        raise InputPathError(f"cannot list {folder}: permission denied; fix its permissions or pass a readable copy") from exc
    except OSError as exc:
        raise InputPathError(f"cannot list {folder}: {exc.strerror or type(exc).__name__}; {fix}") from exc
    roots = folder_roots(folder)
    for path in paths:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue  # a dangling link: reported if and when the file is needed
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise _not_regular(path, mode, fix)
        check_inside(path, roots, folder)


def folder_roots(folder: str | os.PathLike[str]) -> tuple[str, ...]:
    """Where the files of ``folder`` may really lie: the folder itself (resolved), and for a snapshot of the
    Hugging Face cache (``models--ORG--NAME/snapshots/REV``, whose files link into ``../../blobs``) its repository folder."""
    real = os.path.realpath(folder)
    parent = os.path.dirname(real)
    if os.path.basename(parent) == "snapshots":
        return real, os.path.dirname(parent)
    return (real,)


def check_inside(path: str | os.PathLike[str], roots: tuple[str, ...], folder: str | os.PathLike[str]) -> None:
    """Refuse ``path`` when its real path lies outside every one of ``roots`` (see :func:`folder_roots`)."""
    real = os.path.realpath(path)
    if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
        raise InputPathError(
            f"{path} links outside {folder} (to {real}): layerswap reads a folder's files only from the folder itself "
            "(or a Hugging Face cache's blobs); copy the file into the folder"
        )


def _pread_exact(fd: int, n: int, offset: int) -> bytes:
    parts, done = [], 0
    while done < n:
        chunk = os.pread(fd, n - done, offset + done)
        if not chunk:
            break
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)


def _nesting_ok(raw: bytes, limit: int = _MAX_DEPTH) -> bool:
    """Whether JSON text nests at most ``limit`` deep, found in C-speed passes (brackets in strings are
    counted too, which can only overstate the depth; then a second look ignores strings)."""

    def depth_ok(s: bytes) -> bool:
        s = s.translate(None, _NOT_BRACKETS)
        for _ in range(limit + 1):
            if not s:
                return True
            t = s.replace(b"[]", b"").replace(b"{}", b"")
            if t == s:  # unbalanced: the parser says so
                return True
            s = t
        return False

    return depth_ok(raw) or depth_ok(_STRING.sub(b"", raw))


def _show(name: object) -> str:
    """A tensor name for a message: quoted, escaped, and cut short."""
    text = str(name)
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _parse_header(raw: bytes, path: Path, size: int) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Validate a header against the safetensors format: dtype known, shape a list of non-negative
    ints, offsets inside the data and not overlapping, byte count = shape x dtype size, bounded nesting."""
    corrupted = f"{path} has a corrupted safetensors header: re-download or re-save the checkpoint"
    if not _nesting_ok(raw):
        raise CheckpointError(
            f"{path} has a corrupted safetensors header (JSON nested too deeply): re-download or re-save the checkpoint"
        )
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(corrupted) from exc
    if not isinstance(header, dict):
        raise CheckpointError(corrupted)
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(
            f"{path} has a malformed safetensors header (__metadata__ must map strings to strings): re-save the checkpoint"
        )
    data_start = 8 + len(raw)
    data_len = size - data_start
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        bad = f"{path} has a malformed header entry for tensor {_show(name)}"
        if not isinstance(entry, dict):
            raise CheckpointError(f"{bad}: re-save the checkpoint")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            shown = f" {dtype}" if isinstance(dtype, str) and re.fullmatch(r"[A-Za-z0-9_]{1,16}", dtype) else ""
            raise CheckpointError(
                f"tensor {_show(name)} in {path} has unsupported dtype{shown}: re-save it in one of {', '.join(DTYPE_SIZES)}"
            )
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise CheckpointError(f"{bad} (shape must be a list of non-negative integers): re-save the checkpoint")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(x) is int for x in offsets):
            raise CheckpointError(f"{bad} (data_offsets must be two integers): re-save the checkpoint")
        begin, end = offsets
        if not 0 <= begin <= end or end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise CheckpointError(
                f"tensor {_show(name)} in {path} has a byte range that does not match its shape: the file is corrupted; re-save the checkpoint"
            )
        if end > data_len:
            raise CheckpointError(
                f"{path} is truncated: tensor {_show(name)} ends at byte {data_start + end} but the file has {size}; "
                "re-download or re-save the checkpoint"
            )
        infos[name] = TensorInfo(name, tuple(shape), dtype, path, data_start + begin, end - begin)
    ranges = sorted((i.offset, i.offset + i.nbytes, i.name) for i in infos.values() if i.nbytes)
    for (_, prev_end, prev), (begin, _, name) in zip(ranges, ranges[1:], strict=False):
        if begin < prev_end:
            raise CheckpointError(
                f"tensors {_show(prev)} and {_show(name)} in {path} overlap: the file is corrupted; re-save the checkpoint"
            )
    last = max((end for _, end, _ in ranges), default=data_start)
    if last < size:  # the format has nothing after the last tensor: bytes there were appended or hide something
        raise CheckpointError(
            f"{path} has {size - last} bytes after its last tensor, which a safetensors file never has: "
            "re-download or re-save the checkpoint"
        )
    return infos, dict(metadata)


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header; read no tensor data.

    Detects zero-byte, truncated and corrupted files and says which file and what to do; no
    message quotes the file's bytes. Only a regular file is opened (see :func:`open_regular`).
    """
    path = Path(path)
    fd = open_regular(path, fix="pass a complete model folder")
    try:
        size = os.fstat(fd).st_size
        head = _pread_exact(fd, 8, 0)
        if len(head) < 8:
            raise CheckpointError(
                f"{path} is {'empty' if size == 0 else 'truncated'} ({size} bytes): re-download or re-save the checkpoint"
            )
        header_len = int.from_bytes(head, "little")
        if not 2 <= header_len <= min(_MAX_HEADER, size - 8):
            raise CheckpointError(
                f"{path} is not a valid safetensors file (its first 8 bytes give no header length that fits in its {size} bytes): "
                "re-download or re-save the checkpoint"
            )
        raw = _pread_exact(fd, header_len, 8)
    except OSError as exc:
        raise InputPathError(f"cannot read {path}: {exc.strerror or exc}; pass a complete model folder") from exc
    finally:
        os.close(fd)
    if len(raw) < header_len:
        raise CheckpointError(f"{path} is truncated inside its header: re-download or re-save the checkpoint")
    return _parse_header(raw, path, size)


def _pread_range(fd: int, info: TensorInfo, target: memoryview, offset: int) -> None:
    """Fill ``target`` with the file's bytes from ``offset`` (inside ``info``'s range)."""
    done = 0
    while done < len(target):
        n = os.preadv(fd, [target[done:]], offset + done)
        if n <= 0:
            raise CheckpointError(f"{info.file} ended while reading tensor {info.name!r}: the file is truncated")
        done += n


def _pread_into(info: TensorInfo, target: memoryview) -> None:
    """Fill ``target`` (``info.nbytes`` long) with the tensor's bytes."""
    fd = os.open(info.file, _READ_FLAGS)
    try:
        _pread_range(fd, info, target, info.offset)
    finally:
        os.close(fd)


def _read_bytes(info: TensorInfo) -> bytearray:
    buf = bytearray(info.nbytes)
    _pread_into(info, memoryview(buf))
    return buf


_PAGE = mmap.ALLOCATIONGRANULARITY
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # populate: one fault-in for the whole range


@contextmanager
def mapped_tensor(info: TensorInfo, *, populate: bool = True) -> Iterator[torch.Tensor]:
    """A flat, read-only tensor over the file bytes of one tensor (a memory map of its range only).

    Use it inside the ``with`` block only and copy or convert what you need there: the map is
    closed on exit (or, if a view is still referenced, as soon as the last one goes). ``populate``
    maps every page at once (for whole reads; False for a few samples). A range whose start is not
    aligned to its element size (never written by safetensors' writers) is read with ``pread`` instead.
    A file truncated in place *while* it is mapped ends the process with SIGBUS, as it does under
    safetensors' own ``safe_open`` (which maps too); truncation before the map is a one-line error.
    """
    import torch

    dtype = info.torch_dtype
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if info.nbytes == 0 or info.offset % itemsize:
        if info.nbytes == 0:
            yield torch.empty(0, dtype=dtype)
        else:
            yield torch.frombuffer(_read_bytes(info), dtype=dtype)
        return
    start = info.offset - info.offset % _PAGE
    fd = os.open(info.file, _READ_FLAGS)
    try:
        if os.fstat(fd).st_size < info.offset + info.nbytes:  # truncated since the header was read: never map past the end
            raise CheckpointError(f"{info.file} ended while reading tensor {info.name!r}: the file is truncated")
        flags = _MAP_FLAGS if populate else mmap.MAP_SHARED
        mapping = mmap.mmap(fd, info.offset - start + info.nbytes, flags=flags, prot=mmap.PROT_READ, offset=start)
    except OSError as exc:
        raise InputPathError(f"cannot read {info.file}: {exc.strerror or exc}; pass a complete model folder") from exc
    except ValueError as exc:  # truncated between the size check and the map ("mmap length is greater than file size")
        raise CheckpointError(f"{info.file} ended while reading tensor {info.name!r}: the file is truncated") from exc
    finally:
        os.close(fd)
    view = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "buffer is not writable": it is only ever read
            view = torch.frombuffer(mapping, dtype=dtype, count=info.numel, offset=info.offset - start)
        yield view
    finally:
        del view
        try:
            mapping.close()
        except BufferError:  # the caller still holds the view: unmapped when it is dropped
            pass


def read_tensor_into(info: TensorInfo, out: torch.Tensor, scratch: bytearray | None = None) -> torch.Tensor:
    """Read one tensor into the front of a preallocated flat buffer ``out`` (converting to its dtype).

    Returns a view of ``out`` shaped like the tensor. Streaming passes reuse the same buffers for
    every tensor, because page-faulting a fresh buffer of hundreds of MB costs more than the read
    and the conversion. The bytes are converted straight from the mapped file pages (``scratch``
    is accepted for compatibility and unused).
    """
    n = info.numel
    if out.dim() != 1 or out.numel() < n or not out.is_contiguous():
        raise ValueError(f"buffer of {out.numel()} elements cannot hold tensor {info.name!r} ({n})")
    view = out[:n]
    if n:
        with mapped_tensor(info) as src:
            view.copy_(src)
    return view.view(info.shape)


#: Bytes read per ``pread`` when a tensor is converted on the way (a scratch of the stored dtype).
_CONVERT_CHUNK = 16 << 20


def read_tensor(info: TensorInfo, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Read one tensor (a private copy, never a view of a file), converted to ``dtype`` if given.

    ``pread`` straight into the result, or, when converting, into a 16 MiB scratch converted chunk by
    chunk: no memory map, because a mapped range counts in the process's resident memory while it is
    copied, so every read of a large tensor counted twice in the peak (Gemma 3 270M's embedding:
    +640 MiB at each merge that reads it). Streaming passes use :func:`read_tensor_into`.
    """
    return read_span(info, 0, info.numel, dtype).view(info.shape)


def read_span(info: TensorInfo, start: int, stop: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Elements ``[start, stop)`` of a tensor in flat order, as a new flat tensor converted to ``dtype``:
    a chunk of a tensor too large to hold whole (streamed merges), read as :func:`read_tensor` reads."""
    import torch

    target = dtype if dtype is not None else info.torch_dtype
    if not 0 <= start <= stop <= info.numel:
        raise ValueError(f"span [{start}, {stop}) is outside tensor {info.name!r} of {info.numel} elements")
    flat = torch.empty(stop - start, dtype=target)
    if stop == start:
        return flat
    size = info.nbytes // info.numel
    fd = os.open(info.file, _READ_FLAGS)
    try:  # a truncated file ends a read early: _pread_range says so in one line
        if target == info.torch_dtype:
            _pread_range(fd, info, memoryview(flat.view(torch.uint8).numpy()), info.offset + start * size)
            return flat
        per = max(1, _CONVERT_CHUNK // size)
        scratch = torch.empty(min(per, stop - start), dtype=info.torch_dtype)
        raw = memoryview(scratch.view(torch.uint8).numpy())
        for at in range(start, stop, per):
            n = min(per, stop - at)
            _pread_range(fd, info, raw[: n * size], info.offset + at * size)
            flat[at - start : at - start + n].copy_(scratch[:n])
    finally:
        os.close(fd)
    return flat


def read_spans(info: TensorInfo, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """The elements of the flat ranges ``spans`` of a tensor, concatenated, in float32: a sample of a few
    hundred bytes per range, read with one ``preadv`` each rather than mapped (on some VMs the page fault of
    first touching each sampled page costs ten times the read)."""
    import torch

    numel = info.numel
    size = info.nbytes // max(numel, 1)
    raw = torch.empty(sum(b - a for a, b in spans), dtype=info.torch_dtype)
    target = memoryview(raw.view(torch.uint8).numpy())
    fd = os.open(info.file, _READ_FLAGS)
    try:
        at = 0
        for start, stop in spans:
            if not 0 <= start <= stop <= numel:
                raise ValueError(f"span [{start}, {stop}) is outside tensor {info.name!r} of {numel} elements")
            part, offset = target[at * size : (at + stop - start) * size], info.offset + start * size
            got = os.preadv(fd, [part], offset)
            if got < len(part):  # a short read: go on, or say the file is truncated
                _pread_range(fd, info, part[got:], offset + got)
            at += stop - start
    finally:
        os.close(fd)
    return raw.float()


def load_json(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """Read a JSON object (config.json, adapter_config.json, ...) with one-line errors; ``what`` says why it is needed.

    Only a regular file of bounded size is read, and its nesting is bounded before it is parsed.
    """
    fix = what or "pass a complete model folder"
    fd = open_regular(path, fix=f"replace it with the JSON file ({fix})", missing=f"{path} is missing: {fix}")
    try:
        size = os.fstat(fd).st_size
        if size > _MAX_JSON:
            raise CheckpointError(f"{path} is {size} bytes, too large for a JSON file layerswap reads: fix or regenerate it")
        raw = _pread_exact(fd, size, 0)
    except OSError as exc:
        raise InputPathError(f"cannot read {path}: {exc.strerror or exc}; {fix}") from exc
    finally:
        os.close(fd)
    if not _nesting_ok(raw):
        raise CheckpointError(f"{path} is not valid JSON (nested too deeply): fix or regenerate it")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: fix or regenerate it") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object: fix or regenerate it")
    return data
