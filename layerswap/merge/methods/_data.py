"""The data-aware merges' shared part: params, checks, and per-expert statistics computed once and cached.

Fisher merging needs each expert's diagonal Fisher on its own task's data, RegMean each expert's
input Gram matrix per linear layer. Both are computed by one pass of the expert over its data
(:mod:`layerswap.io.lm_passes`, the machinery ``analyze importance`` uses), written as one float32
safetensors file per expert under ``$LAYERSWAP_CACHE/merge-stats/`` keyed by everything they depend
on (the method, the expert's files by size and mtime, its base for a LoRA expert, the data spec,
examples, batch size, sequence length, data folder, device), and read back one tensor at a time
when the merge reaches it. A merge whose statistics are cached (a rerun, a sweep's candidate)
costs what a plain weighted average costs.

The plan carries a :class:`StatsSpec` (hashable) in its operation's options; the statistics are
computed on the first tensor that needs them, inside the atomic writer, so a failure leaves no output.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerswap.config import check_device
from layerswap.errors import CheckpointError, ConfigError
from layerswap.io import cache_dir, is_adapter_folder
from layerswap.merge.methods._registry import Layout, MergeSpec
from layerswap.merge.methods._weighted import WeightedMethod, WeightedParams
from layerswap.merge.ops import Combine

if TYPE_CHECKING:
    import torch

DATA_EXAMPLE = "params.data: {math: gsm8k, lang: ntrex:sw}"


class DataParams(WeightedParams):
    """Base of the data-aware methods' params: ``data`` gives each expert's own data spec (the
    fine-tuning specs: ``gsm8k``, ``ntrex:sw``, a JSONL file, ...); ``examples`` of it are read in
    batches of ``batch_size`` texts of at most ``seq_len`` tokens on ``device``; ``weights``
    scale each expert's statistics (default 1 each)."""

    data: dict[str, str] = {}
    examples: int = 32
    batch_size: int = 4
    seq_len: int = 128
    data_dir: str | None = None
    device: str = "auto"


def check_data(method: str, config: MergeSpec, params: DataParams) -> None:
    """One-line errors before anything is read: data for every expert, sizes, device, LoRA bases."""
    if not params.data:
        raise ConfigError(f"{method} reads each expert's own data and none was given: add {DATA_EXAMPLE} (one spec per expert)")
    missing = [k for k in config.experts if k not in params.data]
    unknown = [k for k in params.data if k not in config.experts]
    if missing or unknown:
        what = f"expert {missing[0]!r} has no data spec" if missing else f"{unknown[0]!r} in params.data is not an expert"
        raise ConfigError(f"{method}: {what}; give one spec per expert ({', '.join(config.experts)}), e.g. {DATA_EXAMPLE}")
    for option in ("examples", "batch_size", "seq_len"):
        value = getattr(params, option)
        if value < 1:
            raise ConfigError(f"params.{option} {value} must be a whole number of at least 1")
    check_device(params.device, option="params.device")
    if config.base is None:
        lora = [label for label, path in config.experts.items() if is_adapter_folder(path)]
        if lora:
            raise ConfigError(
                f"expert {lora[0]!r} is a LoRA adapter and {method} runs it over its data: add base: PATH (its base model) to the config"
            )


@dataclass(frozen=True)
class StatsSpec:
    """What one data-aware merge's statistics depend on (hashable: it rides in the plan)."""

    kind: str  # "fisher" or "regmean"
    experts: tuple[tuple[str, str, str], ...]  # (label, path, data spec)
    base: str | None
    examples: int
    batch_size: int
    seq_len: int
    data_dir: str | None
    device: str

    @classmethod
    def of(cls, kind: str, config: MergeSpec, params: DataParams) -> StatsSpec:
        experts = tuple((label, str(path), params.data[label]) for label, path in config.experts.items())
        return cls(kind, experts, config.base, params.examples, params.batch_size, params.seq_len, params.data_dir, params.device)


def _files_key(path: str | None) -> list[Any]:
    """A folder's identity for the cache: its resolved path and each file's (name, size, mtime)."""
    if path is None:
        return []
    folder = Path(path).resolve()
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".json")) if folder.is_dir() else []
    return [str(folder), *[(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]]


def _device(spec: StatsSpec) -> str:
    if spec.device != "auto":
        return spec.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def stats_file(spec: StatsSpec, label: str) -> Path:
    """Where expert ``label``'s statistics are cached (a name from everything they depend on)."""
    path, data = next((p, d) for lab, p, d in spec.experts if lab == label)
    lora = is_adapter_folder(path)
    key = {
        "kind": spec.kind,
        "expert": _files_key(path),
        "base": _files_key(spec.base) if lora else None,
        "data": data,
        "data_dir": spec.data_dir,
        "examples": spec.examples,
        "batch_size": spec.batch_size,
        "seq_len": spec.seq_len,
        "device": _device(spec),
        "version": 1,
    }
    digest = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=12).hexdigest()
    return cache_dir() / "merge-stats" / f"{spec.kind}-{label}-{digest}.safetensors"


