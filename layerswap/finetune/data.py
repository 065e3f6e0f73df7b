"""Records -> tokenized training examples, and the batching of fine-tuning (collator, samplers).

Specs and records are the core's (:mod:`layerswap.io.records`: ``parse_spec``, ``load_records``,
the refusal of evaluation sets); this module is what fine-tuning adds to them. Prompt/completion
examples carry labels -100 on the prompt so the loss is on the completion only; the model's chat
template wraps them when it has one. Math worked solutions are written as MGSM's English
chain-of-thought answers (:func:`answer_sentence`). Text is packed into ``seq_len`` blocks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from layerswap.errors import ConfigError, DataError
from layerswap.io.records import Records, load_records, parse_spec

IGNORE_INDEX = -100


def answer_sentence(completion: str) -> str:
    """A GSM8K worked solution as MGSM's English CoT exemplars write it, the format its evaluation reads.

    ``"... 48/2 = 24 clips in May.\\n...\\n#### 72"`` -> ``"... 48/2 = 24 clips in May. ... The answer is 72."``:
    the steps joined on one line and the ``#### N`` line replaced by the answer sentence that MGSM's
    strict pattern (``The answer is N``) and the CoT proxy read (the same text as
    ``layerswap.evaluate.tasks.proxy_cot.en_cot_solution``, tested). A completion without ``#### N``
    is returned unchanged.
    """
    head, sep, tail = completion.rpartition("####")
    if not sep or not tail.strip():
        return completion
    number = tail.strip().replace("$", "").replace(",", "").rstrip(".")
    if re.fullmatch(r"-?\d+\.0+", number):
        number = number.split(".")[0]
    steps = " ".join(line.strip() for line in head.splitlines() if line.strip())
    lead = " " if completion.startswith(" ") else ""
    return lead + f"{steps} The answer is {number}.".strip()


# --------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------


@dataclass
class TokenizedData(torch.utils.data.Dataset):
    """Tokenized examples (``input_ids``/``labels`` lists) of one source, with counts for provenance."""

    name: str
    spec: str
    format: str
    examples: list[dict[str, list[int]]]
    truncated: int = 0
    dropped: int = 0
    chat_template: bool = False

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.examples[i]

    @property
    def num_tokens(self) -> int:
        return sum(len(e["input_ids"]) for e in self.examples)

    @property
    def num_loss_tokens(self) -> int:
        return sum(sum(1 for t in e["labels"] if t != IGNORE_INDEX) for e in self.examples)

    def summary(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "format": self.format,
            "examples": len(self),
            "tokens": self.num_tokens,
            "loss_tokens": self.num_loss_tokens,
            "truncated": self.truncated,
            "dropped_too_long": self.dropped,
            "chat_template": self.chat_template,
        }


def _use_chat_template(tokenizer: Any, choice: str) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if choice == "auto":
        return has
    if choice in ("yes", "true", "on", "1"):
        if not has:
            raise ConfigError("chat_template=yes but the tokenizer has no chat template: use auto or no")
        return True
    if choice in ("no", "false", "off", "0"):
        return False
    raise ConfigError(f"chat_template must be auto, yes or no, not {choice!r}")


#: Seconds one chat-template rendering may take (a real one takes milliseconds; a hostile one loops).
CHAT_TEMPLATE_SECONDS = 10.0


def _render(tokenizer: Any, messages: list[dict[str, str]], **kwargs: Any) -> str:
    """The tokenizer's chat template applied to ``messages`` as text: a template that raises, or runs past
    :data:`CHAT_TEMPLATE_SECONDS` (enforced with a timer in the main thread), is one line."""
    import signal
    import threading

    def too_long(*_: Any) -> None:
        raise TimeoutError

    timed = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    previous = signal.signal(signal.SIGALRM, too_long) if timed else None
    try:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, CHAT_TEMPLATE_SECONDS)
        return str(tokenizer.apply_chat_template(messages, tokenize=False, **kwargs))
    except TimeoutError:
        raise DataError(
            f"the tokenizer's chat template did not finish rendering one example in {CHAT_TEMPLATE_SECONDS:g} s: "
            "fix the template or pass chat_template=no"
        ) from None
    except Exception as exc:  # noqa: BLE001 (jinja raises anything the template does)
        raise DataError(
            f"the tokenizer's chat template fails on an example ({type(exc).__name__}: {str(exc)[:80]}): "
            "fix the template or pass chat_template=no"
        ) from None
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def _prompt_completion_ids(tokenizer: Any, prompt: str, completion: str, chat: bool) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (with BOS) and of the completion (with the end-of-turn/EOS)."""
    if chat:
        messages = [{"role": "user", "content": prompt.strip()}]
        head = _render(tokenizer, messages, add_generation_prompt=True)
        full = _render(tokenizer, messages + [{"role": "assistant", "content": completion.strip()}])
        if not full.startswith(head):
            raise DataError("the chat template renders the prompt differently inside a conversation: pass chat_template=no")
        p = tokenizer(head, add_special_tokens=False)["input_ids"]
        c = tokenizer(full[len(head) :], add_special_tokens=False)["input_ids"]
        return list(p), list(c)
    p = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    c = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        c.append(tokenizer.eos_token_id)
    return p, c


