"""Analysis wing: exact top-k thresholds, overlap, boundaries, LoRA experts, bad inputs, plots, CLI."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from layerswap.analysis import BoundaryRule, analyze
from layerswap.analysis.boundaries import contrast_table, recommend
from layerswap.analysis.overlap import check_top_k, expected_jaccard
from layerswap.cli import main
from layerswap.errors import ConfigError, IncompatibleModelsError
from layerswap.io import DeltaView, ModelFolder, open_checkpoint, write_tensors
from layerswap.testing import make_tiny_model, planted_expert, state_dict_of


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("LAYERSWAP_QUIET", "1")


@pytest.fixture(scope="module")
def planted12(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """A 12-layer tiny Llama; language delta planted in the bottom 3 and top 2 layers, math in 4-8 (gaps at 3 and 9)."""
    root = tmp_path_factory.mktemp("planted12")
    base = make_tiny_model(root / "base", "llama", layers=12, tokenizer=tiny_tokenizer)
    lang = planted_expert(base, root / "lang", layers=[0, 1, 2, 10, 11], scale=0.05, noise=0.002, seed=11)
    math_ = planted_expert(base, root / "math", layers=[4, 5, 6, 7, 8], scale=0.05, noise=0.002, seed=12)
    return {"base": base, "lang": lang, "math": math_}


def _layer_deltas(base: Path, expert: Path) -> torch.Tensor:
    """All transformer-layer deltas of an expert, concatenated (the brute-force reference)."""
    folder = ModelFolder(base)
    view = DeltaView(open_checkpoint(expert), folder)
    parts = []
    for name in folder.names():
        if folder.architecture.classify(name).layer is None:
            continue
        d = view.delta(name)
        parts.append((d if d is not None else torch.zeros(folder.info(name).shape)).reshape(-1))
    return torch.cat(parts)


@pytest.mark.parametrize(
    ("candidate_cap", "boundary_cap"),
    [(1 << 27, 1 << 24), (0, 1 << 24), (0, 0)],
    ids=["one-pass", "kept-boundary", "refining-pass"],
)
def test_threshold_and_overlap_are_exact(tiny_experts, tiny_lora, candidate_cap, boundary_cap):
    experts = {"math": tiny_experts["math"], "lang": tiny_experts["lang"], "lora": tiny_lora}
    ks = [0.5, 1, 5, 37.5]
    result = analyze(tiny_experts["base"], experts, top_k=ks, boundary_cap=boundary_cap, candidate_cap=candidate_cap)
    assert result.info["top_k_method"] == ("one pass" if candidate_cap else "multi-pass")
    assert result.info["threshold_refined"] == (boundary_cap == 0 and candidate_cap == 0)
    ref = {name: _layer_deltas(tiny_experts["base"], path) for name, path in experts.items()}
    thresholds = result.thresholds.set_index(["expert", "k_percent"])
    for (expert, k), row in thresholds.iterrows():
        absd = ref[expert].abs()
        assert row["k_count"] == math.ceil(k / 100 * absd.numel())
        if row["mode"] == "exact":
            assert row["threshold"] == float(torch.topk(absd, int(row["k_count"])).values[-1])
        else:  # the LoRA touches fewer parameters than K: its set is all of them
            assert row["mode"] == "all_nonzero" and int((absd > 0).sum()) < row["k_count"]

    def members(expert: str, k: float) -> torch.Tensor:
        row = thresholds.loc[(expert, k)]
        absd = ref[expert].abs()
        return (absd >= row["threshold"]) & (absd > 0)

    for row in result.total_overlap().itertuples():
        a, b = members(row.expert_a, row.k_percent), members(row.expert_b, row.k_percent)
        both = a & b
        same = torch.sign(ref[row.expert_a]) == torch.sign(ref[row.expert_b])
        assert (row.n_a, row.n_b, row.n_both) == (int(a.sum()), int(b.sum()), int(both.sum()))
        if row.n_both:
            assert row.sign_agree == pytest.approx(int((both & same).sum()) / int(both.sum()))
        assert row.expected_jaccard == pytest.approx(float(expected_jaccard(row.n_a, row.n_b, a.numel())))
    # per-layer rows add up to the total
    ov = result.overlap
    per_layer = ov[(ov["module"] == "all") & ov["layer"].notna()].groupby(["expert_a", "expert_b", "k_percent"])["n_both"].sum()
    totals = ov[ov["layer"].isna()].set_index(["expert_a", "expert_b", "k_percent"])["n_both"]
    assert (per_layer.sort_index() == totals.sort_index()).all()


def test_magnitude_tables(tiny_experts):
    result = analyze(tiny_experts["base"], {"math": tiny_experts["math"], "lang": tiny_experts["lang"]})
    d = result.deltas
    assert {"expert", "tensor", "layer", "module", "numel", "l2", "rel_l2", "mean_abs", "max_abs"} <= set(d.columns)
    base = state_dict_of(tiny_experts["base"])
    lang = state_dict_of(tiny_experts["lang"])
    name = "model.layers.0.mlp.down_proj.weight"
    row = d[(d["expert"] == "lang") & (d["tensor"] == name)].iloc[0]
    delta = lang[name].float() - base[name].float()
    assert row["l2"] == pytest.approx(float(delta.norm()), rel=1e-5)
    assert row["rel_l2"] == pytest.approx(float(delta.norm() / base[name].float().norm()), rel=1e-5)
    assert row["max_abs"] == pytest.approx(float(delta.abs().max()), rel=1e-6)
    assert row["mean_abs"] == pytest.approx(float(delta.abs().mean()), rel=1e-5)
    assert pd_isna(d[d["tensor"] == "model.embed_tokens.weight"]["layer"].iloc[0])
    layers = result.layers
    assert set(layers.columns) >= {"expert", "layer", "l2", "rel_l2", "share"}
    assert layers.groupby("expert")["share"].sum().to_numpy() == pytest.approx([1.0, 1.0])
    cos = result.cosine
    assert len(cos[(cos["module"] == "all") & cos["layer"].notna()]) == 6
    assert cos["cosine"].dropna().between(-1, 1).all()


def pd_isna(x) -> bool:  # noqa: ANN001
    import pandas as pd

    return bool(pd.isna(x))


def test_planted_boundaries_are_recovered(planted12):
    result = analyze(planted12["base"], {"math": planted12["math"], "lang": planted12["lang"]})
    bd = result.boundaries
    assert (bd["bottom"], bd["top"]) == (3, 2)
    assert bd["separation"] == "clear" and bd["basis"] == "measured"
    assert bd["transition"] == 1  # layers 3 and 9 changed in neither expert: ambiguous
    first = bd["candidates"][0]
    assert (first["bottom"], first["top"], first["transition"]) == (3, 2, 1)
    assert all(set(c) == {"bottom", "top", "transition", "score"} for c in bd["candidates"])
    assert len({(c["bottom"], c["top"], c["transition"]) for c in bd["candidates"]}) == len(bd["candidates"])
    assert isinstance(bd["reason"], str) and "\n" not in bd["reason"]
    # the contrast table: language layers positive, math layers negative
    diff = result.contrast.set_index("layer")["diff"]
    assert (diff[[0, 1, 2, 10, 11]] > 0.05).all() and (diff[[4, 5, 6, 7, 8]] < -0.05).all()


def test_tiny_experts_boundaries(tiny_experts):
    result = analyze(tiny_experts["base"], {"lang": tiny_experts["lang"], "math": tiny_experts["math"]})
    assert (result.boundaries["bottom"], result.boundaries["top"], result.boundaries["transition"]) == (2, 1, 0)


def test_no_clear_separation_is_said_plainly(tiny_llama, tmp_path):
    # Both experts move every layer alike (like short Adam fine-tunes): no boundary can be read off them.
    a = planted_expert(tiny_llama, tmp_path / "a", layers=[], noise=0.02, seed=21)
    b = planted_expert(tiny_llama, tmp_path / "b", layers=[], noise=0.02, seed=22)
    with pytest.warns(UserWarning, match="no clear separation"):
        result = analyze(tiny_llama, {"math": a, "lang": b})
    bd = result.boundaries
    assert bd["separation"] == "none" and bd["basis"] == "prior"
    assert bd["reason"].startswith("no clear separation")
    assert bd["candidates"][0]["bottom"] == bd["bottom"] and bd["candidates"][0]["top"] == bd["top"]
    assert "no clear separation" in result.summary()


def test_boundary_rule_on_synthetic_shares():
    import numpy as np
    import pandas as pd

    n = 18
    lang = np.full(n, 0.001)
    lang[[0, 1, 2, 3, 16, 17]] = 1.0
    math_ = np.full(n, 0.001)
    math_[5:15] = 1.0
    rows = [
        {"expert": e, "layer": i, "module": m, "sumsq": v[i]}
        for e, v in (("lang", lang), ("math", math_))
        for i in range(n)
        for m in ("q_proj", "down_proj")
    ]
    cells = pd.DataFrame(rows)
    bd = recommend(contrast_table(cells, "lang", "math", n), cells, "lang", "math", BoundaryRule())
    assert (bd["bottom"], bd["top"]) == (4, 2)
    # a larger minimum middle forbids the bottom 4
    bd = recommend(contrast_table(cells, "lang", "math", n), cells, "lang", "math", BoundaryRule(min_middle=14))
    assert bd["bottom"] + bd["top"] <= 4


def test_lora_expert_is_analysed_without_merging(tiny_llama, tiny_lora, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    before = sorted(p.name for p in tmp_path.parent.iterdir())
    result = analyze(tiny_llama, {"lora": tiny_lora}, out=tmp_path / "out", plots=False)
    d = result.deltas.set_index("tensor")
    # reference: PEFT's own merge
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    merged = PeftModel.from_pretrained(model, tiny_lora).merge_and_unload().state_dict()
    for name in ("model.layers.1.self_attn.q_proj.weight", "model.layers.2.self_attn.v_proj.weight"):
        delta = merged[name] - base_sd[name]
        assert d.loc[name, "l2"] == pytest.approx(float(delta.norm()), rel=1e-4)
    untouched = d[~d.index.str.contains(r"layers\.[12]\.self_attn\.[qv]_proj")]
    assert (untouched["l2"] == 0).all()
    shares = result.layers.set_index("layer")["share"]
    assert shares[[1, 2]].sum() == pytest.approx(1.0) and shares[[0, 3, 4, 5]].sum() == 0
    assert result.boundaries is None and result.overlap.empty
    assert not list((tmp_path / "out").glob("*.safetensors"))  # nothing merged to disk
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, -1, 100.5, float("nan"), "x"])
def test_top_k_out_of_range(k):
    with pytest.raises(ConfigError, match=r"top-k"):
        check_top_k([k])


def test_top_k_accepts_the_edges():
    assert check_top_k([100, 0.001, 100]) == [100.0, 0.001]


def test_mismatched_tensor_is_named(tiny_llama, tmp_path):
    sd = dict(state_dict_of(tiny_llama))
    name = "model.layers.3.mlp.up_proj.weight"
    sd[name] = torch.zeros(sd[name].shape[0], sd[name].shape[1] + 1)
    bad = write_tensors(tmp_path / "bad", sd, donor=tiny_llama)
    with pytest.raises(IncompatibleModelsError, match=name.replace(".", r"\.")):
        analyze(tiny_llama, {"math": bad, "lang": tiny_llama})


def test_expert_of_another_size_is_refused(tiny_llama, tiny_qwen2):
    with pytest.raises(IncompatibleModelsError, match="layers"):
        analyze(tiny_llama, {"math": tiny_qwen2})


def test_nan_and_inf_are_flagged_not_fatal(tiny_llama, tiny_experts, tmp_path):
    sd = dict(state_dict_of(tiny_experts["lang"]))
    name = "model.layers.0.self_attn.q_proj.weight"
    w = sd[name].clone()
    w[0, 0], w[1, 1], w[2, 2] = float("nan"), float("inf"), float("-inf")
    sd[name] = w
    bad = write_tensors(tmp_path / "nan", sd, donor=tiny_llama)
    with pytest.warns(UserWarning, match="NaN/Inf"):
        result = analyze(tiny_llama, {"math": tiny_experts["math"], "lang": bad})
    d = result.deltas.set_index(["expert", "tensor"])
    assert d.loc[("lang", name), "nonfinite"] == 3
    assert d["nonfinite"].sum() == 3
    assert math.isfinite(d.loc[("lang", name), "l2"])
    assert result.total_overlap()["jaccard"].notna().all()
    assert any("NaN/Inf" in w for w in result.warnings)


def test_single_expert_gives_magnitudes(tiny_experts):
    with pytest.warns(UserWarning, match="one expert only"):
        result = analyze(tiny_experts["base"], {"math": tiny_experts["math"]})
    assert result.overlap.empty and result.cosine.empty and result.boundaries is None
    assert len(result.layers) == 6 and result.layers["share"].sum() == pytest.approx(1.0)
    assert set(result.topk["expert"]) == {"math"}


def test_expert_identical_to_base(tiny_llama, tiny_experts, copy_model, tmp_path):
    same = copy_model(tiny_llama, "same")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = analyze(tiny_llama, {"math": tiny_experts["math"], "lang": same}, out=tmp_path / "out")
    assert any("identical to the base" in str(w.message) for w in caught)
    lang = result.deltas[result.deltas["expert"] == "lang"]
    assert (lang["l2"] == 0).all() and (lang["rel_l2"] == 0).all()
    assert result.layers[result.layers["expert"] == "lang"]["share"].isna().all()
    assert set(result.thresholds[result.thresholds["expert"] == "lang"]["mode"]) == {"empty"}
    tot = result.total_overlap()
    assert (tot["n_b"] == 0).all() and (tot["n_both"] == 0).all() and (tot["jaccard"] == 0).all()
    assert tot["jaccard_ratio"].isna().all()  # 0 / 0 expected: undefined, not a crash
    assert result.boundaries["separation"] == "none" and "no update" in result.boundaries["reason"]
    assert (tmp_path / "out" / "summary.md").exists()


def test_no_expert_is_a_config_error(tiny_llama):
    with pytest.raises(ConfigError, match="expert"):
        analyze(tiny_llama, {})


def test_unknown_role_name_is_refused(tiny_experts):
    with pytest.raises(ConfigError, match="--lang-expert"):
        analyze(tiny_experts["base"], {"math": tiny_experts["math"], "lang": tiny_experts["lang"]}, lang_expert="swahili")


def test_roles_from_options_and_language_codes(tiny_experts):
    experts = {"a": tiny_experts["lang"], "b": tiny_experts["math"]}
    result = analyze(tiny_experts["base"], experts, lang_expert="a", math_expert="b")
    assert result.boundaries["experts"] == {"lang": "a", "math": "b"}
    result = analyze(tiny_experts["base"], {"sw": tiny_experts["lang"], "math": tiny_experts["math"]})
    assert result.roles == {"lang": "sw", "math": "math"}


# ---------------------------------------------------------------------------------------------
# Files, plots, CLI
# ---------------------------------------------------------------------------------------------


def test_outputs_and_plots_are_written(tiny_experts, tmp_path):
    out = tmp_path / "analysis"
    result = analyze(tiny_experts["base"], {"math": tiny_experts["math"], "lang": tiny_experts["lang"]}, top_k=[1, 5], out=out)
    for name in (
        "deltas.csv",
        "layers.csv",
        "overlap.csv",
        "cosine.csv",
        "topk.csv",
        "thresholds.csv",
        "contrast.csv",
        "boundaries.yaml",
        "summary.md",
        "layerswap.json",
    ):
        assert (out / name).is_file(), name
    for stem in ("heatmap_math", "heatmap_lang", "overlap_math_lang_top1", "overlap_math_lang_top5", "shares"):
        for ext in ("png", "svg"):
            path = out / "figures" / f"{stem}.{ext}"
            assert path.is_file() and path.stat().st_size > 1000, path
    bd = yaml.safe_load((out / "boundaries.yaml").read_text())
    assert bd == result.boundaries
    summary = (out / "summary.md").read_text()
    assert "figures/shares.png" in summary and "Jaccard" in summary and "bottom=2" in summary
    import pandas as pd

    overlap = pd.read_csv(out / "overlap.csv")
    for col in (
        "expert_a",
        "expert_b",
        "k_percent",
        "layer",
        "module",
        "n_a",
        "n_b",
        "n_both",
        "jaccard",
        "expected_jaccard",
        "sign_agree",
    ):
        assert col in overlap.columns
    assert not list(tmp_path.glob(".analysis.tmp-*"))


def test_notebook_plot_methods_return_figures(tiny_experts):
    from matplotlib.figure import Figure

    result = analyze(tiny_experts["base"], {"math": tiny_experts["math"], "lang": tiny_experts["lang"]}, top_k=[5])
    for fig in (
        result.plot_heatmap("lang"),
        result.plot_overlap(),
        result.plot_overlap(5, ("lang", "math")),
        result.plot_shares(),
    ):
        assert isinstance(fig, Figure)
        assert fig.axes[0].get_title()


def test_package_level_analyze_is_lazy():
    import subprocess
    import sys

    code = "import sys, layerswap; assert 'layerswap.analysis' not in sys.modules; f = layerswap.analyze; assert 'layerswap.analysis' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code


def test_cli_analyze(tiny_experts, tmp_path, capsys):
    base, out = str(tiny_experts["base"]), tmp_path / "cli"
    args = [
        "analyze",
        "--base",
        base,
        "--expert",
        f"math={tiny_experts['math']}",
        "--expert",
        f"lang={tiny_experts['lang']}",
        "--out",
        str(out),
        "--no-plots",
    ]
    assert _cli(args) == 0
    assert "bottom=2 top=1" in capsys.readouterr().out
    assert (out / "boundaries.yaml").exists() and not (out / "figures").exists()
    assert _cli(args) == 8  # output exists
    assert _cli(args + ["--overwrite", "--top-k", "0"]) == 6
    assert _cli(args + ["--overwrite", "--top-k", "1,abc"]) == 6
    assert (
        _cli(
            [
                "analyze",
                "--base",
                str(tmp_path / "missing"),
                "--expert",
                f"math={tiny_experts['math']}",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 3
    )
    assert _cli(["analyze", "--base", base, "--expert", "math", "--out", str(tmp_path / "y")]) == 6
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err


def test_cli_mismatched_models_exit_code(tiny_llama, tiny_qwen2, tmp_path, capsys):
    assert _cli(["analyze", "--base", str(tiny_llama), "--expert", f"math={tiny_qwen2}", "--out", str(tmp_path / "o")]) == 5
    assert "layers" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_atomic_output_on_failure(tiny_llama, tiny_experts, tmp_path, monkeypatch):
    from layerswap.analysis import report

    def boom(*args, **kwargs):  # noqa: ANN002, ANN003
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(report.plots, "share_plot", boom)
    with pytest.raises(RuntimeError):
        analyze(tiny_llama, {"math": tiny_experts["math"], "lang": tiny_experts["lang"]}, out=tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# -- the one-read exact top-k (bands.BandStream) against sorting everything ------------------------


def _stream_case(case: str, gen: torch.Generator) -> dict[str, dict[str, torch.Tensor]]:
    """Per expert, per tensor, flat float32 values (tensors of several sizes, including 0 and 1)."""
    sizes = {"t0": 5000, "t1": 1, "t2": 0, "t3": 777, "t4": 20000, "t5": 3}
    out: dict[str, dict[str, torch.Tensor]] = {}
    for j, e in enumerate(["a", "b", "c"]):
        out[e] = {}
        for i, (t, n) in enumerate(sizes.items()):
            if case == "continuous":
                v = torch.randn(n, generator=gen) * (1 + i + j)
            elif case == "ties":  # few distinct magnitudes, many exact ties and zeros (like bf16 Adam deltas)
                v = torch.randint(-3, 4, (n,), generator=gen).float() * 0.25
            elif case == "sparse":  # mostly zeros and float32 denormals (which count as zero)
                v = torch.randn(n, generator=gen) * (torch.rand(n, generator=gen) < 0.002)
                v[torch.rand(n, generator=gen) < 0.01] = 1e-42
            else:  # "zero": expert c never changes anything, a and b only in one tensor
                v = torch.zeros(n)
                if e != "c" and t == "t3":
                    v = torch.randn(n, generator=gen)
            out[e][t] = v.float()
    return out


def _run_stream(data, ks, bands, *, cap=1 << 26, signed=True):
    from layerswap.analysis.bands import BandStream
    from layerswap.analysis.deltas import SMALLEST_COUNTED, Pass1, TensorStat
    from layerswap.analysis.workspace import Workspace

    experts = list(data)
    tensors = list(data[experts[0]])
    population = sum(data[experts[0]][t].numel() for t in tensors)
    stats = {(e, t): TensorStat(nnz=int((data[e][t].abs() >= SMALLEST_COUNTED).sum())) for e in experts for t in tensors}
    p1 = Pass1(
        experts,
        tensors,
        dict.fromkeys(tensors, 0),
        dict.fromkeys(tensors, "m"),
        {t: data[experts[0]][t].numel() for t in tensors},
        {},
        stats,
        {},
    )
    stream = BandStream(experts, ks, population, bands, signed=signed, cap=cap)
    ws = Workspace()
    for t in tensors:
        values = {e: data[e][t].clone() for e in experts}
        stream.observe(t, values, {e: v.abs() for e, v in values.items()}, ws)
    return stream, stream.finish(p1)


def _reference(data, ks):
    """Thresholds and per-tensor counts by sorting all values (the brute force the stream must equal)."""
    from layerswap.analysis.deltas import SMALLEST_COUNTED
    from layerswap.analysis.overlap import k_count_of

    experts = list(data)
    tensors = list(data[experts[0]])
    flat = {e: torch.cat([data[e][t] for t in tensors]) for e in experts}
    out = {}
    for e in experts:
        a = flat[e].abs()
        nonzero = int((a >= SMALLEST_COUNTED).sum())
        for k in ks:
            kc = k_count_of(k, a.numel())
            if nonzero == 0:
                out[(e, k)] = ("empty", math.inf, math.inf)
            elif nonzero < kc:
                out[(e, k)] = ("all_nonzero", 0.0, SMALLEST_COUNTED)
            else:
                t = float(torch.sort(a, descending=True).values[kc - 1])
                assert t == float(torch.kthvalue(a, a.numel() - kc + 1).values)
                out[(e, k)] = ("exact", t, t)
    return out


def _bands_around(data, ks, mode):
    """Bands for the stream (float32 bit patterns): the whole range, a few bins around the true threshold, its bin, or its value."""
    from layerswap.analysis.bands import SMALLEST_CODE, TOP_CODE

    ref = _reference(data, ks)
    out = {}
    for (e, k), (mode_, threshold, _) in ref.items():
        if mode == "no-guess" or mode_ != "exact":
            out[(e, k)] = (SMALLEST_CODE, TOP_CODE)
            continue
        code = int(torch.tensor(threshold).view(torch.int32))
        if mode == "one-value":
            out[(e, k)] = (code, code + 1)
            continue
        b = code >> 16
        pad = 3 if mode == "good-guess" else 0
        out[(e, k)] = (max(1, b - pad) << 16, (b + pad + 1) << 16)
    return out


@pytest.mark.parametrize("case", ["continuous", "ties", "sparse", "zero"])
@pytest.mark.parametrize("mode", ["no-guess", "good-guess", "one-bin", "one-value"])
@pytest.mark.parametrize("signed", [True, False])
def test_band_stream_equals_sorting(case, mode, signed):
    gen = torch.Generator().manual_seed(10 * len(case) + len(mode))
    data = _stream_case(case, gen)
    if not signed:  # importance: non-negative values
        data = {e: {t: v.abs() for t, v in d.items()} for e, d in data.items()}
    ks = [0.5, 1, 5, 37.5, 100]
    _, p2 = _run_stream(data, ks, _bands_around(data, ks, mode), signed=signed)
    assert p2 is not None
    ref = _reference(data, ks)
    tensors = list(data["a"])
    for (e, k), (mode_, threshold, member) in ref.items():
        cut = p2.cuts[(e, k)]
        assert (cut.mode, cut.threshold) == (mode_, threshold), (e, k)
        for t in tensors:
            want = int((data[e][t].abs() >= member).sum()) if mode_ != "empty" else 0
            assert p2.n[(e, k, t)] == want, (e, k, t)
    for a, b in [("a", "b"), ("a", "c"), ("b", "c")]:
        for k in ks:
            for t in tensors:
                ma = (
                    data[a][t].abs() >= ref[(a, k)][2]
                    if ref[(a, k)][0] != "empty"
                    else torch.zeros(data[a][t].numel(), dtype=torch.bool)
                )
                mb = (
                    data[b][t].abs() >= ref[(b, k)][2]
                    if ref[(b, k)][0] != "empty"
                    else torch.zeros(data[b][t].numel(), dtype=torch.bool)
                )
                both = ma & mb
                same = torch.signbit(data[a][t]) == torch.signbit(data[b][t])
                assert p2.both[(a, b, k, t)] == int(both.sum())
                assert p2.agree[(a, b, k, t)] == (int((both & same).sum()) if signed else 0)


def test_band_stream_gives_up_rather_than_guess():
    """A band above or below the threshold, or more histogram cells than the cap: no answer (the multi-pass method runs)."""
    data = _stream_case("continuous", torch.Generator().manual_seed(3))
    exact = _bands_around(data, [5], "one-bin")
    above = {key: (hi, hi + (4 << 16)) for key, (lo, hi) in exact.items()}
    below = {key: (max(1 << 16, lo - (8 << 16)), lo) for key, (lo, hi) in exact.items()}
    assert _run_stream(data, [5], exact)[1] is not None
    assert _run_stream(data, [5], above)[1] is None
    assert _run_stream(data, [5], below)[1] is None
    assert _run_stream(data, [5], exact, cap=10)[1] is None
    sparse = _stream_case("sparse", torch.Generator().manual_seed(4))  # fewer non-zeros than K, but not all of them seen
    assert _run_stream(sparse, [37.5], {(e, 37.5): (30000 << 16, 30001 << 16) for e in sparse})[1] is None


def _profile_triple(root: Path, profile: str) -> dict[str, Path]:
    """A tiny bf16 triple from benchmarks/synthetic.py with one of its delta profiles."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("synthetic", Path(__file__).parents[1] / "benchmarks" / "synthetic.py")
    synthetic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synthetic)
    return synthetic.write_triple(root / profile, cfg=synthetic.tiny_shape(5), profile=profile, seed=7)


