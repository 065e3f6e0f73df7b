"""Which parameters train: partitions by transformer layer and module kind.

Freezing is ``requires_grad=False`` on everything outside the partition, so autograd never
computes those gradients (no backward at all below the lowest trainable layer when embeddings
are frozen too) and the optimizer holds state only for what trains. For LoRA, the same
partition chooses where adapters go (``layers_to_transform``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from layerswap.errors import ConfigError
from layerswap.io import GLOBAL_MODULES, LAYER_MODULE_ORDER, Architecture, parse_layer_spec

#: Shorthand groups for ``--train-modules`` / ``--lora-targets``.
MODULE_GROUPS: dict[str, tuple[str, ...]] = {
    "attention": ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "q_norm", "k_norm"),
    "mlp": ("gate_proj", "up_proj", "gate_up_proj", "down_proj"),
    "norms": ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"),
}
#: Linear projections LoRA can wrap (the default LoRA targets are those present in the model).
LINEAR_MODULES: tuple[str, ...] = tuple(m for m in LAYER_MODULE_ORDER if m.endswith("_proj"))


@dataclass(frozen=True)
class Partition:
    """A trainable set: ``layers``, module kinds inside them (None: all), and global modules."""

    layers: tuple[int, ...]
    modules: tuple[str, ...] | None = None
    global_modules: tuple[str, ...] = ()

    def trains(self, layer: int | None, module: str) -> bool:
        if layer is None:
            return module in self.global_modules
        return layer in self.layers and (self.modules is None or module in self.modules)

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "modules": list(self.modules) if self.modules is not None else None,
            "global": list(self.global_modules),
        }


def expand_modules(names: Iterable[str], present: set[str], *, option: str) -> tuple[str, ...]:
    """Expand groups (attention, mlp, norms) and check each kind exists in the model."""
    out: list[str] = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        kinds = [k for k in MODULE_GROUPS[name] if k in present] if name in MODULE_GROUPS else [name]
        for kind in kinds:
            if kind not in present:
                raise ConfigError(
                    f"{option} {name!r} is not a module of this model: it has {', '.join(sorted(present))} (or groups {', '.join(MODULE_GROUPS)})"
                )
            if kind not in out:
                out.append(kind)
    if not out:
        raise ConfigError(f"{option} names no module: pass e.g. {option} attention or {option} q_proj,v_proj")
    return tuple(out)


def resolve_partition(
    arch: Architecture,
    present_modules: set[str],
    *,
    train_layers: str | None = None,
    freeze_layers: str | None = None,
    train_modules: Sequence[str] | None = None,
    train_global: Sequence[str] | None = None,
) -> Partition:
    """Turn the CLI/YAML choices into a :class:`Partition`.

    No layer choice: every layer trains, and the global modules too unless ``train_global`` says
    otherwise. A layer choice freezes the global modules (embeddings, final norm, LM head) unless
    ``train_global`` names them, so frozen bottom layers really skip the backward pass.
    """
    n = arch.num_layers
    if train_layers and freeze_layers:
        raise ConfigError("pass either --train-layers or --freeze-layers, not both")
    if train_layers:
        layers = parse_layer_spec(train_layers, n)
    elif freeze_layers:
        frozen = set(parse_layer_spec(freeze_layers, n))
        layers = [i for i in range(n) if i not in frozen]
    else:
        layers = list(range(n))
    modules = expand_modules(train_modules, present_modules, option="--train-modules") if train_modules else None
    if train_global is None:
        glob: tuple[str, ...] = GLOBAL_MODULES if not (train_layers or freeze_layers or train_modules) else ()
    else:
        items = [g.strip() for g in train_global if g.strip() and g.strip() != "none"]
        if "all" in items:
            items = list(GLOBAL_MODULES)
        bad = [g for g in items if g not in GLOBAL_MODULES]
        if bad:
            raise ConfigError(f"--train-global {bad[0]!r} is not a global module: use {', '.join(GLOBAL_MODULES)}, all or none")
        glob = tuple(g for g in GLOBAL_MODULES if g in items)
    if arch.tied_embeddings and (("embed_tokens" in glob) != ("lm_head" in glob)):
        raise ConfigError(
            "this model ties embed_tokens and lm_head (one tensor): train both or neither (--train-global embed_tokens,lm_head)"
        )
    if not layers and not glob:
        raise ConfigError(f"the partition trains nothing: the model has layers 0..{n - 1}")
    return Partition(tuple(layers), modules, glob)


def partition_parameters(model: Any, arch: Architecture, partition: Partition) -> dict[str, Any]:
    """Named parameters of ``model`` that ``partition`` trains (tied tensors appear once)."""
    return {name: p for name, p in model.named_parameters() if partition.trains(*_role(arch, name))}


def _role(arch: Architecture, name: str) -> tuple[int | None, str]:
    role = arch.classify(name)
    return role.layer, role.module


def apply_partition(model: Any, arch: Architecture, partition: Partition) -> dict[str, int]:
    """Set ``requires_grad`` to train exactly ``partition``; return parameter counts."""
    trainable = frozen = 0
    for name, p in model.named_parameters():
        train = partition.trains(*_role(arch, name))
        p.requires_grad_(train)
        if train:
            trainable += p.numel()
        else:
            frozen += p.numel()
    if trainable == 0:
        raise ConfigError("the partition matches no parameter of this model: check --train-layers/--train-modules")
    return {"trainable_parameters": trainable, "frozen_parameters": frozen}


def lora_target_modules(present: set[str], partition: Partition, lora_targets: Sequence[str] | None) -> list[str]:
    """LoRA targets: ``lora_targets`` if given, else the partition's linear modules, else all linear ones."""
    if lora_targets:
        chosen = expand_modules(lora_targets, present, option="--lora-targets")
    elif partition.modules is not None:
        chosen = partition.modules
    else:
        chosen = tuple(m for m in LINEAR_MODULES if m in present)
    linear = [m for m in chosen if m in LINEAR_MODULES]
    if not linear:
        raise ConfigError(f"no linear module to put LoRA on among {', '.join(chosen)}: use e.g. --lora-targets q_proj,v_proj")
    return linear
