"""Importance (diagonal Fisher) through the analysis machinery, and its small data loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from layerswap.analysis.importance import diagonal_fisher, importance, load_texts
from layerswap.cli import main
from layerswap.errors import EXIT_CODES, ConfigError, DataError, InputPathError
from layerswap.io import ModelFolder

MATH = [
    "Question: Janet has 3 apples and buys 2 more. How many apples does she have? Answer: 5",
    "Step-by-Step Answer: 2 + 3 = 5. The answer is 5.",
    "Question: 4 boxes hold 6 pens each. How many pens? Answer: 24",
    "Step-by-Step Answer: 4 * 6 = 24. The answer is 24.",
    "Question: A train travels 60 km in 1 hour. How far in 3 hours? Answer: 180",
    "Step-by-Step Answer: 60 * 3 = 180. The answer is 180.",
    "Question: Sam had 10 sweets and ate 4. How many are left? Answer: 6",
    "Step-by-Step Answer: 10 - 4 = 6. The answer is 6.",
]
LANG = [
    "Habari za asubuhi. Leo ni siku nzuri sana.",
    "Juma ana machungwa manne na anapewa mengine matatu.",
    "Tunasoma lugha na hesabu shuleni kila siku.",
    "Mvua inanyesha leo jioni katika mji wetu.",
]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("LAYERSWAP_QUIET", "1")


@pytest.fixture()
def text_files(tmp_path) -> dict[str, Path]:
    math_file = tmp_path / "math.jsonl"
    math_file.write_text("\n".join(json.dumps({"question": q, "answer": a}) for q, a in zip(MATH[::2], MATH[1::2], strict=True)) + "\n")
    lang_file = tmp_path / "lang.txt"
    lang_file.write_text("\n".join(LANG) + "\n")
    return {"math": math_file, "lang": lang_file}


def test_load_texts_from_files(text_files):
    math = load_texts(str(text_files["math"]))
    assert len(math) == 4 and math[0].startswith("Question: ") and "\nStep-by-Step Answer: " in math[0]
    assert load_texts(f"{text_files['math']}?limit=1") == math[:1]  # the fine-tuning spec options apply
    qa = text_files["math"].with_name("qa.jsonl")
    qa.write_text(json.dumps({"prompt": "Capital of Kenya?", "completion": "Nairobi"}) + "\n")
    assert load_texts(str(qa)) == ["Capital of Kenya? Nairobi"]
    assert load_texts(str(text_files["lang"]), limit=2) == LANG[:2]


def test_load_texts_bad_specs(tmp_path):
    with pytest.raises(InputPathError, match="shorthand like gsm8k or ntrex:sw"):
        load_texts("wikipedia")
    with pytest.raises(InputPathError):
        load_texts(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="evaluation"):
        load_texts("mgsm:sw")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "x"}\n')
    with pytest.raises(DataError, match="line 1"):
        load_texts(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="is empty"):
        load_texts(str(empty))


def test_load_texts_from_the_data_folder(data_dir):
    gsm = load_texts("gsm8k", data_dir=data_dir, limit=3)
    assert len(gsm) == 3 and "<<" not in gsm[0] and "####" in gsm[0]
    for spec in ("ntrex:sw", "tico:sw", "tatoeba:sw", "tatoeba:bn", "tico:bn", "ntrex:te"):
        texts = load_texts(spec, data_dir=data_dir, limit=5)
        assert len(texts) == 5 and all(t.strip() for t in texts), spec
    sw = load_texts("ntrex:swa", data_dir=data_dir, limit=1)[0]
    en = load_texts("ntrex:en", data_dir=data_dir, limit=1)[0]
    assert sw != en
    with pytest.raises(DataError, match="no Telugu"):
        load_texts("tico:te", data_dir=data_dir)
    with pytest.raises(DataError, match="only GSM8K train"):
        load_texts("gsm8k:test", data_dir=data_dir)
    with pytest.raises(ConfigError, match="needs a language"):
        load_texts("ntrex", data_dir=data_dir)
    with pytest.raises(ConfigError, match="English is the source side"):
        load_texts("ntrex:en?format=pairs", data_dir=data_dir)


def test_diagonal_fisher_is_the_mean_squared_gradient(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    fisher, batches = diagonal_fisher(model, tok, LANG, batch_size=2, seq_len=16)
    assert batches == 2
    name = "model.layers.1.mlp.down_proj.weight"
    param = dict(model.named_parameters())[name]
    expected = torch.zeros_like(param)
    for i in (0, 2):
        enc = tok(LANG[i : i + 2], return_tensors="pt", padding=True, truncation=True, max_length=16)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        model.zero_grad()
        model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels).loss.backward()
        expected += param.grad**2
    torch.testing.assert_close(fisher[name], expected / 2)
    assert all((f >= 0).all() for f in fisher.values())


@pytest.mark.parametrize("chunk", [4, 64], ids=["chunked-head", "one-chunk"])
@pytest.mark.parametrize("arch", ["gemma3", "llama"], ids=["tied-softcapped", "untied"])
def test_fisher_of_the_masked_chunked_head_equals_the_standard_loss(arch, chunk, request, monkeypatch):
    """The pass takes the output layer at labelled positions in chunks, embedding gradients sparse and
    each gradient squared as the backward completes it: every parameter's Fisher (a tied, soft-capped
    embedding or an untied one included) is still the mean squared gradient of the model's own loss,
    and no grad is left."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerswap.io import head_loss

    monkeypatch.setattr(head_loss, "HEAD_CHUNK", chunk)
    folder = request.getfixturevalue(f"tiny_{arch}")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == (arch == "gemma3") and head_loss.why_not(model) is None
    if arch == "gemma3":
        model.config.final_logit_softcapping = 3.0  # the cap bends this tiny model's logits
    texts = MATH[:6]
    fisher, batches = diagonal_fisher(model, tok, texts, batch_size=3, seq_len=24)
    assert batches == 2 and all(p.grad is None for p in model.parameters())
    assert not any(m.sparse for m in model.modules() if isinstance(m, torch.nn.Embedding))  # restored
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in (0, 3):
        enc = tok(texts[i : i + 3], return_tensors="pt", padding=True, truncation=True, max_length=24)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        assert int((labels[:, 1:] != -100).sum()) > 4  # more labelled rows than a chunk
        model.zero_grad()
        model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels).loss.backward()
        for n, p in model.named_parameters():
            expected[n] += p.grad**2
    assert fisher.keys() == expected.keys()
    for n, f in fisher.items():
        torch.testing.assert_close(f, expected[n] / 2, rtol=1e-4, atol=1e-9, msg=n)


