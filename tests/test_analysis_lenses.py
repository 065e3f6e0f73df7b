"""The lens registry and its lenses on tiny planted experts: same tables, same rule, one forward pass per model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_analysis_importance import LANG  # the same four Swahili sentences

from layerswap.analysis.lenses import LENSES, lens_recommendations, run_lenses
from layerswap.analysis.lenses.cka import linear_cka
from layerswap.analysis.lenses.forward import load_tokenizer, model_loader
from layerswap.io import DeltaView, ModelFolder, open_checkpoint

MATH = [
    "Question: Janet has 3 apples and buys 2 more. How many apples does she have? Step-by-Step Answer: 2 + 3 = 5. The answer is 5.",
    "Question: 4 boxes hold 6 pens each. How many pens? Step-by-Step Answer: 4 * 6 = 24. The answer is 24.",
    "Question: A train travels 60 km in 1 hour. How far in 3 hours? Step-by-Step Answer: 60 * 3 = 180.",
    "Question: Sam had 10 sweets and ate 4. How many are left? Step-by-Step Answer: 10 - 4 = 6.",
]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("LAYERSWAP_QUIET", "1")


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("lens-data")
    (folder / "math.txt").write_text("\n".join(MATH) + "\n")
    (folder / "lang.txt").write_text("\n".join(LANG) + "\n")
    return {"math": folder / "math.txt", "lang": folder / "lang.txt"}


@pytest.fixture(scope="module")
def activation_run(tiny_experts, texts, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lenses") / "out"
    run = run_lenses(
        tiny_experts["base"],
        {"math": tiny_experts["math"], "lang": tiny_experts["lang"]},
        "cka,logit,lape",
        data={"math": str(texts["math"]), "lang": str(texts["lang"])},
        out=out,
        data_dir=data_dir,
        examples=4,
        batch_size=2,
        seq_len=32,
        target_lang="sw",
        options={"lape_sentences": 4},
    )
    return run


def _normalised(path: Path) -> bytes:
    """File bytes; an SVG is compared by name only (matplotlib gives its elements random ids and dates on every save)."""
    return b"svg" if path.suffix == ".svg" else path.read_bytes()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): _normalised(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "layerswap.json"}


def test_registry_names_the_lenses():
    assert {"deltas", "importance", "cka", "logit", "lape", "grad"} <= set(LENSES)


def test_analyze_without_lens_is_the_delta_analysis_and_the_deltas_lens_writes_the_same(tiny_experts, tmp_path, capsys):
    from layerswap.cli import main

    base, math, lang = (str(tiny_experts[k]) for k in ("base", "math", "lang"))
    common = ["analyze", "--base", base, "--expert", f"math={math}", "--expert", f"lang={lang}"]
    for args in ([*common, "--out", str(tmp_path / "plain")], [*common, "--lens", "deltas", "--out", str(tmp_path / "lens")]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 0
    plain, lens = _files(tmp_path / "plain"), _files(tmp_path / "lens" / "deltas")
    assert sorted(plain) == sorted(
        ["boundaries.yaml", "contrast.csv", "cosine.csv", "deltas.csv", "layers.csv", "overlap.csv", "summary.md", "thresholds.csv", "topk.csv"]
        + [f"figures/{stem}.{ext}" for stem in ("heatmap_lang", "heatmap_math", "overlap_math_lang_top1", "overlap_math_lang_top5", "shares") for ext in ("png", "svg")]
    )
    assert set(lens) == set(plain) | {"cells.csv"}
    assert {k: v for k, v in lens.items() if k != "cells.csv"} == plain
    assert lens_recommendations(tmp_path / "lens")["deltas"].bottom == yaml.safe_load((tmp_path / "plain" / "boundaries.yaml").read_text())["bottom"]
    assert "deltas (clear)" in capsys.readouterr().out


def test_importance_lens_writes_what_importance_writes(tiny_llama, texts, tmp_path):
    from layerswap.analysis.importance import importance

    data = {"math": str(texts["math"]), "lang": str(texts["lang"])}
    importance(tiny_llama, data, examples=4, batch_size=2, seq_len=16, out=tmp_path / "plain")
    run_lenses(tiny_llama, {}, "importance", data=data, examples=4, batch_size=2, seq_len=16, out=tmp_path / "lens")
    lens = _files(tmp_path / "lens" / "importance")
    assert {k: v for k, v in lens.items() if k != "cells.csv"} == _files(tmp_path / "plain")


def test_linear_cka_is_invariant_to_rotation_and_scale():
    torch.manual_seed(0)
    x = torch.randn(50, 8, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))

    def gram(m: torch.Tensor) -> torch.Tensor:
        m = m - m.mean(0)
        return m @ m.T

    assert linear_cka(gram(x), gram(3 * x @ q)) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(gram(x), gram(torch.randn(50, 8, dtype=torch.float64))) < 0.5


def test_cka_lens_sees_where_each_expert_changed(activation_run):
    table = activation_run.results["cka"].tables["cka"]
    math_on_math = table[(table.model_a == "base") & (table.model_b == "math") & (table.data == "math")].set_index(["layer", "module"])["cka"]
    # the math expert changed layers 2-4 (plus noise): below layer 2 its hidden states are the base's
    assert math_on_math.loc[[0, 1]].min() > 0.999
    assert math_on_math.loc[(2, "mlp")] < math_on_math.loc[(1, "mlp")]
    assert {("base", "math"), ("base", "lang"), ("math", "lang")} == set(zip(table.model_a, table.model_b, strict=True))
    bd = activation_run.results["cka"].boundaries
    assert (bd["bottom"], bd["top"]) == (2, 1)  # the language layers 0, 1 and 5, as planted
    assert set(activation_run.results["cka"].layers.columns) == {"expert", "layer", "value", "share"}


def test_logit_lens_last_layer_is_the_models_own_prediction(activation_run, tiny_experts, texts):
    """Decoding the last layer through the final norm and head gives the model's own next-token log-probability."""
    table = activation_run.results["logit"].tables["logit"]
    n = ModelFolder(tiny_experts["base"]).num_layers
    assert sorted(table["layer"].unique()) == list(range(-1, n))
    tok = load_tokenizer(tiny_experts["base"])
    model = model_loader(ModelFolder(tiny_experts["base"]), None, "cpu")()
    enc = tok(MATH[:2], return_tensors="pt", padding=True, truncation=True, max_length=32)
    with torch.inference_mode():
        logp = torch.log_softmax(model(**enc).logits.float(), -1)
    mask = enc["attention_mask"].bool()
    gold = logp[:, :-1].gather(2, enc["input_ids"][:, 1:, None]).squeeze(2)[mask[:, 1:]]
    assert float(gold.mean()) < 0 and table["top1_target"].between(0, 1).all()
    row = table[(table.model == "base") & (table.data == "math") & (table.layer == n - 1)].iloc[0]
    # the lens samples positions over all 4 examples; the first two examples' mean is in the same range
    assert row.gold_logprob == pytest.approx(float(gold.mean()), abs=0.5)
    assert "vocabulary" in row.target_set  # Swahili is Latin-script: the vocabulary set, said so


