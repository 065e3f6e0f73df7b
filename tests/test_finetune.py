"""Fine-tuning on tiny random models: loss falls, freezing is exact, partitions stay apart, resume works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import layer_of, raw_bytes  # noqa: E402  (qa_file, text_file: conftest fixtures)

import layerswap
from layerswap.errors import ConfigError, DataError, OutputExistsError
from layerswap.finetune import FinetuneConfig, finetune
from layerswap.finetune.config import ratio_schedule
from layerswap.finetune.data import IGNORE_INDEX, tokenize_records
from layerswap.io import ModelFolder, read_provenance
from layerswap.io.records import Records, load_records, math_pair, parse_spec


def cfg(base: Path, data, out: Path, **kw) -> FinetuneConfig:
    defaults = dict(steps=4, batch_size=4, seq_len=48, lr=3e-3, quiet=True, save_steps=100)
    defaults.update(kw)
    return FinetuneConfig(base=str(base), data=data, out=str(out), **defaults)


# ---------------------------------------------------------------------------- data


def test_completion_only_loss_masks_prompt(tiny_tokenizer):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer)
    records = Records("math", "test")
    records.pairs.append(math_pair("Janet has 3 apples and buys 2. How many?", "3 + 2 = <<3+2=5>>5\n#### 5"))
    data = tokenize_records(records, tok, 128)
    ex = data[0]
    prompt, completion = records.pairs[0]
    assert "<<" not in completion and completion.rstrip().endswith("#### 5")
    n_prompt = len(tok(prompt)["input_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert ex["input_ids"][-1] == tok.eos_token_id
    # trained as MGSM's English CoT answer: "3 + 2 = 5 The answer is 5." (the data module's answer_sentence)
    assert tok.decode(ex["input_ids"][n_prompt:], skip_special_tokens=True).strip() == "3 + 2 = 5 The answer is 5."


def test_text_is_packed(tiny_tokenizer, text_file):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer)
    data = tokenize_records(load_records(str(text_file)), tok, 16)
    assert all(len(e["input_ids"]) == 16 for e in data.examples[:-1])
    assert all(e["labels"] == e["input_ids"] for e in data.examples)
    assert data.num_loss_tokens == data.num_tokens


def test_spec_options_and_refusals(tmp_path, qa_file):
    spec = parse_spec("data.jsonl?prompt=q,completion=a,limit=3")
    assert spec.source == "data.jsonl" and spec.options == {"prompt": "q", "completion": "a", "limit": "3"}
    with pytest.raises(ConfigError, match="options are key=value"):
        parse_spec("data.jsonl?bogus=1")
    assert len(load_records(f"{qa_file}?limit=2")) == 2
    for bad in ("flores:sw", "sib200:sw", "mgsm:sw", "gsm8k:test"):
        with pytest.raises(DataError):
            load_records(bad, data_dir=tmp_path)
    leak = tmp_path / "gsm8k" / "test.jsonl"
    leak.parent.mkdir()
    leak.write_text(qa_file.read_text())
    with pytest.raises(DataError, match="GSM8K test"):
        load_records(str(leak))


def test_missing_field_names_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n')
    with pytest.raises(DataError, match=r"pairs\.jsonl line 2 lacks field 'completion'"):
        load_records(str(path))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no records"):
        load_records(str(empty))


def test_ratio_schedule():
    assert ratio_schedule(["math", "lang"], {}) == [0, 1]
    assert ratio_schedule(["math", "lang"], {"math": 2}) == [0, 1, 0]
    assert ratio_schedule(["math", "lang"], {"lang": 0}) == [0]


def test_config_checks_rules_between_options():
    """A config that validates can start: every rule between options fails at construction."""

    def refused(match: str, **kw) -> None:
        with pytest.raises(ConfigError, match=match):
            FinetuneConfig(**{"base": "b", "out": "o", "data": ["d"], **kw})

    two = {"data": {"math": "m.jsonl", "lang": "l.txt"}}
    refused("2 data sets given: pass --mode", **two)
    refused("mode single takes one data set", mode="single", **two)
    refused("mode simultaneous needs two or more", mode="simultaneous")
    refused("'math' is given twice", data=["math=a", "math=b"], mode="mix")
    refused("data set 'lang' has no --partition lang=LAYERS", mode="simultaneous", partition={"math": "1"}, **two)
    refused("--partition 'x' names no data set", mode="simultaneous", partition={"math": "1", "lang": "2", "x": "3"}, **two)
    refused("instead of --train-layers", mode="simultaneous", partition={"math": "1", "lang": "2"}, train_layers="1", **two)
    refused("--partition applies to --mode simultaneous", partition={"train": "1"})
    refused("--ratio applies to --mode simultaneous", mode="mix", ratio={"math": 2}, **two)
    refused("--ratio 'x' names no data set", mode="simultaneous", partition={"math": "1", "lang": "2"}, ratio={"x": 1}, **two)
    refused("non-negative count, not all zero", mode="simultaneous", partition={"math": "1", "lang": "2"}, ratio={"math": 0, "lang": 0}, **two)
    refused("either --train-layers or --freeze-layers", train_layers="1", freeze_layers="2")
    refused("--lora-targets/--merge-lora apply to --method lora", lora_targets="q_proj")
    refused("--lora-targets/--merge-lora apply to --method lora", merge_lora=True)
    refused("LoRA trains adapters only", method="lora", train_global="norm")
    FinetuneConfig(base="b", out="o", data=["d"], method="lora", train_global="none")  # saying none is fine
    with pytest.raises(ValueError, match="steps must be positive"):
        FinetuneConfig(base="b", out="o", data=["d"], steps=0)


# ---------------------------------------------------------------------------- training


def test_loss_falls_on_a_tiny_dataset(tiny_llama, qa_file, tmp_path):
    out = finetune(cfg(tiny_llama, [str(qa_file)], tmp_path / "all", steps=10, lr=1e-2, schedule="constant"))
    losses = [r["loss"] for r in prov_rows(out)]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    assert read_provenance(out)["partition"]["global"] == ["embed_tokens", "norm", "lm_head"]


def test_frozen_tensors_bit_identical(tiny_llama, qa_file, tmp_path):
    out = finetune(cfg(tiny_llama, [str(qa_file)], tmp_path / "math", steps=3, train_layers="1-3"))
    base, tuned = ModelFolder(tiny_llama), ModelFolder(out)
    assert base.names() == tuned.names()
    for name in base.names():
        same = raw_bytes(base, name) == raw_bytes(tuned, name)
        assert same == (layer_of(name) not in (1, 2, 3)), name
    prov = read_provenance(out)
    assert prov["partition"] == {"layers": [1, 2, 3], "modules": None, "global": []}
    assert prov["steps"] == 3 and prov["data"]["train"]["format"] == "math"
    assert (out / "loss.png").stat().st_size > 0 and len(prov_rows(out)) == 3
    assert not (tmp_path / "math.work").exists()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)  # loads as a normal HF folder


def prov_rows(out: Path) -> list[dict]:
    import pandas as pd

    return pd.read_csv(out / "loss.csv").to_dict("records")


def test_train_modules_and_embeddings(tiny_llama, qa_file, tmp_path):
    out = finetune(
        cfg(
            tiny_llama,
            [str(qa_file)],
            tmp_path / "attn",
            steps=2,
            train_layers="2",
            train_modules=["attention"],
            train_global=["norm"],
        )
    )
    base, tuned = ModelFolder(tiny_llama), ModelFolder(out)
    changed = {n for n in base.names() if raw_bytes(base, n) != raw_bytes(tuned, n)}
    assert changed == {f"model.layers.2.self_attn.{m}_proj.weight" for m in "qkvo"} | {"model.norm.weight"}


def test_lora_only_on_chosen_layers_and_merge(tiny_llama, qa_file, tmp_path):
    from safetensors import safe_open

    out = finetune(
        cfg(
            tiny_llama,
            [str(qa_file)],
            tmp_path / "lora",
            method="lora",
            steps=3,
            train_layers="1,4",
            lora_targets=["q_proj", "v_proj"],
            merge_lora=True,
        )
    )
    with safe_open(out / "adapter_model.safetensors", "pt") as fh:
        keys = list(fh.keys())
    assert keys and {layer_of(k) for k in keys} == {1, 4}
    assert {k.split(".")[-3] for k in keys} == {"q_proj", "v_proj"}
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["layers_to_transform"] == [1, 4]
    assert read_provenance(out)["partition"]["layers"] == [1, 4]
    base, merged = ModelFolder(tiny_llama), ModelFolder(out / "merged")
    for name in base.names():
        touched = layer_of(name) in (1, 4) and (".q_proj." in name or ".v_proj." in name)
        assert (raw_bytes(base, name) != raw_bytes(merged, name)) == touched, name


class StepWatcher:
    """Records, for each optimizer step, which parameters moved and which hold Adam state."""

    def __init__(self) -> None:
        self.before: dict[str, torch.Tensor] = {}
        self.moved: list[set[str]] = []
        self.state_after_first: set[str] | None = None

    def callback(self):
        from transformers import TrainerCallback

        watcher = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, model=None, **kw):
                watcher.before = {n: p.detach().clone() for n, p in model.named_parameters()}

            def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
                watcher.moved.append({n for n, p in model.named_parameters() if not torch.equal(p, watcher.before[n])})
                if watcher.state_after_first is None:
                    names = {id(p): n for n, p in model.named_parameters()}
                    watcher.state_after_first = {names[id(p)] for p in optimizer.state if id(p) in names}

        return _CB()


def test_simultaneous_updates_each_partition_only_from_its_data(tiny_llama, qa_file, text_file, tmp_path):
    watcher = StepWatcher()
    config = cfg(
        tiny_llama,
        {"math": str(qa_file), "lang": str(text_file)},
        tmp_path / "sim",
        mode="simultaneous",
        partition={"math": "2-4", "lang": "0,1,5"},
        ratio={"math": 2, "lang": 1},
        steps=6,
        weight_decay=0.1,
    )
    out = finetune(config, callbacks=[watcher.callback()])
    groups = ["math", "lang", "math"] * 2
    layers = {"math": {2, 3, 4}, "lang": {0, 1, 5}}
    assert len(watcher.moved) == 6
    for group, moved in zip(groups, watcher.moved, strict=False):
        assert moved, group
        assert {layer_of(n) for n in moved} == layers[group], group
    assert watcher.state_after_first and {layer_of(n) for n in watcher.state_after_first} <= layers["math"]
    prov = read_provenance(out)
    assert prov["partitions"]["math"]["layers"] == [2, 3, 4] and prov["partitions"]["lang"]["layers"] == [0, 1, 5]
    assert [r["group"] for r in prov_rows(out)] == groups
    base, tuned = ModelFolder(tiny_llama), ModelFolder(out)
    for name in base.names():
        if layer_of(name) is None:
            assert raw_bytes(base, name) == raw_bytes(tuned, name), name


def test_simultaneous_data_that_moves_one_side_only(tiny_llama, qa_file, text_file, tmp_path):
    """With the language data at ratio 0, the language partition must stay exactly the base."""
    out = finetune(
        cfg(
            tiny_llama,
            [f"math={qa_file}", f"lang={text_file}"],
            tmp_path / "one",
            mode="simultaneous",
            partition={"math": "2-3", "lang": "0-1"},
            ratio={"lang": 0},
            steps=3,
            weight_decay=0.1,
        )
    )
    base, tuned = ModelFolder(tiny_llama), ModelFolder(out)
    changed = {layer_of(n) for n in base.names() if raw_bytes(base, n) != raw_bytes(tuned, n)}
    assert changed == {2, 3}


def test_mix_mode(tiny_llama, qa_file, text_file, tmp_path):
    out = finetune(
        cfg(tiny_llama, {"math": str(qa_file), "lang": str(text_file)}, tmp_path / "mix", mode="mix", method="lora", steps=2)
    )
    prov = read_provenance(out)
    assert prov["mode"] == "mix" and set(prov["data"]) == {"math", "lang"}
    assert prov["partition"]["layers"] == list(range(6)) and prov["partition"]["global"] == []
    assert (out / "adapter_model.safetensors").exists()


def test_resume_continues_from_saved_step(tiny_llama, qa_file, tmp_path):
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt

    out = tmp_path / "res"
    config = cfg(tiny_llama, [str(qa_file)], out, steps=5, save_steps=2, train_layers="0-2")
    with pytest.raises(KeyboardInterrupt):
        finetune(config, callbacks=[Crash()])
    assert not out.exists() and (tmp_path / "res.work" / "checkpoint-2").is_dir()
    with pytest.raises(OutputExistsError, match="--resume"):
        finetune(config)
    finetune(config, resume=True)
    prov = read_provenance(out)
    assert prov["resumed_from_step"] == 2 and prov["steps"] == 5
    assert [r["step"] for r in prov_rows(out)] == [1, 2, 3, 4, 5]
    straight = finetune(config.model_copy(update={"out": str(tmp_path / "straight")}))
    a, b = ModelFolder(out), ModelFolder(straight)
    for name in a.names():
        torch.testing.assert_close(a.get(name), b.get(name), rtol=1e-5, atol=1e-6)


def test_bad_input(tiny_llama, qa_file, tmp_path):
    with pytest.raises(ConfigError, match=r"valid layers are 0\.\.5"):
        finetune(cfg(tiny_llama, [str(qa_file)], tmp_path / "a", train_layers="4-9"))
    with pytest.raises(ConfigError, match="beyond this model's maximum of 512"):
        finetune(cfg(tiny_llama, [str(qa_file)], tmp_path / "a", seq_len=4096))
    with pytest.raises(ConfigError, match="--partition lang"):
        finetune(
            cfg(
                tiny_llama,
                {"math": str(qa_file), "lang": str(qa_file)},
                tmp_path / "a",
                mode="simultaneous",
                partition={"math": "1"},
            )
        )
    with pytest.raises(ConfigError, match="--mode"):
        finetune(cfg(tiny_llama, [str(qa_file), str(qa_file)], tmp_path / "a"))
    (tmp_path / "exists").mkdir()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        finetune(cfg(tiny_llama, [str(qa_file)], tmp_path / "exists"))
    from layerswap.config import validate_config

    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        validate_config(FinetuneConfig, {"base": "b", "data": "d", "out": "o", "learning_rate": 1})


def test_cli_with_yaml_config(tiny_llama, qa_file, text_file, tmp_path, capsys):
    from layerswap.cli import main

    config = tmp_path / "ft.yaml"
    config.write_text(
        f"base: {tiny_llama}\nmethod: full\nmode: mix\ndata:\n  math: {qa_file}\n  lang: {text_file}\n"
        f"train_layers: 0-1\nsteps: 2\nseq_len: 32\nquiet: true\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--config", str(config), "--out", str(tmp_path / "cli"), "--train-layers", "5", "--lr", "1e-3"])
    assert exit_info.value.code == 0
    prov = read_provenance(tmp_path / "cli")
    assert prov["partition"]["layers"] == [5] and prov["learning_rate"] == 1e-3 and prov["mode"] == "mix"
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--base", str(tiny_llama), "--data", str(qa_file), "--out", str(tmp_path / "x"), "--train-layers", "6"])
    assert exit_info.value.code == ConfigError.exit_code
    assert "valid layers are 0..5" in capsys.readouterr().err


def test_package_level_api_is_lazy_and_callable():
    assert callable(layerswap.finetune) and layerswap.FinetuneConfig is FinetuneConfig


# ---------------------------------------------------------------------------- real data


def test_real_data_specs(data_dir):
    math = load_records("gsm8k?limit=5", data_dir=data_dir)
    assert math.format == "math" and len(math) == 5 and "####" in math.pairs[0][1] and "<<" not in math.pairs[0][1]
    text = load_records("ntrex:sw", data_dir=data_dir)
    assert text.format == "text" and 50 < len(text) < 1997  # sentences joined per document
    pairs = load_records("tico:sw?format=pairs,limit=3", data_dir=data_dir)
    assert pairs.pairs[0][0].startswith("Translate from English to Swahili.")
    assert len(load_records("tatoeba:sw", data_dir=data_dir)) == 387


# ---------------------------------------------------------------------------- real model / GPU


@pytest.mark.slow
def test_gemma3_270m_frozen_layers_bit_identical(data_dir, tmp_path, gemma3_270m):
    base = gemma3_270m
    out = finetune(
        FinetuneConfig(
            base=str(base),
            data=["gsm8k?limit=4"],
            out=str(tmp_path / "g"),
            steps=1,
            batch_size=2,
            seq_len=128,
            train_layers="8",
            data_dir=str(data_dir),
            quiet=True,
        )
    )
    b, t = ModelFolder(base), ModelFolder(out)
    changed = {n for n in b.names() if raw_bytes(b, n) != raw_bytes(t, n)}
    assert changed and {layer_of(n) for n in changed} == {8}
    assert "model.embed_tokens.weight" in t.names() and "lm_head.weight" not in t.names()  # tied, as in the base


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("method", ["full", "lora"])
def test_gpu_frozen_layers(method, tiny_llama, qa_file, tmp_path):
    out = finetune(
        cfg(
            tiny_llama,
            [str(qa_file)],
            tmp_path / method,
            method=method,
            steps=3,
            train_layers="1-2",
            precision="bf16",
            gradient_checkpointing=True,
        )
    )
    prov = read_provenance(out)
    assert prov["partition"]["layers"] == [1, 2] and prov["final_loss"] == prov["final_loss"]  # finite, not NaN
    if method == "full":
        base, tuned = ModelFolder(tiny_llama), ModelFolder(out)
        for name in base.names():
            assert (raw_bytes(base, name) == raw_bytes(tuned, name)) == (layer_of(name) not in (1, 2)), name
