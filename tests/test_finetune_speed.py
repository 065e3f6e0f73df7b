"""The masked-head loss (output layer at labelled positions only) equals the standard loss and gradients."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from layerswap.finetune import FinetuneConfig, finetune
from layerswap.finetune.loss import SUPPORTED, install, masked_head, masked_head_loss, uninstall, why_not
from layerswap.testing import tiny_config

VOCAB = 96


def _model(arch: str, lora: bool):
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, vocab_size=VOCAB, layers=3)
    if arch == "gemma3":
        config.final_logit_softcapping = 3.0  # small, so the cap bends the logits of this tiny model
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).float()
    for p in model.get_output_embeddings().parameters():  # random init is near zero: make the head count
        torch.nn.init.normal_(p, std=0.5)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
        )
    model.train()
    return model


def _batch(seed: int, rows: int = 3, width: int = 12) -> dict[str, torch.Tensor]:
    """Right-padded rows with a masked prompt, a labelled completion and padding (label -100)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, width), generator=g)
    labels = ids.clone()
    mask = torch.ones_like(ids)
    for r in range(rows):
        prompt, length = 2 + r, width - 2 * r
        labels[r, :prompt] = -100
        labels[r, length:] = -100
        mask[r, length:] = 0
        ids[r, length:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _loss_and_grads(model, batches, num_items, masked: bool):
    model.zero_grad(set_to_none=True)
    losses = []
    for batch in batches:
        if masked:
            from layerswap.finetune.loss import core_causal_lm

            loss = masked_head_loss(
                core_causal_lm(model),
                batch["input_ids"],
                batch["labels"],
                attention_mask=batch["attention_mask"],
                num_items_in_batch=num_items,
            )
        else:
            loss = model(**batch, **({"num_items_in_batch": num_items} if num_items is not None else {})).loss
        loss.backward()
        losses.append(loss.detach())
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return losses, grads


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("accumulate", [False, True], ids=["mean", "num_items"])
@pytest.mark.parametrize("chunk", [None, 4], ids=["one-chunk", "chunked"])
def test_masked_head_loss_and_gradients_equal_the_standard_path(arch, lora, accumulate, chunk, monkeypatch):
    """Same loss and gradients as transformers' ForCausalLMLoss: per micro-batch mean, or two
    accumulated micro-batches each divided by the labelled tokens of both (num_items_in_batch);
    also when the labelled rows go through the output layer in chunks (the head's own weights trained too)."""
    if chunk is not None:
        from layerswap.io import head_loss

        monkeypatch.setattr(head_loss, "HEAD_CHUNK", chunk)
    model = _model(arch, lora)
    if chunk is not None and not lora:  # the head's weight (tied to the embeddings) gets its gradient through the chunks
        assert model.get_output_embeddings().weight.requires_grad
    assert why_not(model) is None
    batches = [_batch(1), _batch(2)] if accumulate else [_batch(1)]
    num_items = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches) if accumulate else None
    if accumulate:
        num_items = torch.tensor(num_items)
    ref_losses, ref_grads = _loss_and_grads(model, batches, num_items, masked=False)
    new_losses, new_grads = _loss_and_grads(model, batches, num_items, masked=True)
    assert ref_grads and ref_grads.keys() == new_grads.keys()
    for a, b in zip(ref_losses, new_losses, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for name, g in ref_grads.items():
        torch.testing.assert_close(new_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    if lora:
        assert any("lora_" in n for n in new_grads) and not any("lora_" not in n for n in new_grads)


def test_softcapping_is_applied():
    """Gemma's final soft-capping is in the masked path: without it the loss would differ."""
    model = _model("gemma3", lora=False)
    batch = _batch(3)
    ref = model(**batch).loss
    assert torch.allclose(
        masked_head_loss(model, batch["input_ids"], batch["labels"], attention_mask=batch["attention_mask"]), ref, atol=1e-6
    )
    model.config.final_logit_softcapping = None
    assert not torch.allclose(
        masked_head_loss(model, batch["input_ids"], batch["labels"], attention_mask=batch["attention_mask"]), ref, atol=1e-4
    )


def test_installed_forward_takes_the_fast_path_in_training_only():
    """Through PEFT's wrapper: training with labels -> loss only (no logits), same value; eval -> the original forward."""
    model = _model("llama", lora=True)
    batch = _batch(4)
    ref = model(**batch)
    with masked_head(model) as active:
        assert active
        out = model(**batch)
        assert out.logits is None and torch.allclose(out.loss, ref.loss, atol=1e-6)
        model.eval()
        with torch.no_grad():
            assert model(**batch).logits is not None
        model.train()
        assert model(**batch, output_hidden_states=True).logits is not None  # unusual request: standard path
    assert "forward" not in vars(model.get_base_model())  # restored
    assert install(model) and install(model)  # idempotent
    uninstall(model)
    assert "forward" not in vars(model.get_base_model())


def test_unsupported_architectures_keep_the_standard_path():
    class Other(torch.nn.Module):
        pass

    assert "not among" in why_not(Other())
    with masked_head(Other()) as active:
        assert not active
    assert "LlamaForCausalLM" in SUPPORTED and "Gemma3ForCausalLM" in SUPPORTED


def _losses(out: Path) -> list[float]:
    with open(out / "loss.csv") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def qa_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("speed") / "qa.jsonl"
    rows = [{"question": f"What is {i} plus {i * 3}?", "answer": f"{i} + {i * 3} = {4 * i}\n#### {4 * i}"} for i in range(8)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (path.parent / "sw.txt").write_text("Habari za asubuhi. Leo ni siku nzuri sana kwa kusoma.\nJuma ana machungwa manne.\n" * 4)
    return path


@pytest.mark.parametrize(
    "arch,settings",
    [
        ("llama", {"train_layers": "1-3", "grad_accum": 2}),
        ("gemma3", {"method": "lora", "grad_accum": 2}),
        ("llama", {"mode": "simultaneous", "partition": {"math": "0-2", "lang": "3-5"}}),
    ],
    ids=["frozen-layers-accumulated", "gemma3-lora", "simultaneous"],
)
def test_training_runs_give_the_same_losses(arch, settings, request, qa_data, tmp_path, monkeypatch):
    """A short run with the masked head and one without it log the same losses, step by step."""
    base = request.getfixturevalue(f"tiny_{arch}")
    data = {"math": str(qa_data), "lang": str(qa_data.parent / "sw.txt")} if settings.get("mode") else [str(qa_data)]
    from transformers import TrainerCallback

    from layerswap.finetune.loss import core_causal_lm

    seen = []

    class Watch(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kw):  # noqa: ANN001
            seen.append("forward" in vars(core_causal_lm(model)))

    runs = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("LAYERSWAP_MASKED_HEAD", flag)
        seen.clear()
        config = FinetuneConfig(
            base=str(base),
            data=data,
            out=str(tmp_path / flag),
            steps=4,
            batch_size=2,
            seq_len=48,
            lr=3e-3,
            quiet=True,
            **settings,
        )
        runs[flag] = _losses(finetune(config, callbacks=[Watch()]))
        assert seen == [flag == "1"] * 4  # the masked head was in place (or not) at every step
    assert len(runs["1"]) == 4
    assert runs["1"] == pytest.approx(runs["0"], rel=1e-4, abs=1e-5)


def test_math_completions_end_with_the_answer_sentence_the_evaluation_reads(data_dir):
    """GSM8K train is trained as MGSM's English CoT answers, the very text the CoT proxy scores on GSM8K test."""
    from layerswap.evaluate.tasks.proxy_cot import en_cot_solution
    from layerswap.finetune.data import answer_sentence
    from layerswap.io.records import load_records

    raw = [json.loads(line) for line in (data_dir / "gsm8k" / "train.jsonl").read_text().splitlines()[:300]]
    pairs = load_records("gsm8k?limit=300", data_dir=data_dir).pairs
    assert all(answer_sentence(c) == " " + en_cot_solution(r["answer"]) for (_, c), r in zip(pairs, raw, strict=True))
    assert answer_sentence(" 3 + 2 = 5\n#### 1,000") == " 3 + 2 = 5 The answer is 1000."
    assert answer_sentence(" no final line") == " no final line"
