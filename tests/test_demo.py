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
    lines = report.split("\n")
    assert lines[2] == "## The answer: the target", lines[:4]  # the answer first, then the screen, then how it was made
    at = next(i for i, line in enumerate(lines) if "math expert" in line)  # "**the math expert did not ...**: math expert: ..."
    opening = lines[at : at + 2]  # the experts' checks, math then language
    assert "math expert" in opening[0] and "over the base" in opening[0] and "language expert" in opening[1], opening
    assert (out / "checks" / "checks.json").exists() and (out / "checks" / "scores.csv").exists()
    assert "not a replication" in report and "Best mean on the proxy" in report and "Paired comparisons with" in report
    assert "Language check (FLORES-sw bits per byte" in report and (out / "sweep" / "comparisons.csv").exists()
    from test_sweep_compare import _contradicts  # no verdict of the run contradicts its interval

    comps = pd.read_csv(out / "sweep" / "comparisons.csv")
    assert len(comps) and not comps.apply(_contradicts, axis=1).any()
    assert "lang_fidelity" in set(comps.loc[comps["task"] == "mgsm", "metric"])  # paired like the headline
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
    refused = subprocess.run(
        [sys.executable, str(collect), str(out), "--dest", str(out / "sweep")], capture_output=True, text=True
    )
    assert refused.returncode != 0 and "overlaps the run folder" in refused.stderr and not (out / "sweep" / "results").exists()
    other = tmp_path / "other"
    shutil.copytree(out / "checks", other / "results")
    (other / "results" / "demo.yaml").write_text("base: x\n")
    refused = subprocess.run([sys.executable, str(collect), str(out), "--dest", str(other)], capture_output=True, text=True)
    assert (
        refused.returncode != 0 and "not written by collect.py" in refused.stderr and (other / "results" / "checks.json").exists()
    )


def test_demo_report_states_the_paired_verdict(tmp_path):
    """The demo's report says which candidates the leader cannot be separated from, whether it beats
    each expert and baseline on the proxy, and whether it kept the language (FLORES), all paired."""
    from layerswap.pipeline.config import DemoConfig
    from layerswap.pipeline.report import demo_report
    from layerswap.pipeline.stages import StageCost
    from layerswap.sweep import ResultStore, build_candidates, run_candidates, settings_key, validate_sweep_dict
    from layerswap.sweep.compare import compare_candidates
    from layerswap.sweep.selection import SweepResult, select

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
    sweep = SweepResult(results=results, comparisons=comps, selection=select(results, "proxy", "gold_logprob"))
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
    report = demo_report(DemoConfig(), tmp_path, {"sweep": StageCost(1.0, 812.0)}, sweep, checks)
    lines = report.split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("math expert:"))
    first, second = lines[at : at + 2]
    # The answer first (the target), then the screen and the language check, then how it was made.
    assert report.index("## The answer") < report.index("## The screen") < report.index("Language check") < report.index("## How it was made")
    assert first.startswith("math expert: +0.210 nats per token [95% CI +0.150, +0.270] over the base")
    assert second.startswith(
        "**the language expert did not measurably learn**: language expert: +0.010 [95% CI -0.020, +0.040] bits per byte"
    )
    assert "Best mean on the proxy" in report and "95% CI" in report and "Winner" not in report
    assert "Not a clear winner" in report and "`swap-b3-u1`" in report  # the planted twin
    assert "beats the baseline `base`" in report and "beats the expert `math`" in report and "beats the expert `lang`" in report
    assert "Language check (FLORES-sw" in report and "- `base` beats the expert `math`" in report and "the expert `lang`" in report
    assert "| stage | seconds | peak memory (MiB) |" in report and "| sweep | 1 | 812 |" in report
    assert "**Examples needed.** The best swap `swap-b2-u1` against `base`" in report and "with 80% power" in report