@pytest.mark.parametrize("profile", ["planted", "dense-uniform", "dense-varying"])
def test_delta_profiles_one_read_equals_multi_pass_and_sorting(tmp_path, profile):
    """On each benchmark delta profile the one read decides, and its tables equal the multi-pass method's and brute force."""
    paths = _profile_triple(tmp_path, profile)
    experts = {"math": paths["math"], "lang": paths["lang"]}
    ks = [1, 5]
    one = analyze(paths["base"], experts, top_k=ks)
    multi = analyze(paths["base"], experts, top_k=ks, candidate_cap=0)
    refined = analyze(paths["base"], experts, top_k=ks, candidate_cap=0, boundary_cap=0)
    assert one.info["top_k_method"] == "one pass"
    assert multi.info["top_k_method"] == refined.info["top_k_method"] == "multi-pass"
    for name in ("deltas", "layers", "overlap", "cosine", "topk", "thresholds"):
        assert getattr(one, name).equals(getattr(multi, name)), name
        assert getattr(one, name).equals(getattr(refined, name)), name
    ref = {name: _layer_deltas(paths["base"], path) for name, path in experts.items()}
    thresholds = one.thresholds.set_index(["expert", "k_percent"])
    for (expert, k), row in thresholds.iterrows():
        assert row["threshold"] == float(torch.topk(ref[expert].abs(), int(row["k_count"])).values[-1])
    for row in one.total_overlap().itertuples():
        ma = ref[row.expert_a].abs() >= thresholds.loc[(row.expert_a, row.k_percent), "threshold"]
        mb = ref[row.expert_b].abs() >= thresholds.loc[(row.expert_b, row.k_percent), "threshold"]
        assert (row.n_a, row.n_b, row.n_both) == (int(ma.sum()), int(mb.sum()), int((ma & mb).sum()))