def tokenize_records(
    records: Records,
    tokenizer: Any,
    seq_len: int,
    *,
    name: str = "train",
    spec: str = "",
    chat_template: str = "auto",
) -> TokenizedData:
    """Prompt/completion -> one example each (prompt labels masked); text -> packed ``seq_len`` blocks."""
    if seq_len < 2:
        raise ConfigError(f"seq_len {seq_len} is too short: use at least 2 (e.g. 256)")
    examples: list[dict[str, list[int]]] = []
    truncated = dropped = 0
    chat = False
    if records.format == "text":
        stream: list[int] = []
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        for text in records.texts:
            stream.extend(bos + list(tokenizer(text, add_special_tokens=False)["input_ids"]) + eos)
        for start in range(0, len(stream), seq_len):
            block = stream[start : start + seq_len]
            if len(block) >= 2:
                examples.append({"input_ids": block, "labels": list(block)})
    else:
        chat = _use_chat_template(tokenizer, chat_template)
        for prompt, completion in records.pairs:
            if records.format == "math":
                completion = answer_sentence(completion)
            p, c = _prompt_completion_ids(tokenizer, prompt, completion, chat)
            if len(p) >= seq_len:
                dropped += 1
                continue
            if len(p) + len(c) > seq_len:
                truncated += 1
                c = c[: seq_len - len(p)]
            examples.append({"input_ids": p + c, "labels": [IGNORE_INDEX] * len(p) + c})
    if not examples:
        why = f" ({dropped} prompts longer than seq_len {seq_len})" if dropped else ""
        raise DataError(f"data spec {spec or records.origin!r} gives no training examples{why}: check the data or raise seq_len")
    return TokenizedData(name, spec or records.origin, records.format, examples, truncated, dropped, chat)


def load_dataset(
    spec: str,
    tokenizer: Any,
    seq_len: int,
    *,
    name: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    chat_template: str = "auto",
) -> TokenizedData:
    """Resolve, read and tokenize one spec."""
    parsed = parse_spec(spec)
    records = load_records(parsed, data_dir=data_dir)
    choice = parsed.options.get("chat_template", chat_template)
    return tokenize_records(records, tokenizer, seq_len, name=name, spec=parsed.raw, chat_template=choice)


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------


@dataclass
class Collator:
    """Right-pad a batch to its longest example; pads get label -100 and attention 0.

    ``group`` (the index of the dataset an example came from) is passed through for
    simultaneous training, which picks the partition to update from it.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, batch: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in batch)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        ids = torch.full((len(batch), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for i, e in enumerate(batch):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.tensor(e["labels"], dtype=torch.long)
            mask[i, :n] = 1
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if "group" in batch[0]:
            groups = {int(e["group"]) for e in batch}
            if len(groups) != 1:
                raise RuntimeError("a simultaneous-training batch mixes data groups")
            out["group"] = torch.tensor(groups.pop())
        return out


class GroupedDataset(torch.utils.data.Dataset):
    """Several tokenized sets behind one index; each item says which set (``group``) it came from."""

    def __init__(self, parts: Sequence[TokenizedData]) -> None:
        self.parts = list(parts)
        self.offsets: list[int] = []
        total = 0
        for part in self.parts:
            self.offsets.append(total)
            total += len(part)
        self.total = total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, i: int) -> dict[str, Any]:
        for g in range(len(self.parts) - 1, -1, -1):
            if i >= self.offsets[g]:
                item = dict(self.parts[g][i - self.offsets[g]])
                item["group"] = g
                return item
        raise IndexError(i)

    def indices_of(self, group: int) -> range:
        return range(self.offsets[group], self.offsets[group] + len(self.parts[group]))


class AlternatingBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches for simultaneous training: every optimizer step draws all its micro-batches from one group.

    ``schedule`` lists the group of each optimizer step in a cycle (``ratio`` math=2, lang=1 ->
    [0, 1, 0]). Each micro-batch is repeated for every data-parallel process (with different
    examples), so under DDP ``accelerate``'s batch sharding hands all processes the same group
    at the same step. Deterministic in ``seed``: a resumed run sees the same batches.
    """

    def __init__(
        self,
        dataset: GroupedDataset,
        schedule: Sequence[int],
        *,
        batch_size: int,
        grad_accum: int,
        steps: int,
        num_processes: int = 1,
        seed: int = 0,
    ) -> None:
        self.dataset = dataset
        self.schedule = list(schedule)
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.steps = steps
        self.num_processes = num_processes
        self.seed = seed

    def __len__(self) -> int:
        return self.steps * self.grad_accum * self.num_processes

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed)
        orders: dict[int, list[int]] = {}
        cursor: dict[int, int] = {}

        def take(group: int) -> list[int]:
            idx = self.dataset.indices_of(group)
            out = []
            while len(out) < self.batch_size:
                if cursor.get(group, len(idx)) >= len(idx):
                    orders[group] = [idx[j] for j in torch.randperm(len(idx), generator=gen).tolist()]
                    cursor[group] = 0
                out.append(orders[group][cursor[group]])
                cursor[group] += 1
            return out

        for step in range(self.steps):
            group = self.schedule[step % len(self.schedule)]
            for _ in range(self.grad_accum * self.num_processes):
                yield take(group)
