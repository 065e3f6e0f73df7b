"""Writing a fine-tune's output, atomically, with its provenance and loss curve.

A full fine-tune is a Hugging Face folder whose frozen tensors are byte copies of the base (so they
are bit-identical by construction) and whose trained tensors keep the base's dtype; a LoRA run is a
PEFT adapter (optionally plus ``merged/``). Both carry ``layerswap.json`` (partition, data,
hyper-parameters) and ``loss.csv``/``loss.png`` (and ``runs/`` with ``--report-to tensorboard``).
Under ``accelerate launch`` only the main process calls this.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from layerswap.errors import CheckpointError
from layerswap.finetune.config import FinetuneConfig
from layerswap.io import AtomicDir, ModelFolder, ShardedWriter, TensorSpec, write_provenance


def save_output(
    cfg: FinetuneConfig,
    out: Path,
    model: Any,
    tokenizer: Any,
    base: ModelFolder,
    trainable_names: set[str],
    provenance: dict[str, Any],
    log_history: Sequence[dict[str, Any]],
    group_of_step: Callable[[int], str],
    *,
    logs: Path | None = None,
    state: Mapping[str, Any] | None = None,
) -> None:
    """Write ``out`` in one rename: the model or adapter, the tokenizer, provenance and loss curve.

    ``logs``: the run's local logging folder, kept under its own name: TensorBoard's event files
    (``OUT.work/runs`` -> ``OUT/runs``) or W&B's run files (``OUT.work/wandb`` -> ``OUT/wandb``; with
    ``WANDB_MODE=offline`` the only copy, so it must survive the work folder's removal).
    ``state``: the model's full state dict where it is sharded (FSDP, ZeRO-3: gathered by every
    process); else the model's own ``state_dict()`` is read."""
    with AtomicDir(out, overwrite=cfg.overwrite) as tmp:
        if cfg.method == "full":
            write_full(model, base, trainable_names, tmp, provenance, state=state)
            if cfg.tokenizer or not (tmp / "tokenizer_config.json").exists():
                tokenizer.save_pretrained(tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": dict(state)} if state is not None else {}))
            adapter_cfg = tmp / "adapter_config.json"
            data = json.loads(adapter_cfg.read_text())
            data["base_model_name_or_path"] = str(base.path)
            adapter_cfg.write_text(json.dumps(data, indent=2))
            tokenizer.save_pretrained(tmp)
            if cfg.merge_lora:
                touched = lora_touched(model)
                merged = model.merge_and_unload()
                write_full(merged, base, touched, tmp / "merged", {**provenance, "kind": "finetune-lora-merged"})
            write_provenance(tmp, provenance)
        write_loss(log_history, group_of_step, tmp)
        if logs is not None and logs.is_dir():
            shutil.copytree(logs, tmp / logs.name)


def write_full(
    model: Any,
    base: ModelFolder,
    trainable: set[str],
    out: Path,
    provenance: dict[str, Any],
    *,
    state: Mapping[str, Any] | None = None,
) -> None:
    """Write the fine-tuned model: trained tensors in the base's dtype, frozen ones as byte copies of the base."""
    state = dict(state if state is not None else model.state_dict())
    missing = sorted(n for n in trainable if n not in base)
    if missing:
        raise CheckpointError(
            f"trained parameter {missing[0]!r} has no tensor of that name in the base checkpoint: cannot write it"
        )
    specs = []
    for name in base.names():
        info = base.info(name)
        specs.append(TensorSpec(name, info.dtype, info.shape))
    with ShardedWriter(out, specs, donor=base.path, provenance=provenance, overwrite=True) as writer:
        for name in base.names():
            info = base.info(name)
            if name in trainable:
                writer.write(name, state[name].detach())
            else:
                writer.copy_raw(name, info)


def lora_touched(peft_model: Any) -> set[str]:
    """Base tensor names that a LoRA adapter changes (``<module>.weight`` of each wrapped module)."""
    names = set()
    for mod_name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and len(getattr(module, "lora_A", {})):
            names.add(mod_name.removeprefix("base_model.model.") + ".weight")
    return names


def write_loss(log_history: Sequence[dict[str, Any]], group_of_step: Callable[[int], str], folder: Path) -> list[dict[str, Any]]:
    """``loss.csv`` and ``loss.png`` (one line per data group) from the Trainer's log history."""
    import pandas as pd

    rows = [
        {
            "step": h["step"],
            "group": group_of_step(h["step"]),
            "loss": h["loss"],
            "learning_rate": h.get("learning_rate"),
            "grad_norm": h.get("grad_norm"),
        }
        for h in log_history
        if "loss" in h and "step" in h
    ]
    frame = pd.DataFrame(rows, columns=["step", "group", "loss", "learning_rate", "grad_norm"])
    frame.to_csv(folder / "loss.csv", index=False)
    if rows:
        from layerswap.figures import pyplot

        plt = pyplot()

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for group, part in frame.groupby("group", sort=False):
            ax.plot(part["step"], part["loss"], marker="." if len(part) < 50 else None, label=str(group))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        if frame["group"].nunique() > 1:
            ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "loss.png", dpi=120)
        plt.close(fig)
    return rows