@pytest.mark.parametrize("profile", ["planted", "dense-varying"])
def test_guessed_bands_are_narrow_and_hold_the_threshold(tmp_path, monkeypatch, profile):
    """The sampled guess brackets each threshold tightly (a few % of K values in the band, where a fixed 50%
    margin held about K): what the one read stores per tensor shrinks with the band."""
    from layerswap.analysis import bands, core

    paths = _profile_triple(tmp_path, profile)
    seen = {}

    def spy(*args, **kwargs):
        seen.update(bands.guess_bands(*args, **kwargs))
        return seen

    monkeypatch.setattr(core, "guess_bands", spy)
    one = analyze(paths["base"], {"math": paths["math"], "lang": paths["lang"]}, top_k=[1, 5])
    assert one.info["top_k_method"] == "one pass"
    thresholds = one.thresholds.set_index(["expert", "k_percent"])
    for (expert, k), (lo, hi) in seen.items():
        codes = _layer_deltas(paths["base"], paths[expert]).abs().view(torch.int32)
        row = thresholds.loc[(expert, k)]
        assert lo <= int(torch.tensor(row["threshold"], dtype=torch.float32).view(torch.int32)) < hi
        # every tensor of this tiny model is sampled whole: the margin is MIN_MARGIN, and only the values
        # strictly between the band's edge values (ties at the edges aside) lie within K x (1 -/+ it)
        assert int(((codes > lo) & (codes < hi - 1)).sum()) <= 2 * bands.MIN_MARGIN * row["k_count"], (expert, k)