def test_demo_options_come_from_its_config_and_quick_keeps_what_was_given(monkeypatch, tmp_path):
    """Every DemoConfig field is a flag (written once, in the config); --quick shrinks only the budgets not given."""
    import layerswap.pipeline.run as run
    from layerswap.cli import main
    from layerswap.cli.options import flags_of
    from layerswap.pipeline.config import DemoConfig, sweep_config

    seen = {}
    monkeypatch.setattr(run, "run_demo", lambda config, out: seen.update(config=config, out=out))
    argv = ["demo", "--quick", "--limit", "5", "--baselines", "base", "--baselines", "ties", "--out", str(tmp_path / "d")]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--sweep.cache-dtype", "model", "--sweep.candidates.halving.alpha", "0.1"])
    assert exc.value.code == 0
    config = seen["config"]
    assert config.limit == 5 and config.baselines == ["base", "ties"]  # given: kept
    assert config.steps == DemoConfig.quick_config().steps == 2  # not given: the quick budget
    sweep = sweep_config(config, base="b", math="m", lang="l", boundaries=None, data_dir=None)
    assert sweep.cache_dtype == "model" and sweep.candidates.halving.alpha == 0.1  # a sweep field, dotted
    assert sweep.candidates.halving.block == 2 and sweep.candidates.search == "halving"  # the demo's and sweep.yaml's
    from typer.main import get_command

    from layerswap.cli import app

    params = {p.name for p in get_command(app).commands["demo"].params}
    assert {f.param for f in flags_of(DemoConfig)} <= params
    assert {"sweep__cache_dtype", "sweep__device", "sweep__dtype", "sweep__candidates__search"} <= params


def test_demo_reads_a_config_file_and_flags_win(monkeypatch, tmp_path):
    """``--config FILE.yaml`` (the evidence run's form): its keys are the flags; a flag given wins; the experiment's file is valid."""
    from pathlib import Path

    import layerswap.pipeline.run as run
    from layerswap.cli import main
    from layerswap.config import dump_config, load_config
    from layerswap.pipeline.config import DemoConfig

    seen = {}
    monkeypatch.setattr(run, "run_demo", lambda config, out: seen.update(config=config, out=out))
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(
        "steps: 7\nlimit: 9\nscreen_examples: 30\nfinalists: 3\nfinal_baselines: [linear, ties]\n"
        "sweep:\n  device: cpu\n  candidates:\n    halving: {alpha: 0.2}\n"
    )
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "demo",
                "--config",
                str(cfg),
                "--limit",
                "11",
                "--sweep.candidates.halving.budget",
                "500",
                "--out",
                str(tmp_path / "d"),
            ]
        )
    assert exc.value.code == 0
    config = seen["config"]
    assert (config.steps, config.limit, config.screen_examples, config.finalists) == (7, 11, 30, 3)
    assert config.final_baselines == ["linear", "ties"]
    # the file's nested keys and the dotted flag merge key by key; only what was set is written back
    assert config.sweep.model_dump(exclude_unset=True) == {
        "device": "cpu",
        "candidates": {"halving": {"alpha": 0.2, "budget": 500}},
    }
    written = tmp_path / "written.yaml"
    written.write_text(dump_config(config))
    assert load_config(DemoConfig, written) == config
    shipped = Path(__file__).resolve().parents[1] / "experiments" / "gemma3-270m-sw" / "config.yaml"
    evidence = load_config(DemoConfig, shipped, {})
    assert set(evidence.final_baselines) <= set(evidence.baselines) and evidence.screen_examples >= evidence.limit


def test_demo_output_guard_resumes_only_a_demo_folder(tmp_path, monkeypatch):
    """check_demo_outputs: a new, empty or earlier demo folder passes (reruns resume); anything else,
    an input, or --figures in an input is refused before run_demo creates anything."""
    from layerswap.errors import InputPathError, OutputExistsError
    from layerswap.io import write_provenance
    from layerswap.pipeline.config import DemoConfig
    from layerswap.pipeline.outputs import check_demo_outputs
    from layerswap.pipeline.run import run_demo

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
    """check_experts: the registered gsm8k_solution task (GSM8K test after MGSM's 250) for math and
    FLORES for the language, same examples on both sides."""
    import json

    from layerswap.evaluate.tasks import get_task
    from layerswap.evaluate.tasks.gsm8k_solution import solution_pairs
    from layerswap.evaluate.tasks.proxy_cot import MGSM_QUESTIONS
    from layerswap.pipeline.checks import check_experts
    from layerswap.pipeline.config import DemoConfig

    assert not get_task("gsm8k_solution").in_sweep  # a check outside the sweep, never a sweep's score
    pairs = solution_pairs(3, data_dir)
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
        ("base", "gsm8k_solution"),
        ("base", "flores"),
        ("math", "gsm8k_solution"),
        ("lang", "flores"),
    }
    base_math = scores[(scores["model"] == "base") & (scores["skill"] == "math")]["score"].to_numpy()
    math_math = scores[(scores["model"] == "math") & (scores["skill"] == "math")]["score"].to_numpy()
    assert checks["math"]["diff"] == pytest.approx(float((math_math - base_math).mean()))
    assert any(line.startswith(("math expert", "**the math expert")) for line in said)


