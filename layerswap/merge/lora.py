"""LoRA experts: when a merge can stay a PEFT adapter, and writing that adapter.

A layer swap or revert of LoRA adapters that target the same modules with the same rank and
scaling is still a selection: every adapted module of the output comes whole from one expert, so
the output is a PEFT adapter whose ``lora_A``/``lora_B`` bytes are copied unchanged. Anything that
blends or combines deltas (transitions, overlapping reverts, ``average``, task vectors) cannot be
written as one low-rank adapter of that rank, so the output is a full model (which needs the base).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from layerswap.errors import ConfigError, IncompatibleModelsError
from layerswap.io import Checkpoint, LoraAdapter, ShardedWriter, TensorInfo, TensorSpec, generic_architecture
from layerswap.merge.methods import get_method
from layerswap.merge.ops import BASE, MergePlan, Select
from layerswap.progress import progress

_SCALING_KEYS = ("r", "lora_alpha", "use_rslora", "fan_in_fan_out", "rank_pattern", "alpha_pattern")


def choose_output(requested: str, plan: MergePlan, experts: Mapping[str, Checkpoint]) -> tuple[str, str]:
    """``("adapter" | "full", reason)``: adapter only for selection merges of matching LoRA experts."""
    adapters = {k: v for k, v in experts.items() if isinstance(v, LoraAdapter)}
    if not adapters:
        if requested == "adapter":
            raise ConfigError("output: adapter needs LoRA experts; these are full models: use output: auto or full")
        return "full", "the experts are full models"
    if requested == "full":
        return "full", "output: full was requested"
    problems: list[str] = []
    if len(adapters) < len(experts):
        problems.append("some experts are full models")
    if not plan.is_selection:
        problems.append(f"{plan.method} blends or combines deltas (not expressible as one adapter of the same rank)")
    if not get_method(plan.method).selection:
        problems.append(f"{plan.method} needs full deltas")
    if not problems:
        targets = {label: sorted(a.target_modules) for label, a in adapters.items()}
        first_label, first = next(iter(targets.items()))
        for label, t in targets.items():
            if t != first:
                raise IncompatibleModelsError(
                    f"LoRA experts {first_label!r} and {label!r} adapt different modules ({', '.join(first)} vs "
                    f"{', '.join(t)}): a {plan.method} into one adapter needs the same target modules; "
                    "set output: full to write a full model instead"
                )
        cfgs = {label: {k: a.config.get(k) for k in _SCALING_KEYS} for label, a in adapters.items()}
        ref = next(iter(cfgs.values()))
        for c in cfgs.values():
            if c != ref:
                diff = [k for k in _SCALING_KEYS if c[k] != ref[k]]
                problems.append(f"the adapters differ in {', '.join(diff)}")
                break
    if problems:
        if requested == "adapter":
            raise ConfigError(f"output: adapter is not possible: {problems[0]}; use output: auto or full")
        return "full", f"{problems[0]}, so the merged deltas go into a full model"
    return "adapter", "a selection merge of LoRA experts with the same targets and scaling stays a PEFT adapter"


def adapter_plan(plan: MergePlan, experts: Mapping[str, Checkpoint]) -> list[tuple[str, TensorInfo]]:
    """The raw adapter tensors (key, source bytes) of the merged adapter: modules per layer from the chosen expert."""
    arch = generic_architecture(plan.num_layers)
    chosen: list[tuple[str, TensorInfo]] = []
    for label, ckpt in experts.items():
        assert isinstance(ckpt, LoraAdapter)
        for key in ckpt.raw_names():
            info = ckpt.raw_info(key)
            target = _target_of(ckpt, key)
            op = plan.op_for(target, arch)
            assert isinstance(op, Select)
            if op.source == label:
                chosen.append((key, info))
    return chosen


def _target_of(adapter: LoraAdapter, key: str) -> str:
    for target, mod in adapter.modules.items():
        if key in (mod.a.name, mod.b.name):
            return target
    for name, info in adapter.replacements.items():
        if info.name == key:
            return name
    raise KeyError(key)


def write_adapter(
    out: Path,
    plan: MergePlan,
    experts: Mapping[str, Checkpoint],
    *,
    base_path: str | None,
    provenance: dict[str, Any],
    overwrite: bool,
) -> tuple[Path, int]:
    """Write the merged PEFT adapter (raw byte copies); return its folder and tensor count."""
    chosen = adapter_plan(plan, experts)
    if not chosen:
        raise ConfigError("the merge keeps no LoRA module of any expert: the output would be the base model itself")
    arch = generic_architecture(plan.num_layers)
    donor_label = next(label for label in experts if any(info.file.parent == experts[label].path for _, info in chosen))
    layers = sorted({layer for key, _ in chosen if (layer := arch.classify(key).layer) is not None})
    updates: dict[str, Any] = {"layers_to_transform": layers}
    if base_path is not None:
        updates["base_model_name_or_path"] = str(base_path)
    specs = [TensorSpec(key, info.dtype, info.shape) for key, info in chosen]
    provenance = dict(provenance, donor=str(experts[donor_label].path))
    with ShardedWriter(
        out,
        specs,
        donor=experts[donor_label].path,
        provenance=provenance,
        overwrite=overwrite,
        adapter=True,
        config_updates=updates,
    ) as writer:
        for key, info in progress(chosen, desc="merge (adapter)", total=len(chosen), unit="tensor"):
            writer.copy_raw(key, info)
    return writer.out, len(chosen)


__all__ = ["BASE", "choose_output", "adapter_plan", "write_adapter"]