def test_importance_reports_like_deltas(tiny_llama, text_files, tmp_path):
    out = tmp_path / "imp"
    result = importance(tiny_llama, {"math": str(text_files["math"]), "lang": str(text_files["lang"])}, examples=4, batch_size=2, seq_len=16, out=out, keep_fisher=True)
    assert result.kind == "importance"
    for name in ("deltas.csv", "layers.csv", "overlap.csv", "cosine.csv", "boundaries.yaml", "summary.md", "figures/shares.png", "figures/heatmap_lang.svg"):
        assert (out / name).exists(), name
    # the stored Fisher is what the tables report: l2 = sqrt(sum F)
    fisher = ModelFolder(out / "fisher" / "lang")
    name = "model.layers.0.self_attn.q_proj.weight"
    row = result.deltas.set_index(["expert", "tensor"]).loc[("lang", name)]
    assert row["l2"] == pytest.approx(float(fisher.get(name).sum().sqrt()), rel=1e-4)
    assert result.layers.groupby("expert")["share"].sum().to_numpy() == pytest.approx([1.0, 1.0])
    assert result.total_overlap()["sign_agree"].isna().all()  # importance has no sign
    assert result.boundaries["kind"] == "importance" and result.boundaries["candidates"]
    assert result.info["batches"] == {"math": 2, "lang": 2}
    assert "importance" in (out / "summary.md").read_text()


def test_importance_without_keeping_fisher(tiny_llama, text_files, tmp_path):
    out = tmp_path / "imp"
    importance(tiny_llama, {"math": str(text_files["math"]), "lang": str(text_files["lang"])}, examples=2, batch_size=2, seq_len=8, out=out, plots=False)
    assert not (out / "fisher").exists() and (out / "layers.csv").exists()


def test_importance_bad_options(tiny_llama, text_files, tmp_path):
    with pytest.raises(ConfigError):
        importance(tiny_llama, {}, out=tmp_path / "a")
    with pytest.raises(ConfigError, match="batch-size"):
        importance(tiny_llama, {"math": str(text_files["math"])}, batch_size=0)
    with pytest.raises(ConfigError, match="top-k"):
        importance(tiny_llama, {"math": str(text_files["math"])}, top_k=[150])


def test_cli_importance(tiny_llama, text_files, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["importance", "--base", str(tiny_llama), "--data", f"math={text_files['math']}", "--data", f"lang={text_files['lang']}",
            "--out", str(out), "--examples", "2", "--batch-size", "2", "--seq-len", "8", "--no-plots"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0 and (out / "boundaries.yaml").exists()
    with pytest.raises(SystemExit) as exc:
        main(["importance", "--base", str(tiny_llama), "--data", "math=nosuchcorpus", "--out", str(tmp_path / "x")])
    assert exc.value.code == EXIT_CODES["InputPathError"]
    assert "data file nosuchcorpus does not exist" in capsys.readouterr().err
