"""What a checkpoint holds, per layer and per module kind: the library behind ``layerswap inspect``.

pandas is imported when a table is built, so importing the core stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from layerswap.io.architecture import Architecture, generic_architecture, module_sort_key
from layerswap.io.deltas import Checkpoint
from layerswap.io.lora import LoraAdapter

if TYPE_CHECKING:
    import pandas as pd


def parameter_table(ckpt: Checkpoint, arch: Architecture | None = None) -> pd.DataFrame:
    """One row per tensor: ``tensor, layer, module, shape, dtype, numel`` (LoRA: factor numels)."""
    import pandas as pd

    rows = []
    if isinstance(ckpt, LoraAdapter):
        arch = arch or generic_architecture(model_type="peft-lora")
        for name, mod in ckpt.modules.items():
            role = arch.classify(name)
            rows.append(
                {
                    "tensor": name,
                    "layer": role.layer,
                    "module": role.module,
                    "shape": f"r={mod.rank}",
                    "dtype": mod.a.dtype,
                    "numel": mod.a.numel + mod.b.numel,
                }
            )
        for name, info in ckpt.replacements.items():
            role = arch.classify(name)
            rows.append({"tensor": name, "layer": role.layer, "module": role.module, "shape": "x".join(map(str, info.shape)), "dtype": info.dtype, "numel": info.numel})
    else:
        arch = arch or ckpt.architecture
        for name in ckpt.names():
            info = ckpt.info(name)
            role = arch.classify(name)
            rows.append({"tensor": name, "layer": role.layer, "module": role.module, "shape": "x".join(map(str, info.shape)), "dtype": info.dtype, "numel": info.numel})
    table = pd.DataFrame(rows, columns=["tensor", "layer", "module", "shape", "dtype", "numel"])
    table["layer"] = table["layer"].astype("Int64")
    return table


def describe(ckpt: Checkpoint) -> dict[str, Any]:
    """Architecture, layer count, parameters per layer and module kind, dtypes, tied embeddings."""
    table = parameter_table(ckpt)
    by_layer = table.dropna(subset=["layer"]).groupby("layer")["numel"].sum()
    by_module = table.groupby("module")["numel"].sum()
    modules = sorted(by_module.index, key=module_sort_key)
    info: dict[str, Any] = {"path": str(ckpt.path)}
    if isinstance(ckpt, LoraAdapter):
        info.update(
            {
                "kind": "lora_adapter",
                "base_model": ckpt.base_model_name_or_path,
                "r": ckpt.r,
                "lora_alpha": ckpt.alpha,
                "use_rslora": ckpt.use_rslora,
                "target_modules": sorted(ckpt.target_modules),
                "modules_to_save": sorted(ckpt.replacements),
                "adapted_layers": sorted(int(x) for x in by_layer.index),
            }
        )
    else:
        arch = ckpt.architecture
        info.update(
            {
                "kind": "model",
                "architecture": (ckpt.config.get("architectures") or [arch.model_type])[0],
                "model_type": arch.model_type,
                "known_architecture": arch.known,
                "num_layers": arch.num_layers,
                "tied_embeddings": arch.tied_embeddings and not any(arch.classify(n).module == "lm_head" for n in ckpt.names()),
                "vocab_size": ckpt.config.get("vocab_size", (ckpt.config.get("text_config") or {}).get("vocab_size")),
                "dtypes": ckpt.dtypes(),
                "num_tensors": len(ckpt),
                "size_bytes": ckpt.total_bytes,
            }
        )
    info["num_parameters"] = int(table["numel"].sum())
    info["parameters_per_layer"] = {int(k): int(v) for k, v in by_layer.items()}
    info["parameters_per_module"] = {m: int(by_module[m]) for m in modules}
    return info


def format_description(info: dict[str, Any]) -> str:
    """A human-readable rendering of :func:`describe`."""
    lines = [f"{info['path']}"]
    if info["kind"] == "model":
        lines.append(f"  architecture      {info['architecture']} ({info['model_type']}{'' if info['known_architecture'] else ', generic naming rule'})")
        lines.append(f"  layers            {info['num_layers']}")
        lines.append(f"  tied embeddings   {'yes' if info['tied_embeddings'] else 'no'}")
        lines.append(f"  vocab size        {info['vocab_size']}")
        lines.append(f"  parameters        {info['num_parameters']:,} in {info['num_tensors']} tensors ({info['size_bytes'] / 1e9:.2f} GB)")
        lines.append("  dtypes            " + ", ".join(f"{k}: {v:,}" for k, v in info["dtypes"].items()))
    else:
        lines.append(f"  LoRA adapter      r={info['r']}, alpha={info['lora_alpha']}, rsLoRA={'yes' if info['use_rslora'] else 'no'}")
        lines.append(f"  base model        {info['base_model']}")
        lines.append(f"  target modules    {', '.join(info['target_modules'])}")
        lines.append(f"  adapted layers    {info['adapted_layers']}")
        lines.append(f"  parameters        {info['num_parameters']:,}")
    lines.append("  parameters per layer:")
    for layer, n in info["parameters_per_layer"].items():
        lines.append(f"    {layer:>4}  {n:>14,}")
    lines.append("  parameters per module kind:")
    for module, n in info["parameters_per_module"].items():
        lines.append(f"    {module:<28} {n:>14,}")
    return "\n".join(lines)
