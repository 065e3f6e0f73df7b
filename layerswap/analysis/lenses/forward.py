"""One forward pass per model, shared by every activation lens, with hidden states reduced on the fly.

The base and each expert are loaded one at a time and run (``torch.inference_mode``, batched) over
each task's tokens, which the base tokenizer cut once, so every model sees the same tokens at the
same positions. Forward hooks on each decoder layer (its output: ``residual``), its attention and
its MLP (their outputs: ``attn``, ``mlp``), the embeddings (``embed``) and the MLP's gate
projection (``gate``) hand each probe only what it asked for, on the device the module ran on; the
probes keep reductions (a few hundred sampled rows, counts, sums), never whole hidden states. The
backbone runs without the output layer: the logit lens decodes only the positions it samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from layerswap.errors import ConfigError
from layerswap.io import Checkpoint, DeltaView, LoraAdapter, ModelFolder
from layerswap.progress import bar

WHERE = ("embed", "attn", "mlp", "residual", "gate")


@dataclass
class Batch:
    """One batch of a data set: its tokens and the flat positions (``b * T + t``) the probes read."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    sample: torch.Tensor  # flat positions sampled for representation statistics (CKA)
    logit: torch.Tensor  # flat positions decoded by the logit lens (each has a next token)
    gold: torch.Tensor  # the next token at each ``logit`` position


@dataclass
class TokenSet:
    """A data set cut into batches, with the same sampled positions for every model."""

    name: str
    batches: list[Batch]
    tokens: int  # non-padding tokens in all

    @property
    def sampled(self) -> int:
        return sum(len(b.sample) for b in self.batches)


def _spread(count: int, k: int) -> torch.Tensor:
    """``k`` indices of ``range(count)`` spread evenly (all of them when ``k >= count``)."""
    if k >= count:
        return torch.arange(count)
    return torch.linspace(0, count - 1, k).round().long().unique()


