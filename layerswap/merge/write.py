"""Run a merge config to an output folder (full model or PEFT adapter), atomically.

Tensors whose plan operation is a selection from a full checkpoint in the output dtype are moved
as raw bytes (:meth:`ShardedWriter.copy_raw`: no decode, no arithmetic, little memory); all other
tensors are computed in float32 one at a time and cast to the output dtype. torch is imported only
when a tensor must be computed, so a selection-only merge starts in a fraction of a second.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerswap.errors import ConfigError, NumericalError
from layerswap.io import (
    FLOAT_CODES,
    TORCH_DTYPE_NAMES,
    Checkpoint,
    LoraAdapter,
    ModelFolder,
    ShardedWriter,
    TensorSpec,
    check_compatible,
    open_checkpoint,
    open_model,
    parse_dtype_code,
    prepare_output_dir,
)
from layerswap.io.finite import finite_within
from layerswap.merge.config import MergeConfig
from layerswap.merge.engine import DiskSources, compute
from layerswap.merge.lora import choose_output, write_adapter
from layerswap.merge.ops import BASE, MergePlan, Select
from layerswap.merge.plan import build_plan
from layerswap.progress import progress

log = logging.getLogger("layerswap.merge")


@dataclass
class MergeResult:
    """What a merge wrote and how."""

    out: Path
    output: str  # "full" or "adapter"
    reason: str
    plan: MergePlan
    copied: int = 0  # tensors moved as raw bytes
    computed: int = 0  # tensors computed in float32
    seconds: float = 0.0
    mergekit_yaml: Path | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class OpenedMerge:
    """The checkpoints of a config, checked against each other, and its plan."""

    config: MergeConfig
    base: ModelFolder | None
    experts: dict[str, Checkpoint]
    reference: ModelFolder
    plan: MergePlan


def open_merge(config: MergeConfig) -> OpenedMerge:
    """Open base and experts, check they come from the same model, and build the plan."""
    config.validate_all()
    base = open_model(config.base) if config.base is not None else None
    experts = {label: open_checkpoint(path) for label, path in config.experts.items()}
    full = [e for e in experts.values() if isinstance(e, ModelFolder)]
    reference = base if base is not None else (full[0] if full else None)
    if reference is None:
        raise ConfigError("all experts are LoRA adapters: add base: PATH (their base model) to the config")
    for label, ckpt in experts.items():
        if ckpt is not reference:
            check_compatible(reference, ckpt, label=f"expert {label}")
    plan = build_plan(config, reference.num_layers)
    return OpenedMerge(config, base, experts, reference, plan)


def _donor(opened: OpenedMerge) -> Path:
    cfg = opened.config
    if cfg.donor is not None:
        if cfg.donor == BASE and opened.base is not None:
            return opened.base.path
        if cfg.donor in opened.experts:
            ckpt = opened.experts[cfg.donor]
            if isinstance(ckpt, LoraAdapter):
                raise ConfigError(f"donor {cfg.donor!r} is a LoRA adapter: a full model needs config.json from a model folder")
            return ckpt.path
        path = Path(cfg.donor)
        if not (path / "config.json").exists():
            raise ConfigError(f"donor {cfg.donor!r} is neither base, an expert label nor a model folder with config.json")
        return path
    policy_src = opened.experts.get(cfg.non_layer_policy())
    if isinstance(policy_src, ModelFolder):
        return policy_src.path
    return opened.reference.path


def merge(
    config: MergeConfig,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    emit_mergekit: str | os.PathLike[str] | None = None,
    echo: Callable[[str], None] | None = None,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> MergeResult:
    """Merge as the config says into ``out`` (a HF model folder or a PEFT adapter folder).

    ``out`` and ``emit_mergekit`` must not be, contain or lie inside an input (the config's models and
    ``inputs``, e.g. the config file): see :mod:`layerswap.io.outputs`."""
    from layerswap.merge.mergekit import check_mergekit_path, merge_inputs

    start = time.perf_counter()
    say = echo or log.info
    # The output is the first thing to check, before any work: never an input, never someone else's folder.
    out = prepare_output_dir(out, overwrite, inputs=[*merge_inputs(config), *inputs])
    if emit_mergekit is not None:
        check_mergekit_path(config, emit_mergekit, overwrite=overwrite, inputs=inputs, outputs=(out,))
    opened = open_merge(config)
    plan = opened.plan
    output, reason = choose_output(config.output, plan, opened.experts)
    say(f"merge {config.method}: {plan.summary()}")
    say(f"output: {'PEFT adapter' if output == 'adapter' else 'full model'} ({reason})")
    provenance: dict[str, Any] = {
        "kind": "merge",
        "method": config.method,
        "config": config.model_dump(mode="json", by_alias=True),
        "inputs": {"base": str(opened.base.path) if opened.base else None}
        | {label: str(ckpt.path) for label, ckpt in opened.experts.items()},
        "non_layer": plan.non_layer_policy,
        "plan": plan.describe(),
        "output": output,
        "output_reason": reason,
    }
    if output == "adapter":
        folder, n = write_adapter(
            Path(out),
            plan,
            opened.experts,
            base_path=str(opened.base.path) if opened.base else None,
            provenance=provenance,
            overwrite=overwrite,
        )
        result = MergeResult(folder, output, reason, plan, copied=n, provenance=provenance)
    else:
        result = _write_full(opened, Path(out), provenance, overwrite=overwrite, output_reason=reason)
    if emit_mergekit is not None:
        from layerswap.merge.mergekit import write_mergekit_yaml

        result.mergekit_yaml = write_mergekit_yaml(config, plan, emit_mergekit, num_layers=plan.num_layers, overwrite=overwrite)
        say(f"mergekit config: {result.mergekit_yaml}")
    result.seconds = time.perf_counter() - start
    say(f"wrote {result.out} in {result.seconds:.1f}s ({result.copied} tensors copied as bytes, {result.computed} computed)")
    return result


def _write_full(
    opened: OpenedMerge, out: Path, provenance: dict[str, Any], *, overwrite: bool, output_reason: str
) -> MergeResult:
    cfg, plan, ref = opened.config, opened.plan, opened.reference
    arch = ref.architecture
    out_code = parse_dtype_code(cfg.dtype) if cfg.dtype else None
    specs = []
    for name in ref.names():
        info = ref.info(name)
        code = out_code if out_code is not None and info.dtype in FLOAT_CODES else info.dtype
        specs.append(TensorSpec(name, code, info.shape))
    sources = DiskSources(opened.base, opened.experts)
    updates = {"dtype": TORCH_DTYPE_NAMES[out_code]} if out_code is not None else None
    donor = _donor(opened)
    provenance = dict(provenance, donor=str(donor), dtype=cfg.dtype or "same as inputs")
    copied = computed = 0
    with ShardedWriter(
        out,
        specs,
        max_shard_size=cfg.max_shard_size,
        donor=donor,
        provenance=provenance,
        overwrite=overwrite,
        config_updates=updates,
    ) as writer:
        for spec in progress(specs, desc=f"merge ({cfg.method})", total=len(specs), unit="tensor"):
            op = plan.op_for(spec.name, arch)
            if isinstance(op, Select):
                ckpt = sources.checkpoint(op.source)
                if isinstance(ckpt, ModelFolder) or spec.name not in ckpt:
                    src = ckpt if isinstance(ckpt, ModelFolder) else opened.base
                    assert src is not None
                    info = src.info(spec.name)
                    if info.dtype == spec.dtype:
                        writer.copy_raw(spec.name, info)
                        copied += 1
                        continue
            tensor = compute(op, spec.name, sources)
            if tensor.is_floating_point() and not finite_within(tensor):
                raise NumericalError(
                    f"tensor {spec.name!r} has NaN or Inf after the merge: check the inputs for NaN/Inf weights "
                    "(layerswap analyze counts them per tensor); nothing was written"
                )
            writer.write(spec.name, tensor)
            computed += 1
    return MergeResult(writer.out, "full", output_reason, plan, copied=copied, computed=computed, provenance=provenance)