def test_one_pass_and_multi_pass_tables_are_identical(tiny_experts, tiny_lora):
    experts = {"math": tiny_experts["math"], "lang": tiny_experts["lang"], "lora": tiny_lora}
    one = analyze(tiny_experts["base"], experts, top_k=[1, 5])
    multi = analyze(tiny_experts["base"], experts, top_k=[1, 5], candidate_cap=0)
    assert (one.info["top_k_method"], multi.info["top_k_method"]) == ("one pass", "multi-pass")
    for name in ("deltas", "layers", "overlap", "cosine", "topk", "thresholds"):
        assert getattr(one, name).equals(getattr(multi, name)), name


def test_reductions_keep_torch_bits():
    """The one-thread reductions give exactly what torch's own (threaded) dot and sum give on this machine."""
    from layerswap.analysis.workspace import Reductions

    gen = torch.Generator().manual_seed(5)
    cases = [torch.randn(n, generator=gen) for n in (0, 1, 2048, 8191, 8192, 32768, 32769, 65537, 1 << 20)]
    native = [(float(torch.dot(x, x.flip(0))), float(x.sum())) for x in cases]
    red = Reductions()
    with red:
        ours = [(red.dot(x, x.flip(0)), red.sum(x)) for x in cases]
    assert ours == native
    assert torch.get_num_threads() == red.threads


