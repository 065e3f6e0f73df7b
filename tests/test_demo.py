"""``layerswap demo --quick``: the whole pipeline on the real Gemma 3 270M and real data (slow)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from layerswap.cli import main


@pytest.mark.slow
def test_demo_quick_runs_end_to_end(tmp_path, data_dir, capsys):
    out = tmp_path / "demo"
    figures = tmp_path / "figures"
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--quick", "--data-dir", str(data_dir), "--out", str(out), "--figures", str(figures)])
    assert exc.value.code == 0
    report = (out / "report.md").read_text()
    opening = report.split("\n")[2:4]  # after the title: the experts' checks, math then language
    assert "math expert" in opening[0] and "over the base" in opening[0] and "language expert" in opening[1], opening
    assert (out / "checks" / "checks.json").exists() and (out / "checks" / "scores.csv").exists()
    assert "not a replication" in report and "Best mean on the proxy" in report and "Paired comparison with" in report
    assert "Language check (FLORES-sw bits per byte" in report and (out / "sweep" / "comparisons.csv").exists()
    for stage in ("experts/math", "experts/lang", "checks", "analysis", "importance"):
        assert (out / stage / "layerswap.json").exists(), stage
    assert (out / "analysis" / "boundaries.yaml").exists()
    results = pd.read_csv(out / "sweep" / "results.csv")
    assert {"proxy", "flores"} <= set(results["task"]) and results["value"].notna().all()
    assert any(results["method"] == "layer_swap")
    published = {p.name for p in figures.iterdir()}
    assert "demo_deltas_shares.png" in published and "demo_best_vs_baselines_proxy.png" in published
    # The evidence run's collector reads a demo folder: it must keep reading what the demo writes.
    collect = Path(__file__).resolve().parents[1] / "experiments" / "gemma3-270m-sw" / "collect.py"
    dest = tmp_path / "evidence"
    dest.mkdir()
    done = subprocess.run([sys.executable, str(collect), str(out), "--dest", str(dest)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    answers = (dest / "README.md").read_text()
    for heading in ("## (a)", "## (b)", "## (c)", "## (d)"):
        assert heading in answers
    assert "math expert:" in answers and "| `" in answers and "rho" in answers
    assert (dest / "results" / "report.md").exists() and not list((dest / "results" / "experts").rglob("*.safetensors"))
    # It replaces only what it wrote: never a run folder (which has a demo.yaml too).
    refused = subprocess.run([sys.executable, str(collect), str(out), "--dest", str(out / "sweep")], capture_output=True, text=True)
    assert refused.returncode != 0 and "overlaps the run folder" in refused.stderr and not (out / "sweep" / "results").exists()
    other = tmp_path / "other"
    shutil.copytree(out / "checks", other / "results")
    (other / "results" / "demo.yaml").write_text("base: x\n")
    refused = subprocess.run([sys.executable, str(collect), str(out), "--dest", str(other)], capture_output=True, text=True)
    assert refused.returncode != 0 and "not written by collect.py" in refused.stderr and (other / "results" / "checks.json").exists()


def test_demo_report_states_the_paired_verdict(tmp_path):
    """The demo's report says which candidates the leader cannot be separated from, whether it beats
    each expert and baseline on the proxy, and whether it kept the language (FLORES), all paired."""
    from layerswap.sweep import ResultStore, build_candidates, run_candidates, settings_key, validate_sweep_dict
    from layerswap.sweep.compare import compare_candidates
    from layerswap.sweep.demo import DemoConfig, _demo_report
    from layerswap.sweep.report import select

    cfg = validate_sweep_dict(
        {
            "base": "b",
            "math": "m",
            "lang": "l",
            "languages": ["sw"],
            "tasks": ["proxy", "flores"],
            "candidates": {"grid": {"bottom": [2, 3], "top": [1], "transition": [0]}, "baselines": ["base", "math", "lang"]},
        }
    )
    cands = build_candidates(cfg, 12)
    shared = np.random.default_rng(0).normal(size=12)
    nbytes = np.random.default_rng(1).integers(50, 150, size=12).astype(float)

    def evaluate(cand):
        rng = np.random.default_rng(zlib.crc32(cand.name.encode()))
        offset = {"swap-b2-u1": 0.0, "swap-b3-u1": -0.001, "base": -3.0, "math": -2.0, "lang": -4.0}[cand.name]
        own = np.random.default_rng(7).normal(scale=0.2, size=12)
        own = own[::-1] if cand.name == "swap-b3-u1" else own if cand.name == "swap-b2-u1" else rng.normal(scale=0.2, size=12)
        logprob = offset + shared + own  # the twin: the same noise in another order, 0.001 lower
        bits = nbytes * (1.5 if cand.name == "math" else 1.0) + rng.normal(scale=2, size=12)
        scores = pd.concat(
            [
                pd.DataFrame({"task": "proxy", "lang": "sw", "id": [f"p{i}" for i in range(12)], "score": logprob}),
                pd.DataFrame(
                    {
                        "task": "flores",
                        "lang": "swh",
                        "id": [f"f{i}" for i in range(12)],
                        "score": bits / nbytes,
                        "num": bits,
                        "den": nbytes,
                    }
                ),
            ]
        )
        summary = pd.DataFrame(
            [
                {"task": "proxy", "language": "sw", "metric": "gold_logprob", "value": logprob.mean()},
                {"task": "flores", "language": "swh", "metric": "bits_per_byte", "value": bits.sum() / nbytes.sum()},
            ]
        )
        return summary, scores

    store = ResultStore(tmp_path, settings_key(cfg))
    results = run_candidates(cands, store, lambda c: 0.0, evaluate)
    comps = compare_candidates(
        results, {c.name: store.load_scores(c) for c in cands}, [("proxy", "gold_logprob"), ("flores", "bits_per_byte")]
    )
    sweep = {"results": results, "comparisons": comps, "selection": select(results, "proxy", "gold_logprob")}
    checks = {
        "math": {
            "diff": 0.21,
            "low": 0.15,
            "high": 0.27,
            "p_value": 1e-4,
            "n": 60,
            "learned": True,
            "base": -1.2,
            "expert": -0.99,
            "data": "GSM8K test",
        },
        "lang": {
            "diff": 0.01,
            "low": -0.02,
            "high": 0.04,
            "p_value": 0.5,
            "n": 60,
            "learned": False,
            "base": 2.3,
            "expert": 2.31,
            "data": "FLORES",
        },
    }
    report = _demo_report(DemoConfig(), tmp_path, {"sweep": 1.0}, sweep, checks)
    first, second = report.split("\n")[2:4]
    assert first.startswith("math expert: +0.210 nats per token [95% CI +0.150, +0.270] over the base")
    assert second.startswith(
        "**the language expert did not measurably learn**: language expert: +0.010 [95% CI -0.020, +0.040] bits per byte"
    )
    assert "Best mean on the proxy" in report and "95% CI" in report and "Winner" not in report
    assert "Not a clear winner" in report and "`swap-b3-u1`" in report  # the planted twin
    assert "beats the baseline `base`" in report and "beats the expert `math`" in report and "beats the expert `lang`" in report
    assert "Language check (FLORES-sw" in report and "lower (better) than `math`" in report


def test_demo_options_come_from_its_config_and_quick_keeps_what_was_given(monkeypatch, tmp_path):
    """Every DemoConfig field is a flag (written once, in the config); --quick shrinks only the budgets not given."""
    import layerswap.sweep.demo as demo
    from layerswap.cli import main
    from layerswap.cli.options import flags_of

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda config, out: seen.update(config=config, out=out))
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--quick", "--limit", "5", "--baselines", "base", "--baselines", "ties", "--out", str(tmp_path / "d")])
    assert exc.value.code == 0
    config = seen["config"]
    assert config.limit == 5 and config.baselines == ["base", "ties"]  # given: kept
    assert config.steps == demo.DemoConfig.quick_config().steps == 2  # not given: the quick budget
    from typer.main import get_command

    from layerswap.cli import app

    params = {p.name for p in get_command(app).commands["demo"].params}
    assert {f.field for f in flags_of(demo.DemoConfig)} <= params


def test_demo_reads_a_config_file_and_flags_win(monkeypatch, tmp_path):
    """``--config FILE.yaml`` (the evidence run's form): its keys are the flags; a flag given wins; the experiment's file is valid."""
    from pathlib import Path

    import layerswap.sweep.demo as demo
    from layerswap.cli import main
    from layerswap.config import load_config

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda config, out: seen.update(config=config, out=out))
    cfg = tmp_path / "demo.yaml"
    cfg.write_text("steps: 7\nlimit: 9\nscreen_examples: 30\nfinalists: 3\nfinal_baselines: [linear, ties]\n")
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--config", str(cfg), "--limit", "11", "--out", str(tmp_path / "d")])
    assert exc.value.code == 0
    config = seen["config"]
    assert (config.steps, config.limit, config.screen_examples, config.finalists) == (7, 11, 30, 3)
    assert config.final_baselines == ["linear", "ties"]
    shipped = Path(__file__).resolve().parents[1] / "experiments" / "gemma3-270m-sw" / "config.yaml"
    evidence = load_config(demo.DemoConfig, shipped, {})
    assert set(evidence.final_baselines) <= set(evidence.baselines) and evidence.screen_examples >= evidence.limit


def test_demo_output_guard_resumes_only_a_demo_folder(tmp_path, monkeypatch):
    """check_demo_outputs: a new, empty or earlier demo folder passes (reruns resume); anything else,
    an input, or --figures in an input is refused before run_demo creates anything."""
    from layerswap.errors import InputPathError, OutputExistsError
    from layerswap.io import write_provenance
    from layerswap.sweep.demo import DemoConfig, check_demo_outputs, run_demo

    monkeypatch.setenv("LAYERSWAP_CACHE", str(tmp_path / "cache"))
    base, data = tmp_path / "base", tmp_path / "data"
    base.mkdir()
    (base / "config.json").write_text("{}")
    data.mkdir()
    config = DemoConfig(base=str(base), data_dir=str(data), figures=str(tmp_path / "figures"))
    assert check_demo_outputs(config, tmp_path / "new", data) == tmp_path / "new" and not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    check_demo_outputs(config, tmp_path / "empty", data)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "demo.yaml").write_text("base: x\n")
    (earlier / "report.md").write_text("done\n")
    check_demo_outputs(config, earlier, data)
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "report.md").write_text("done\n")
    write_provenance(finished, {"kind": "demo"})
    check_demo_outputs(config, finished, data)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine\n")
    with pytest.raises(OutputExistsError, match="folder of something else"):
        check_demo_outputs(config, foreign, data)
    write_provenance(foreign, {"kind": "merge"})  # a layerswap output, but not a demo's
    with pytest.raises(OutputExistsError, match="folder of something else"):
        check_demo_outputs(config, foreign, data)
    with pytest.raises(InputPathError, match="is the input"):
        run_demo(config, base)
    assert sorted(p.name for p in base.iterdir()) == ["config.json"]  # no demo.yaml written into the input
    with pytest.raises(InputPathError, match="lies inside the input"):
        run_demo(config.model_copy(update={"figures": str(data / "figs")}), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (data / "figs").exists()
    embedded = DemoConfig(data_dir=str(data))  # the default base: its cache folder is an input
    with pytest.raises(InputPathError, match="lies inside the input"):
        run_demo(embedded, tmp_path / "cache" / "models" / embedded.base / "demo")
    assert not (tmp_path / "cache").exists()


def test_expert_checks_pair_each_expert_with_the_base_on_its_own_skill(tiny_experts, data_dir, tmp_path):
    """check_experts: GSM8K test questions after MGSM's 250 (math) and FLORES (language), same examples on both sides."""
    import json

    from layerswap.sweep.demo import MGSM_QUESTIONS, DemoConfig, check_experts, math_check_pairs

    pairs = math_check_pairs(3, data_dir)
    assert [i for i, _, _ in pairs] == [f"gsm8k-test-{MGSM_QUESTIONS + k}" for k in range(3)]
    assert (
        pairs[0][1].startswith("Question: ") and pairs[0][1].endswith("\nStep-by-Step Answer:") and "The answer is" in pairs[0][2]
    )
    config = DemoConfig(base=str(tiny_experts["base"]), data_dir=str(data_dir), check_examples=4)
    experts = {"math": tiny_experts["math"], "lang": tiny_experts["lang"]}
    said = []
    checks = check_experts(config, tiny_experts["base"], experts, tmp_path / "checks", log=said.append)
    assert checks["math"]["n"] == 4 and checks["lang"]["n"] == 4 and checks["lang"]["higher_is_better"] is False
    assert json.loads((tmp_path / "checks" / "checks.json").read_text()) == checks
    scores = pd.read_csv(tmp_path / "checks" / "scores.csv")
    assert set(zip(scores["model"], scores["task"], strict=True)) == {
        ("base", "math"),
        ("base", "flores"),
        ("math", "math"),
        ("lang", "flores"),
    }
    base_math = scores[(scores["model"] == "base") & (scores["task"] == "math")]["score"].to_numpy()
    math_math = scores[(scores["model"] == "math") & (scores["task"] == "math")]["score"].to_numpy()
    assert checks["math"]["diff"] == pytest.approx(float((math_math - base_math).mean()))
    assert any(line.startswith(("math expert", "**the math expert")) for line in said)


def test_a_resumed_sweep_stage_reports_its_seconds_over_all_runs(tmp_path):
    """A resumed demo reloads the sweep in seconds; the report must give what the stage cost in all."""
    from layerswap.sweep import demo

    (tmp_path / ".sweep.seconds").write_text("917.0\n")  # the interrupted first run
    seconds, result = demo._resumable_stage(tmp_path / "sweep", lambda: "rest")
    assert result == "rest" and 917.0 <= seconds < 917.0 + 60
    assert float((tmp_path / ".sweep.seconds").read_text()) == pytest.approx(seconds, abs=0.1)
    again, _ = demo._resumable_stage(tmp_path / "sweep", lambda: None)
    assert again >= round(seconds, 1)  # the record keeps tenths of a second

    def interrupted():
        raise KeyboardInterrupt

    (tmp_path / ".sweep.seconds").unlink()
    with pytest.raises(KeyboardInterrupt):
        demo._resumable_stage(tmp_path / "sweep", interrupted)
    assert (tmp_path / ".sweep.seconds").exists()  # an interrupted run's time is kept for the resumed report