def test_logit_lens_exact_on_every_sampled_position(tiny_llama, texts):
    """With every position sampled, the last layer's mean gold log-probability equals the full forward's exactly."""
    run = run_lenses(tiny_llama, {"math": tiny_llama, "lang": tiny_llama}, "logit", data={"math": str(texts["math"]), "lang": str(texts["lang"])}, examples=4, batch_size=4, seq_len=24, target_lang="sw", options={"logit_tokens": 10_000})
    table = run.results["logit"].tables["logit"]
    tok = load_tokenizer(tiny_llama)
    model = model_loader(ModelFolder(tiny_llama), None, "cpu")()
    enc = tok(MATH, return_tensors="pt", padding=True, truncation=True, max_length=24)
    with torch.inference_mode():
        logp = torch.log_softmax(model(**enc).logits.float(), -1)
    mask = enc["attention_mask"].bool()
    has_next = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1)
    gold = logp[:, :-1].gather(2, enc["input_ids"][:, 1:, None]).squeeze(2)[has_next[:, :-1]]
    n = ModelFolder(tiny_llama).num_layers
    row = table[(table.model == "base") & (table.data == "math") & (table.layer == n - 1)].iloc[0]
    assert row.tokens == len(gold)
    assert row.gold_logprob == pytest.approx(float(gold.double().mean()), rel=1e-5)
    # identical experts: no cell differs from the base
    assert run.results["logit"].cells["sumsq"].max() == pytest.approx(0.0, abs=1e-6)


def test_lape_counts_language_neurons_and_what_each_expert_changed(activation_run):
    res = activation_run.results["lape"]
    assert res.skipped is None
    lape = res.tables["lape"]
    assert {"sw", "en", "bn"} <= set(lape["language"]) and "any" in set(lape["language"])
    any_total = lape[lape.language == "any"]["specific"].sum()
    assert 1 <= any_total <= lape[lape.language != "any"]["specific"].sum()
    changed = res.tables["lape_changed"].set_index(["expert", "layer"])["top_changed"]
    # the math expert's most-changed neurons lie in its planted layers 2-4
    assert changed.loc["math"].loc[[2, 3, 4]].sum() == changed.loc["math"].sum() > 0