def test_one_pass_giving_up_falls_back_to_the_same_tables(tiny_experts, monkeypatch):
    """When the one pass cannot decide (a guess too high, too many candidates), a histogram pass and pass 2 give the same tables."""
    from layerswap.analysis import bands

    experts = {"math": tiny_experts["math"], "lang": tiny_experts["lang"]}
    one = analyze(tiny_experts["base"], experts, top_k=[1, 5])
    monkeypatch.setattr(bands.BandStream, "finish", lambda self, p1: None)
    fallback = analyze(tiny_experts["base"], experts, top_k=[1, 5])
    assert fallback.info["top_k_method"] == "multi-pass"
    for name in ("deltas", "overlap", "topk", "thresholds"):
        assert getattr(one, name).equals(getattr(fallback, name)), name


@pytest.mark.parametrize("case", ["continuous", "ties"])
def test_band_stream_sorting_path_equals_sorting(case, monkeypatch):
    """Bands with more distinct values than a dense histogram allows take the sorting path: the same counts."""
    from layerswap.analysis import bands

    monkeypatch.setattr(bands, "DENSE_CELLS", 16)
    data = _stream_case(case, torch.Generator().manual_seed(9))
    ks = [1, 5, 37.5]
    _, p2 = _run_stream(data, ks, _bands_around(data, ks, "good-guess"))
    _, want = _run_stream(data, ks, _bands_around(data, ks, "no-guess"))
    monkeypatch.undo()
    _, dense = _run_stream(data, ks, _bands_around(data, ks, "good-guess"))
    for got in (p2, dense):
        assert (got.n, got.both, got.agree) == (want.n, want.both, want.agree)
        assert [c.threshold for c in got.cuts.values()] == [c.threshold for c in want.cuts.values()]