class StatsReader:
    """One expert's cached statistics, read one tensor at a time (None: none for that tensor)."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self.path = path
        self._file = safe_open(str(path), framework="pt")
        self._names = set(self._file.keys())

    def get(self, name: str) -> torch.Tensor | None:
        return self._file.get_tensor(name) if name in self._names else None


#: Statistics opened in this process, by their files (a sweep's candidates share them).
_OPEN: dict[tuple[Path, ...], dict[str, StatsReader]] = {}
#: The readers of the merge in progress, by spec: a tensor's lookup is one dict access, while finding
#: the files (hashing the experts' file lists) is done once per merge, when its plan is built.
_BY_SPEC: dict[StatsSpec, dict[str, StatsReader]] = {}


def forget(spec: StatsSpec) -> None:
    """Start a new merge of ``spec``: its files are looked up again (an expert may have changed on disk)."""
    _BY_SPEC.pop(spec, None)


def statistics(spec: StatsSpec) -> dict[str, StatsReader]:
    """Each expert's statistics, computed (and cached on disk) on first use."""
    readers = _BY_SPEC.get(spec)
    if readers is not None:
        return readers
    paths = {label: stats_file(spec, label) for label, _, _ in spec.experts}
    key = tuple(paths.values())
    if key not in _OPEN:
        for label, path in paths.items():
            if not path.exists():
                _compute(spec, label, path)
        _OPEN[key] = {label: StatsReader(path) for label, path in paths.items()}
    _BY_SPEC[spec] = _OPEN[key]
    return _OPEN[key]


def _compute(spec: StatsSpec, label: str, path: Path) -> None:
    """Run expert ``label`` over its data and write its statistics atomically to ``path``."""
    import torch
    from safetensors.torch import save_file

    from layerswap.io import LoraAdapter, ModelFolder, open_checkpoint, open_model
    from layerswap.io.lm_passes import gradient_moments, input_grams, load_model, load_texts

    expert_path, data = next((p, d) for lab, p, d in spec.experts if lab == label)
    texts = load_texts(data, data_dir=spec.data_dir, limit=spec.examples)
    ckpt = open_checkpoint(expert_path)
    base = open_model(spec.base) if spec.base is not None else None
    device = _device(spec)
    if isinstance(ckpt, LoraAdapter):
        assert base is not None  # check_data refused a LoRA expert without its base
        model, tokenizer = load_model(base, device, adapter=ckpt)
        names = set(base.names())
        arch = base.architecture
    else:
        assert isinstance(ckpt, ModelFolder)
        model, tokenizer = load_model(ckpt, device, tokenizer_from=base)
        names = set(ckpt.names())
        arch = ckpt.architecture
    desc = f"{spec.kind} {label}"
    common = {"batch_size": spec.batch_size, "seq_len": spec.seq_len, "desc": desc}
    if spec.kind == "fisher":
        stats, count = gradient_moments(model, tokenizer, texts, power=2, **common)
    else:
        stats, count = input_grams(
            model, tokenizer, texts, keep=lambda n: n in names and arch.classify(n).layer is not None, **common
        )
    del model
    tensors = {n: t.detach().to("cpu", torch.float32).contiguous() for n, t in stats.items() if n in names}
    if not tensors:  # parameter names the checkpoint does not use would silently make the merge an average
        raise CheckpointError(
            f"the {spec.kind} statistics of expert {label!r} name none of its checkpoint's tensors (e.g. {next(iter(stats), 'none')!r}): "
            "its architecture names parameters differently from its safetensors; use linear or task_arithmetic"
        )
    meta = {k: str(v) for k, v in asdict(spec).items() if k != "experts"} | {
        "expert": expert_path,
        "data": data,
        "count": str(count),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def normalised(weights: Mapping[str, float] | tuple[tuple[str, float], ...]) -> list[float]:
    """The experts' weights divided by their sum (the average that non-data tensors take)."""
    values = list(weights.values()) if isinstance(weights, Mapping) else [w for _, w in weights]
    total = sum(values)
    return [w / total for w in values]


class DataMethod(WeightedMethod):
    """Fisher and RegMean: one operation for every tensor over the experts' own weights (no base
    read: a LoRA expert's base only completes the expert), its statistics named in the options."""

    def check(self, config: MergeSpec, params: DataParams) -> None:
        check_data(self.name, config, params)
        super().check(config, params)

    def check_weights(self, config: MergeSpec, params: DataParams, weights: dict[str, float]) -> None:
        if any(w <= 0 for w in weights.values()):
            raise ConfigError(f"{self.name} weights scale each expert's statistics: use positive numbers")

    def options(self, params: Any) -> tuple[tuple[str, Any], ...]:
        """The method's own scalars for the formula (Fisher's floor, RegMean's alpha)."""
        return ()

    def layout(self, config: MergeSpec, params: DataParams, num_layers: int) -> Layout:
        stats = StatsSpec.of(self.name, config, params)
        forget(stats)  # a plan is built once per merge: its first tensor finds the statistics' files again
        op = Combine(
            self.name,
            tuple(self.weights(config, params).items()),
            from_base=False,
            options=(("stats", stats), *self.options(params)),
        )
        return Layout((op,) * num_layers, op, tuple(config.experts))