def test_lape_skipped_with_too_few_flores_languages_others_run(tiny_experts, texts, data_dir, tmp_path):
    few = tmp_path / "data" / "flores200" / "devtest"
    few.mkdir(parents=True)
    for name in ("swh_Latn.devtest", "eng_Latn.devtest"):
        shutil.copy(data_dir / "flores200" / "devtest" / name, few / name)
    with pytest.warns(UserWarning, match="lape skipped: it needs FLORES devtest text of at least 3 languages"):
        run = run_lenses(
            tiny_experts["base"],
            {"math": tiny_experts["math"], "lang": tiny_experts["lang"]},
            "lape,cka",
            data={"math": str(texts["math"]), "lang": str(texts["lang"])},
            data_dir=tmp_path / "data",
            examples=2,
            seq_len=16,
            target_lang="sw",
            out=tmp_path / "out",
        )
    assert run.results["lape"].skipped and run.results["cka"].boundaries is not None
    table = pd.read_csv(tmp_path / "out" / "lenses.csv")
    assert list(table["separation"])[0] == "skipped" and "found 2" in table["reason"][0]
    assert "skipped" in (tmp_path / "out" / "lape" / "summary.md").read_text()


def test_one_forward_pass_per_model_and_data_set(tiny_experts, texts, monkeypatch):
    """cka, logit and lape share the pass: each model runs each batch of each task once (lape adds the base's FLORES batches)."""
    calls: list[str] = []
    from layerswap.analysis.lenses import forward

    original = forward.Pass._run_one

    def counting(self, model, model_name, tokens, where):  # noqa: ANN001, ANN202
        calls.extend([f"{model_name}:{tokens.name}"] * len(tokens.batches))
        return original(self, model, model_name, tokens, where)

    monkeypatch.setattr(forward.Pass, "_run_one", counting)
    run_lenses(
        tiny_experts["base"],
        {"math": tiny_experts["math"], "lang": tiny_experts["lang"]},
        "cka,logit",
        data={"math": str(texts["math"]), "lang": str(texts["lang"])},
        examples=4,
        batch_size=2,
        seq_len=16,
        target_lang="sw",
    )
    assert sorted(calls) == sorted(f"{m}:{d}" for m in ("base", "math", "lang") for d in ("math", "lang") for _ in range(2))


def test_lora_expert_runs_as_base_plus_its_delta(tiny_llama, tiny_lora):
    base = ModelFolder(tiny_llama)
    adapter = open_checkpoint(tiny_lora)
    model = model_loader(base, adapter, "cpu")()
    view = DeltaView(adapter, base)
    params = dict(model.named_parameters())
    for name in adapter.names():
        torch.testing.assert_close(params[name].detach(), view.weight(name))


def test_grad_lens_compares_the_tasks_mean_gradients(tiny_llama, texts, tmp_path):
    from layerswap.analysis.importance import gradient_moments

    run = run_lenses(tiny_llama, {}, "grad", data={"math": str(texts["math"]), "lang": str(texts["lang"])}, examples=4, batch_size=4, seq_len=16, out=tmp_path / "out")
    res = run.results["grad"]
    cos = res.analysis.cosine
    total = cos[cos["layer"].isna()].iloc[0]
    # the same cosine straight from the gradients
    tok = load_tokenizer(tiny_llama)
    model = model_loader(ModelFolder(tiny_llama), None, "cpu")()
    model.train(False)
    for p in model.parameters():
        p.requires_grad_(True)
    g = {}
    for name, t in (("math", MATH), ("lang", LANG)):
        mean, _ = gradient_moments(model, tok, t, batch_size=4, seq_len=16, power=1)
        g[name] = torch.cat([mean[n].reshape(-1) for n in sorted(mean) if ".layers." in n])
    direct = float(torch.dot(g["lang"], g["math"]) / (g["lang"].norm() * g["math"].norm()))
    assert total["cosine"] == pytest.approx(direct, abs=1e-4)
    assert (tmp_path / "out" / "grad" / "overlap.csv").exists() and (tmp_path / "out" / "grad" / "cosine.csv").exists()
    assert res.boundaries is not None and np.isfinite(res.layers["share"]).all()