def test_halves_on_two_workers_give_the_same_bits():
    """Outside the layers each large tensor's halves go to two workers: reductions, reads and elementwise ops equal one worker's."""
    from layerswap.analysis import workspace

    gen = torch.Generator().manual_seed(11)
    red = workspace.Reductions()
    threads = red.threads
    red.emulate, red.threads = True, 2  # the two-way split, whatever this machine's thread count
    try:
        with red:  # one thread, as in the pass; fresh workers (MKL keeps its thread count per thread)
            for n in (workspace.HALVES_FROM - 1, workspace.HALVES_FROM, 3 * workspace.HALVES_FROM + 12345):
                x, y = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
                alone = (red.dot(x, y), red.sum(x))
                for _ in range(3):
                    with workspace.worker_pool(2, red) as pool:
                        red.pool = pool
                        assert (red.dot(x, y), red.sum(x)) == alone
                        red.pool = None
    finally:
        torch.set_num_threads(threads)


def test_pass1_with_halves_and_arena_equals_plain(tiny_experts, tiny_lora, monkeypatch):
    """Every tensor split between two workers, and layer buffers carved from the outside phase's: the same pass 1."""
    from layerswap.analysis import workspace
    from layerswap.analysis.deltas import DeltaSource, Reductions, run_pass1
    from layerswap.io import DeltaView, ModelFolder

    base = ModelFolder(tiny_experts["base"])
    sources = [DeltaSource(DeltaView(base, ModelFolder(tiny_experts[e]))) for e in ("math", "lang")]
    threads = torch.get_num_threads()
    monkeypatch.setattr(Reductions, "_probe", lambda self: True)  # the two-way split on any machine
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    try:
        monkeypatch.setattr(workspace, "HALVES_FROM", 1 << 60)
        plain = run_pass1(base, sources)
        monkeypatch.setattr(workspace, "HALVES_FROM", 1)
        halves = run_pass1(base, sources)
    finally:
        torch.set_num_threads(threads)
    assert halves.stats == plain.stats and halves.dots == plain.dots
    assert halves.base_sumsq == plain.base_sumsq


def test_arena_hands_out_disjoint_aligned_slices():
    from layerswap.analysis.workspace import Arena, Workspace

    ws = Workspace()
    ws.buf("a", 1000)
    ws.buf("b", 300, torch.bool)
    arena = ws.hand_over()
    x, y = arena.take(100, torch.float32), arena.take(100, torch.bool)
    assert x is not None and y is not None
    x.fill_(1.0)
    y.fill_(True)
    assert float(x.sum()) == 100.0 and x.data_ptr() % 64 == 0 and y.data_ptr() % 64 == 0
    assert arena.take(10_000, torch.float32) is None
    fresh = Workspace(arena, least=50)
    assert fresh.buf("c", 10).numel() == 10 and Arena([]).take(1, torch.float32) is None


def test_read_minus_over_an_empty_tensor(tiny_llama):
    from layerswap.analysis.workspace import Workspace
    from layerswap.io import ModelFolder

    from dataclasses import replace

    folder = ModelFolder(tiny_llama)
    empty = replace(folder.info(folder.names()[0]), shape=(0, 32), nbytes=0)
    assert Workspace().read_minus_over(empty, torch.empty(0)).numel() == 0