def test_a_resumed_stage_reports_its_cost_over_all_runs(tmp_path):
    """A resumed demo reloads the sweep in seconds; the report must give what the stage cost in all,
    and each stage's peak memory beside its seconds."""
    import json

    from layerswap.pipeline.stages import StageCost, cost_record, read_cost, resumable_stage, stage

    folder = tmp_path / "sweep"
    cost_record(folder).write_text(json.dumps({"seconds": 917.0, "peak_rss_mib": 5000.0}))  # the interrupted first run
    cost, result = resumable_stage(folder, lambda: "rest")
    assert result == "rest" and cost.seconds >= 917.0 and cost.peak_rss_mib == 5000.0  # the larger peak of the runs
    assert read_cost(folder) == cost
    again, _ = resumable_stage(folder, lambda: None)
    assert again.seconds >= cost.seconds

    def interrupted():
        raise KeyboardInterrupt

    cost_record(folder).unlink()
    with pytest.raises(KeyboardInterrupt):
        resumable_stage(folder, interrupted)
    kept = read_cost(folder)  # an interrupted run's cost is kept for the resumed report
    assert kept is not None and kept.peak_rss_mib > 0

    done = tmp_path / "analysis"
    said = []
    first = stage("analyse", done, said.append, lambda: (done.mkdir(), (done / "layerswap.json").write_text("{}")))
    assert first.peak_rss_mib > 0 and read_cost(done) == first
    assert stage("analyse", done, said.append, lambda: pytest.fail("a complete stage ran again")) == first
    assert said[-1].startswith("[analyse] done already") and isinstance(first, StageCost)


def test_the_8b_recipe_dry_run_plans_every_stage_and_writes_nothing(data_dir, tmp_path, capsys):
    """``demo --config experiments/llama-3.1-8b-sw/config.yaml --dry-run``: inputs checked (the 8B base is
    absent here and said to be), the stage table printed from base_params_b, nothing created."""
    recipe = Path(__file__).resolve().parents[1] / "experiments" / "llama-3.1-8b-sw"
    for name in ("config.yaml", "config-lora.yaml"):
        out = tmp_path / name
        with pytest.raises(SystemExit) as exc:
            main(["demo", "--config", str(recipe / name), "--data-dir", str(data_dir), "--out", str(out), "--dry-run"])
        assert exc.value.code == 0
        said = capsys.readouterr().out
        assert "[MISSING] base models/Llama-3.1-8B" in said and "[ok] sweep target (MGSM-sw): 250 questions" in said
        stages = [line.split("|")[1].strip() for line in said.splitlines() if line.startswith("| ") and "---" not in line]
        assert stages == ["stage", "finetune_math", "finetune_lang", "check_experts", "analyze", "importance", "sweep"]
        assert "Base of 8.03e9 parameters" in said and "80% power for a difference of" in said
        assert ("does NOT fit 80 GB" in said) == (name == "config.yaml")  # full fine-tuning of 8B: 8 GPUs
        assert not out.exists()


def test_the_demo_report_shows_the_target_with_language_fidelity():
    import pandas as pd

    from layerswap.pipeline.report import SweepReads, _target_lines

    def row(cand, metric, value, lo, hi):
        return {"candidate": cand, "method": "identity", "task": "mgsm", "language": "sw", "metric": metric, "value": value,
                "stderr": 0.1, "ci_low": lo, "ci_high": hi, "n": 12, "bottom": None, "top": None, "transition": None,
                "analysis_score": None}

    results = pd.DataFrame([
        row("base", "exact_match", 0.0, 0.0, 0.24), row("base", "lang_fidelity", 0.75, 0.47, 0.91),
        row("base", "cot_fidelity", 0.5, 0.3, 0.7), row("math", "exact_match", 1 / 12, 0.01, 0.35),
    ])
    lines = _target_lines(SweepReads(results, None, None), "sw")
    table = "\n".join(lines)
    assert "| `base` | 0.00 [0.00, 0.24] | 0.75 [0.47, 0.91] | 0.50 [0.30, 0.70] |" in table
    assert "| `math` | 0.08 [0.01, 0.35] | n/a | n/a |" in table
    assert _target_lines(SweepReads(results[results["task"] == "none"], None, None), "sw") == []