def tokenize(
    name: str,
    texts: Sequence[str],
    tokenizer: Any,
    *,
    batch_size: int,
    seq_len: int,
    sample: int,
    logit: int | None,
    decodes: int = 1,
) -> TokenSet:
    """Cut ``texts`` into batches and choose the positions the probes read (evenly over the whole set).

    ``logit=None`` chooses as many logit-lens positions as keep its cost at one output layer's worth
    for the set: ``tokens // decodes`` (``decodes``: the hidden states decoded per position, layers + 1), at least 8.
    """
    encs = [
        tokenizer(list(texts[i : i + batch_size]), return_tensors="pt", padding=True, truncation=True, max_length=seq_len)
        for i in range(0, len(texts), batch_size)
    ]
    masks = [e["attention_mask"].bool() for e in encs]
    flat = [m.reshape(-1).nonzero().squeeze(1) for m in masks]
    # a position can be decoded by the logit lens when the next one in its row is a token too
    has_next = [torch.cat([m[:, 1:], torch.zeros_like(m[:, :1])], dim=1).reshape(-1).nonzero().squeeze(1) for m in masks]
    chosen_sample = _chosen(flat, sample)
    if logit is None:
        logit = max(8, sum(len(f) for f in flat) // decodes)
    chosen_logit = _chosen(has_next, logit)
    batches = []
    for e, s, lg in zip(encs, chosen_sample, chosen_logit, strict=True):
        ids = e["input_ids"]
        batches.append(Batch(ids, e["attention_mask"], s, lg, ids.reshape(-1)[lg + 1]))
    return TokenSet(name, batches, int(sum(len(f) for f in flat)))


def _chosen(per_batch: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """``k`` of the concatenated positions, spread evenly, split back per batch."""
    sizes = [len(p) for p in per_batch]
    picks = _spread(sum(sizes), k)
    out, start = [], 0
    for p, n in zip(per_batch, sizes, strict=True):
        local = picks[(picks >= start) & (picks < start + n)] - start
        out.append(p[local])
        start += n
    return out


class Probe(Protocol):
    """What an activation lens keeps while the models run."""

    name: str

    def wants(self, model: str, data: str) -> frozenset[str]:
        """Which hook points (:data:`WHERE`) it reads for this model on this data set (empty: none)."""

    def update(self, model: str, data: str, where: str, layer: int, hidden: torch.Tensor, batch: Batch) -> None:
        """Reduce one hook's output (``(B, T, ...)``, on its module's device) for one batch."""

    def end_model(self, model: str) -> None:
        """The model has seen every data set: turn what was kept into its final form."""


@dataclass
class Decoder:
    """The final norm and the output layer, for decoding hidden states at any layer (the logit lens)."""

    norm: torch.nn.Module
    head: torch.nn.Module
    softcap: float | None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        norm_device = next(self.norm.parameters(), self.head.weight).device  # with a device map they may differ
        logits = self.head(self.norm(hidden.to(norm_device)).to(self.head.weight.device)).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


@dataclass
class Pass:
    """The probes of one analysis and the data they read; :meth:`run` makes the one pass per model."""

    probes: list[Probe]
    data: dict[str, TokenSet]
    seconds: dict[str, float] = field(default_factory=dict)
    decoders: dict[str, Decoder] = field(default_factory=dict)  # the current model's, by model name

    def probe(self, name: str) -> Any:
        return next(p for p in self.probes if p.name == name)

    def run(self, models: Mapping[str, Callable[[], torch.nn.Module]]) -> None:
        import time

        for model_name, load in models.items():
            plan = {d: frozenset().union(*(p.wants(model_name, d) for p in self.probes)) for d in self.data}
            if not any(plan.values()):
                continue
            started = time.perf_counter()
            model = load()
            self.decoders[model_name] = decoder_of(model)
            for data_name, where in plan.items():
                if where:
                    self._run_one(model, model_name, self.data[data_name], where)
            for probe in self.probes:
                probe.end_model(model_name)
            del model
            self.decoders.pop(model_name, None)
            self.seconds[model_name] = round(time.perf_counter() - started, 2)

    def _run_one(self, model: torch.nn.Module, model_name: str, tokens: TokenSet, where: frozenset[str]) -> None:
        backbone = model.get_decoder()
        device = backbone.get_input_embeddings().weight.device
        state: dict[str, Batch] = {}
        wanted = {p.name: p.wants(model_name, tokens.name) for p in self.probes}

        def emit(point: str, layer: int):  # noqa: ANN202
            def hook(module, args, output):  # noqa: ANN001, ANN202, ARG001
                hidden = output[0] if isinstance(output, tuple) else output
                for probe in self.probes:
                    if point in wanted[probe.name]:
                        probe.update(model_name, tokens.name, point, layer, hidden, state["batch"])

            return hook

        with (
            _hooks(backbone, where, emit),
            torch.inference_mode(),
            bar(desc=f"lenses: {model_name} on {tokens.name}", total=len(tokens.batches), unit="batch") as progress,
        ):
            for batch in tokens.batches:
                state["batch"] = batch
                backbone(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), use_cache=False)
                progress.update(1)


def decoder_of(model: torch.nn.Module) -> Decoder:
    backbone = model.get_decoder()
    norm = getattr(backbone, "norm", None)
    head = model.get_output_embeddings()
    if norm is None or head is None:
        raise ConfigError(f"{type(model).__name__} has no final norm and output layer where the logit lens expects them")
    return Decoder(norm, head, getattr(model.config, "final_logit_softcapping", None))


@contextmanager
def _hooks(backbone: torch.nn.Module, where: frozenset[str], emit: Callable[[str, int], Any]) -> Iterator[None]:
    handles = []
    try:
        if "embed" in where:
            handles.append(backbone.get_input_embeddings().register_forward_hook(emit("embed", -1)))
        for i, layer in enumerate(backbone.layers):
            targets = {"residual": layer, "attn": getattr(layer, "self_attn", None), "mlp": getattr(layer, "mlp", None)}
            targets["gate"] = getattr(targets["mlp"], "gate_proj", None)
            for point in where - {"embed"}:
                if targets.get(point) is None:
                    raise ConfigError(f"layer {i} of {type(backbone).__name__} has no {point} module where the lenses hook")
                handles.append(targets[point].register_forward_hook(emit(point, i)))
        yield
    finally:
        for h in handles:
            h.remove()


def has_gate(model_folder: ModelFolder) -> bool:
    """Whether the MLPs are gated with a separate ``gate_proj`` (LAPE reads its sign)."""
    return any(name.endswith("mlp.gate_proj.weight") for name in model_folder.names())


def load_tokenizer(path: Any) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def model_loader(
    base: ModelFolder, expert: Checkpoint | None, device: str, dtype: torch.dtype = torch.float32
) -> Callable[[], torch.nn.Module]:
    """A function loading the base, a full expert, or the base with a LoRA adapter's deltas added (in memory).

    ``device="auto"`` places the model with accelerate's ``device_map="auto"`` (several GPUs or
    CPU offload); the hooks then see each layer's output on the device it ran on.
    """

    def load() -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        folder = base if expert is None or isinstance(expert, LoraAdapter) else expert
        folder.check_transformers_names()  # safetensors only: transformers never falls back to a pickle
        placement = {"device_map": "auto"} if device == "auto" else {}
        model = AutoModelForCausalLM.from_pretrained(folder.path, dtype=dtype, use_safetensors=True, **placement)
        if isinstance(expert, LoraAdapter):
            view = DeltaView(expert, base, label=f"adapter {expert.path}")
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name in expert.names():
                    delta = view.delta(name)
                    if delta is not None and name in params:
                        params[name].add_(delta.to(params[name].device, params[name].dtype))
        if device != "auto":
            model = model.to(device)
        return model.eval()

    return load
