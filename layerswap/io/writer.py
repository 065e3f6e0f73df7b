"""The atomic sharded safetensors writer: headers first, then each tensor straight to its offset.

The plan (names, dtypes, shapes) is known before any data, so nothing is buffered, and a tensor
taken unchanged from a source file is copied as raw bytes in the kernel (``copy_file_range``), never
decoded: that is what lets a layer swap run at the speed of a copy without torch.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from layerswap.errors import CheckpointError, ConfigError, NumericalError
from layerswap.io.atomic import AtomicDir
from layerswap.io.dtypes import DTYPE_SIZES, dtype_code, torch_dtype_of
from layerswap.io.finite import FiniteCheck, finite_within
from layerswap.io.model_folder import INDEX_NAME, check_donor_config
from layerswap.io.provenance import ADAPTER_DONOR_FILES, DONOR_FILES, copy_donor_files, write_provenance
from layerswap.io.reader import TensorInfo
from layerswap.io.syscalls import Writeback, reserve_space

if TYPE_CHECKING:
    import torch

_COPY_CHUNK = 64 * 1024 * 1024
_RUN_LIMIT = 256 * 1024 * 1024  # a run of back-to-back tensors is copied once it holds this much


@dataclass(frozen=True)
class TensorSpec:
    """A planned output tensor: its name, safetensors dtype code and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor) -> "TensorSpec":
        return cls(name, dtype_code(tensor.dtype), tuple(tensor.shape))


#: The largest size a shard may be given (any real file system's limit is far below).
MAX_SIZE = 2**62


def parse_size(value: int | str) -> int:
    """``"5GB"``/``"500MB"``/``1000000`` -> bytes."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"cannot read size {value!r}: write e.g. 5GB, 500MB or a number of bytes")
    if isinstance(value, int):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d{1,40}(?:\.\d{0,40})?|\.\d{1,40})\s*([KMGT]i?B?|B)?\s*", value, re.I)
        if not m:
            raise ConfigError(f"cannot read size {value[:40]!r}: write e.g. 5GB, 500MB or a number of bytes")
        unit = (m.group(2) or "").upper().rstrip("B")
        factor = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
        size = int(Decimal(m.group(1)) * factor)  # exact: a float of 400 nines is infinite
    if size > MAX_SIZE:
        raise ConfigError(f"size {str(value)[:24]}... is larger than any file can be (at most 2^62 bytes): write e.g. 5GB or 500MB")
    if size <= 0:
        raise ConfigError(f"size {value!r} must be positive: write e.g. 5GB, 500MB or a number of bytes")
    return size


@dataclass
class _CopyRun:
    """A byte range to copy from one source file to one output shard: back-to-back tensors merged."""

    first: str  # the first tensor's name, for error messages
    file: Path
    src_offset: int
    fd: int
    dst_offset: int
    nbytes: int

    def continues(self, source: TensorInfo, fd: int, offset: int) -> bool:
        return (
            source.file == self.file
            and fd == self.fd
            and source.offset == self.src_offset + self.nbytes
            and offset == self.dst_offset + self.nbytes
        )


class ShardedWriter:
    """Write planned tensors into sharded safetensors files, atomically.

    The plan (names, dtypes, shapes) is known up front, so every shard's header is written first
    and each tensor goes straight to its offset: no tensor is buffered, and raw bytes can be
    copied from a source file without decoding (:meth:`copy_raw`).

    Use as a context manager; on success the folder holds the shards, the index (when more than
    one shard), the donor's config/tokenizer files and a provenance JSON.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        specs: Sequence[TensorSpec],
        *,
        max_shard_size: int | str = "5GB",
        donor: str | os.PathLike[str] | None = None,
        provenance: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        adapter: bool = False,
        config_updates: Mapping[str, Any] | None = None,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("duplicate tensor names in the write plan")
        self.specs = {s.name: s for s in specs}
        self.max_shard = parse_size(max_shard_size)
        self.donor = Path(donor) if donor is not None else None
        self.provenance = dict(provenance or {})
        self.adapter = adapter
        self.config_updates = dict(config_updates or {})
        if self.donor is not None and not adapter:
            check_donor_config(self.donor, self.specs, self.config_updates)
        self._atomic = AtomicDir(out, overwrite=overwrite)
        self.out = self._atomic.out
        self._written: set[str] = set()
        self._fds: list[int] = []
        self._run: _CopyRun | None = None  # raw copies not yet done, see copy_raw
        self._failed: str | None = None  # set for good when a raw copy failed: see _flush_run
        self._writeback = Writeback()
        self._finite = FiniteCheck()  # raw copies are tested for NaN/Inf while the kernel copies them
        self._where: dict[str, tuple[int, int]] = {}  # name -> (shard index, absolute offset)
        self._shards: list[list[TensorSpec]] = self._plan(list(specs))

    def _plan(self, specs: list[TensorSpec]) -> list[list[TensorSpec]]:
        shards: list[list[TensorSpec]] = [[]]
        size = 0
        for spec in specs:
            if shards[-1] and size + spec.nbytes > self.max_shard:
                shards.append([])
                size = 0
            shards[-1].append(spec)
            size += spec.nbytes
        return shards

    def _file_name(self, i: int) -> str:
        if self.adapter:
            return "adapter_model.safetensors"
        if len(self._shards) == 1:
            return "model.safetensors"
        return f"model-{i + 1:05d}-of-{len(self._shards):05d}.safetensors"

    def __enter__(self) -> "ShardedWriter":
        if self.adapter and len(self._shards) > 1:
            self._shards = [[s for shard in self._shards for s in shard]]
        tmp = self._atomic.__enter__()
        try:
            for i, shard in enumerate(self._shards):
                header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
                offset = 0
                for spec in shard:
                    header[spec.name] = {"dtype": spec.dtype, "shape": list(spec.shape), "data_offsets": [offset, offset + spec.nbytes]}
                    offset += spec.nbytes
                raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
                raw += b" " * (-len(raw) % 8)
                fd = os.open(tmp / self._file_name(i), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                self._fds.append(fd)
                os.write(fd, len(raw).to_bytes(8, "little") + raw)
                start = 8 + len(raw)
                for spec in shard:
                    self._where[spec.name] = (i, start)
                    start += spec.nbytes
                reserve_space(fd, start)
        except BaseException as exc:
            self._close_fds()
            self._atomic.__exit__(type(exc), exc, None)
            raise
        return self

    def _close_fds(self) -> None:
        self._finite.close()
        self._writeback.close()  # its queue holds these descriptors
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []

    def _target(self, name: str) -> tuple[int, int, TensorSpec]:
        if name not in self.specs:
            raise KeyError(f"tensor {name!r} is not in the write plan")
        if name in self._written:
            raise ValueError(f"tensor {name!r} written twice")
        shard, offset = self._where[name]
        return self._fds[shard], offset, self.specs[name]

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write a tensor (cast to the planned dtype) at its planned place."""
        fd, offset, spec = self._target(name)
        if tuple(tensor.shape) != spec.shape:
            raise ValueError(f"tensor {name!r} has shape {list(tensor.shape)}, planned {list(spec.shape)}")
        import torch

        data = tensor.detach().to("cpu", torch_dtype_of(spec.dtype)).contiguous()
        # Values within the target's range cannot overflow in the cast (one aminmax pass); else test what was cast.
        if data.dtype != tensor.dtype and data.is_floating_point() and not finite_within(tensor, torch.finfo(data.dtype).max) \
                and not bool(torch.isfinite(data).all()):
            if bool(torch.isfinite(tensor).all()):  # finite before the cast: the values as written overflow
                largest = float(tensor.detach().abs().max())
                raise NumericalError(
                    f"tensor {name!r} overflows {spec.dtype} when written (|value| up to {largest:.4g} is past its range, "
                    "so it would be stored as Inf): write a wider dtype (BF16 or F32); nothing was written"
                )
        if data.numel():
            buf = memoryview(data.reshape(-1).view(torch.uint8).numpy())
            self._pwrite_all(fd, buf, offset)
            self._writeback.submit(fd, offset, len(buf))
        self._written.add(name)

    def copy_raw(self, name: str, source: TensorInfo) -> None:
        """Copy a tensor's bytes from a source file unchanged (same dtype and shape required).

        Consecutive tensors that lie back to back in both the source and the output (a layer swap
        takes whole runs of layers from one expert) are copied by one kernel call per 64 MiB, not
        one per tensor; the run is flushed when the next copy does not continue it, and on exit.
        Float tensors are tested for NaN/Inf meanwhile (:class:`~layerswap.io.finite.FiniteCheck`):
        the output is never committed with one.
        """
        fd, offset, spec = self._target(name)
        if source.dtype != spec.dtype or source.shape != spec.shape:
            raise ValueError(f"raw copy of {name!r}: source is {source.dtype}{list(source.shape)}, planned {spec.dtype}{list(spec.shape)}")
        if self._finite.bad is not None:
            self._refuse_nonfinite(self._finite.bad)
        self._finite.submit(name, source.file, source.offset, source.nbytes, source.dtype)
        run = self._run
        if run is not None and run.continues(source, fd, offset):
            run.nbytes += source.nbytes
        else:
            self._flush_run()
            self._run = _CopyRun(name, source.file, source.offset, fd, offset, source.nbytes)
        self._written.add(name)
        if self._run is not None and self._run.nbytes >= _RUN_LIMIT:
            self._flush_run()  # long runs go now, so progress bars follow the bytes actually copied

    @staticmethod
    def _refuse_nonfinite(bad: tuple[str, Path]) -> None:
        name, file = bad
        raise NumericalError(
            f"tensor {name!r} of {file} holds NaN or Inf values: check the inputs for NaN/Inf weights "
            "(layerswap analyze counts them per tensor) and use a finite checkpoint; nothing was written"
        )

    def _flush_run(self) -> None:
        run, self._run = self._run, None
        if run is None or run.nbytes == 0:
            return
        try:
            self._copy_run(run)
        except BaseException:
            # Its tensors already count as written: the writer must never commit now, even if a
            # caller swallowed the error, or they would stay zeros in a published output.
            self._failed = f"copying tensor {run.first!r} and the ones after it failed"
            raise

    def _copy_run(self, run: _CopyRun) -> None:
        src = os.open(run.file, os.O_RDONLY)
        try:
            done = 0
            while done < run.nbytes:
                n = min(_COPY_CHUNK, run.nbytes - done)
                src_at, dst_at = run.src_offset + done, run.dst_offset + done
                try:
                    if not hasattr(os, "copy_file_range"):  # not Linux: no in-kernel copy between files
                        raise OSError(errno.ENOSYS, "copy_file_range is not available")
                    copied = os.copy_file_range(src, run.fd, n, src_at, dst_at)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    copied = self._copy_across(src, run.fd, n, src_at, dst_at)
                if copied <= 0:
                    raise CheckpointError(f"{run.file} ended while copying tensor {run.first!r} and the ones after it: the file is truncated")
                self._writeback.submit(run.fd, dst_at, copied)
                done += copied
        finally:
            os.close(src)

    @staticmethod
    def _copy_across(src: int, dst: int, n: int, src_offset: int, dst_offset: int) -> int:
        """Copy between file systems (no ``copy_file_range``): ``sendfile`` in the kernel, else read+write."""
        try:
            os.lseek(dst, dst_offset, os.SEEK_SET)
            return os.sendfile(dst, src, src_offset, n)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK):  # macOS: sockets only
                raise
        chunk = os.pread(src, n, src_offset)
        ShardedWriter._pwrite_all(dst, memoryview(chunk), dst_offset)
        return len(chunk)

    @staticmethod
    def _pwrite_all(fd: int, buf: memoryview, offset: int) -> None:
        done = 0
        while done < len(buf):
            done += os.pwrite(fd, buf[done:], offset + done)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is None:
                self._flush_run()
                if self._failed:
                    raise RuntimeError(f"{self._failed}: nothing was written")
                missing = [n for n in self.specs if n not in self._written]
                if missing:
                    raise RuntimeError(f"{len(missing)} planned tensors were never written, first {missing[0]!r}")
                bad = self._finite.result()
                if bad is not None:
                    self._refuse_nonfinite(bad)
                self._writeback.close()
                for fd in self._fds:  # on the writing descriptors: a late write error is reported here
                    os.fsync(fd)
            self._close_fds()
            if exc is None:
                self._finish(self._atomic.tmp)
        except BaseException as inner:
            self._close_fds()
            self._atomic.__exit__(type(inner), inner, None)
            raise
        self._atomic.__exit__(exc_type, exc, tb)

    def _finish(self, tmp: Path) -> None:
        if len(self._shards) > 1:
            weight_map = {spec.name: self._file_name(i) for i, shard in enumerate(self._shards) for spec in shard}
            total = sum(s.nbytes for s in self.specs.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        if self.donor is not None:
            copy_donor_files(self.donor, tmp, ADAPTER_DONOR_FILES if self.adapter else DONOR_FILES)
        if self.config_updates:
            cfg_name = "adapter_config.json" if self.adapter else "config.json"
            cfg_path = tmp / cfg_name
            cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
            cfg.update(self.config_updates)
            cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        write_provenance(tmp, self.provenance)


def write_tensors(
    out: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    **kwargs: Any,
) -> Path:
    """Write an in-memory state dict as a (sharded) safetensors folder; see :class:`ShardedWriter`."""
    items = list(tensors.items()) if isinstance(tensors, Mapping) else list(tensors)
    specs = [TensorSpec.of(name, t) for name, t in items]
    with ShardedWriter(out, specs, **kwargs) as writer:
        for name, tensor in items:
            writer.write(name, tensor)
    return writer.out
