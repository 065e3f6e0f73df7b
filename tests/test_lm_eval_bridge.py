"""``lm_eval:<task>``: any lm-evaluation-harness task inside layerswap, scored example by example as lm-eval scores it.

Identity: for a generative task (MGSM-sw native CoT, lm-eval's own YAML on the local files, written into a
temporary folder) and a log-likelihood task (XCOPA-sw's YAML on a local JSONL written here), the bridge's
per-example scores, outputs and log-likelihoods equal lm-eval's own HF backend loading the same model from
disk: in process through ``simple_evaluate(model="hf")`` (fast), and through the ``lm_eval --model hf``
command line (slow: it indexes every task lm-eval ships).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import require_module

from layerswap.errors import ConfigError, InputPathError
from layerswap.evaluate import api, example_scores
from layerswap.evaluate.tasks import TASKS, get_task

LIMIT, MAX_NEW, BATCH = 4, 8, 2
XCOPA = [
    {"premise": "Mtoto alilia.", "choice1": "Alikuwa na njaa.", "choice2": "Alikuwa na furaha.", "question": "cause", "label": 0},
    {"premise": "Mvua ilinyesha.", "choice1": "Barabara ililowa.", "choice2": "Jua liliwaka.", "question": "effect", "label": 0},
    {"premise": "Nilifungua dirisha.", "choice1": "Chumba kilikuwa na joto.", "choice2": "Paka alilala.", "question": "cause", "label": 0},
    {"premise": "Alipoteza ufunguo.", "choice1": "Hakuweza kuingia.", "choice2": "Alinunua gari.", "question": "effect", "label": 0},
    {"premise": "Maji yalichemka.", "choice1": "Niliweka barafu.", "choice2": "Niliweka moto.", "question": "cause", "label": 1},
    {"premise": "Simu iliita.", "choice1": "Niliipika.", "choice2": "Niliijibu.", "question": "effect", "label": 1},
]


@pytest.fixture(scope="module", autouse=True)
def _lm_eval_here():
    require_module("lm_eval", "lm-eval is not installed (pip install -e '.[dev]'): the lm_eval: bridge cannot run")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    for name in [t for t in TASKS if t.startswith("lm_eval:")]:  # resolved names are added to the registry on first use
        del TASKS[name]


@pytest.fixture(scope="module")
def task_files(tmp_path_factory, data_dir) -> dict[str, Path]:
    """MGSM-sw native CoT (lm-eval's YAML on the local release) and XCOPA-sw (lm-eval's YAML on a local JSONL)."""
    import lm_eval

    from layerswap.evaluate.lm_eval_config import write_lm_eval_tasks

    root = tmp_path_factory.mktemp("lm_eval_tasks")
    [mgsm_name] = write_lm_eval_tasks(root / "mgsm", ["sw"], "native_cot", data_dir=data_dir)
    xc = root / "xcopa"
    xc.mkdir()
    data = xc / "xcopa_sw.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in XCOPA), encoding="utf-8")
    source = Path(lm_eval.__file__).parent / "tasks" / "xcopa" / "default_sw.yaml"
    (xc / "local_xcopa_sw.yaml").write_text(
        f"include: {source}\ntask: local_xcopa_sw\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {data}\n    test: {data}\n",
        encoding="utf-8",
    )
    return {"gen": root / "mgsm" / f"{mgsm_name}.yaml", "loglik": xc / "local_xcopa_sw.yaml", "xcopa_data": data}


def _bridge(model: Path, files: dict[str, Path]):
    names = [f"lm_eval:{files['gen']}", f"lm_eval:{files['loglik']}"]
    return names, api.evaluate(str(model), names, "sw", limit=LIMIT, max_new_tokens=MAX_NEW, batch_size=BATCH)


def _theirs(samples: list[dict]) -> dict[int, dict]:
    """lm-eval's samples (one per document and filter) per document: every metric per filter, output or log-likelihoods."""
    out: dict[int, dict] = {}
    for s in samples:
        rec = out.setdefault(int(s["doc_id"]), {})
        for m in s["metrics"]:
            rec[f"{m},{s['filter']}"] = float(s[m])
        rec["output"] = s["resps"][0][0] if isinstance(s["resps"][0][0], str) else None
        rec["logprobs"] = None if rec["output"] is not None else [float(r[0][0]) for r in s["resps"]]
    return out


def _assert_identical(result, names: list[str], theirs: dict[str, dict[int, dict]], task_names: list[str]) -> None:
    for name, task in zip(names, task_names, strict=True):
        ours = [r for r in result.records if r["task"] == name]
        ref = theirs[task]
        assert [int(r["id"]) for r in ours] == sorted(ref) and len(ours) == LIMIT
        for rec in ours:
            want = ref[int(rec["id"])]
            assert {k: rec[k] for k in want if "," in k} == {k: v for k, v in want.items() if "," in k}
            if want["output"] is not None:
                assert rec["output"] == want["output"]
            else:
                assert rec["logprobs"] == want["logprobs"]
        headline = get_task(name)
        assert example_scores(result, name)["score"].tolist() == [ref[int(r["id"])][f"{headline.metric},{_filter(name)}"] for r in ours]


def _filter(name: str) -> str:
    return "strict-match" if "mgsm" in name else "none"


def test_bridge_equals_lm_eval_in_process(tiny_llama, task_files):
    """The same scores, outputs and log-likelihoods as lm-eval's HF backend loading the model from disk."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with pytest.MonkeyPatch.context() as mp:  # the bridge generates with layerswap's runner, not HFLM's loop
        mp.setattr(HFLM, "generate_until", lambda *a, **k: pytest.fail("greedy generation fell back to HFLM.generate_until"))
        names, ours = _bridge(tiny_llama, task_files)
    task_names = ["layerswap_mgsm_native_cot_sw", "local_xcopa_sw"]
    manager = TaskManager(include_path=[str(task_files["gen"].parent), str(task_files["loglik"].parent)], include_defaults=False)
    res = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_llama},dtype=float32", tasks=task_names, task_manager=manager, limit=LIMIT,
        batch_size=BATCH, device="cpu", gen_kwargs=f"max_gen_toks={MAX_NEW}", log_samples=True, verbosity="ERROR",
    )
    _assert_identical(ours, names, {t: _theirs(res["samples"][t]) for t in task_names}, task_names)
    gen, loglik = ours.summary.to_dict("records")
    assert gen["exact_match"] == pytest.approx(res["results"][task_names[0]]["exact_match,strict-match"])
    assert loglik["acc"] == pytest.approx(res["results"][task_names[1]]["acc,none"])
    assert 0 <= gen["lang_fidelity"] <= 1 and loglik["lang_fidelity"] != loglik["lang_fidelity"]  # NaN: no text generated
    assert gen["lang"] == loglik["lang"] == "sw" and gen["n"] == loglik["n"] == LIMIT


@pytest.mark.slow
def test_bridge_equals_lm_eval_command_line(tiny_llama, task_files, tmp_path):
    """``lm_eval --model hf`` itself, on the model folder (a subprocess; it indexes all of lm-eval's tasks)."""
    names, ours = _bridge(tiny_llama, task_files)
    task_names = ["layerswap_mgsm_native_cot_sw", "local_xcopa_sw"]
    cmd = [
        sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={tiny_llama},dtype=float32",
        "--tasks", ",".join(task_names), "--include_path", str(task_files["gen"].parent.parent),  # one folder: both tasks' folders under it
        "--limit", str(LIMIT), "--batch_size", str(BATCH), "--device", "cpu", "--gen_kwargs", f"max_gen_toks={MAX_NEW}",
        "--log_samples", "--output_path", str(tmp_path / "out"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = {}
    for task in task_names:
        [path] = (tmp_path / "out").rglob(f"samples_{task}_*.jsonl")
        theirs[task] = _theirs([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()])
    _assert_identical(ours, names, theirs, task_names)


# --- bad input: one line, before any model loads ------------------------------------------------------------------


def _refused(task: str, error: type, match: str, tmp_path: Path) -> None:
    with pytest.raises(error, match=match):
        api.evaluate(tmp_path / "no-model-here", task, "sw")  # the model folder does not exist: the check came first


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: x\n  metric_list: [\n", encoding="utf-8")
    _refused(f"lm_eval:{bad}", ConfigError, "does not parse", tmp_path)
    nameless = tmp_path / "nameless" / "t.yaml"
    nameless.parent.mkdir()
    nameless.write_text("dataset_path: json\n", encoding="utf-8")
    _refused(f"lm_eval:{nameless.parent}", ConfigError, "names no task", tmp_path)
    _refused(f"lm_eval:{tmp_path / 'absent.yaml'}", InputPathError, "does not exist", tmp_path)
    _refused("lm_eval:", ConfigError, "names no task", tmp_path)


def test_metric_that_is_not_per_example(tmp_path, task_files):
    folder = tmp_path / "bleu"
    folder.mkdir()
    (folder / "t.yaml").write_text(
        f"task: local_bleu\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {task_files['xcopa_data']}\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_text: '{{premise}}'\ndoc_to_target: '{{choice1}}'\n"
        "metric_list:\n  - metric: bleu\n",
        encoding="utf-8",
    )
    _refused(f"lm_eval:{folder / 't.yaml'}", ConfigError, "aggregates as bleu .* no per-example score to pair", tmp_path)


def test_unknown_task_in_a_folder_and_lm_eval_missing(tmp_path, task_files, monkeypatch):
    from layerswap.evaluate.tasks import lm_eval_bridge

    two = tmp_path / "two"
    two.mkdir()
    for name in ("a", "b"):
        (two / f"{name}.yaml").write_text(task_files["loglik"].read_text(encoding="utf-8").replace("local_xcopa_sw", f"x_{name}"), encoding="utf-8")
    _refused(f"lm_eval:{two}", ConfigError, "holds 2 task YAMLs: name one of them", tmp_path)
    monkeypatch.setattr(lm_eval_bridge, "task_manager", lambda include: __import__("lm_eval.tasks").tasks.TaskManager(include_path=str(two), include_defaults=False))
    lm_eval_bridge.spec_for.cache_clear()
    _refused("lm_eval:no_such_task", ConfigError, "unknown lm-eval task 'no_such_task'", tmp_path)
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    lm_eval_bridge.spec_for.cache_clear()
    _refused("lm_eval:xcopa_sw", ConfigError, "need lm-evaluation-harness: pip install lm-eval", tmp_path)
    lm_eval_bridge.spec_for.cache_clear()


def test_hub_task_says_so_in_one_line(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # no network here either way; offline fails at once
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "t.yaml").write_text(
        "task: hub_task\ndataset_path: cambridgeltl/xcopa\ndataset_name: sw\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{premise}}'\ndoc_to_target: label\ndoc_to_choice: ['{{choice1}}', '{{choice2}}']\nmetric_list:\n  - metric: acc\n",
        encoding="utf-8",
    )
    _refused(f"lm_eval:{folder / 't.yaml'}", InputPathError, "from the Hugging Face Hub, which cannot be reached", tmp_path)


# --- in a sweep: stored, resumed and compared like every other task ---------------------------------------------


def test_sweep_over_proxy_and_two_lm_eval_tasks(tmp_path, tiny_experts, data_dir, task_files, monkeypatch):
    """A sweep over [proxy, lm_eval:<generative>, lm_eval:<log-likelihood>] runs, reports paired verdicts for all
    three, and a rerun resumes from the store (lm-eval is not run again) with identical tables."""
    import pandas as pd
    from conftest import tiny_sweep_config

    from layerswap.evaluate.tasks import lm_eval_bridge
    from layerswap.sweep import run_sweep
    from layerswap.sweep.config import validate_sweep_dict

    xc = tmp_path / "xcopa"  # a copy: its data file is changed below
    xc.mkdir()
    data = xc / "xcopa_sw.jsonl"
    data.write_bytes(task_files["xcopa_data"].read_bytes())
    (xc / "t.yaml").write_text(task_files["loglik"].read_text(encoding="utf-8").replace(str(task_files["xcopa_data"]), str(data)), encoding="utf-8")
    gen, loglik = f"lm_eval:{task_files['gen']}", f"lm_eval:{xc / 't.yaml'}"
    cfg = validate_sweep_dict(
        tiny_sweep_config(tiny_experts, data_dir, tasks=["proxy", gen, loglik], limit=4, max_new_tokens=6, batch_size=2,
                          candidates={"grid": {"bottom": [1], "top": [1], "transition": [0]}, "baselines": ["base", "math"]})
    )
    out = tmp_path / "sweep"
    first = run_sweep(cfg, out, log=lambda s: None)
    results = pd.read_csv(out / "results.csv")
    assert set(results["task"]) == {"proxy", gen, loglik}
    assert {"exact_match", "acc", "lang_fidelity", "cot_fidelity"} <= set(results["metric"])
    comps = pd.read_csv(out / "comparisons.csv")
    assert set(comps["task"]) == {"proxy", gen, loglik} and comps["n"].eq(4).all()
    assert set(comps.loc[comps["task"] == loglik, "test"]) == {"newcombe"}
    # Language fidelity of the generative task is stored per example and paired like its headline (issue 31).
    assert {"lang_fidelity", "cot_fidelity"} <= set(comps.loc[comps["task"] == gen, "metric"])
    stored = pd.read_csv(out / "candidates" / "base.scores.csv")
    assert stored.loc[stored["task"] == loglik, "id"].astype(str).tolist() == ["0", "1", "2", "3"]  # lm-eval's doc ids
    runs = []
    real = lm_eval_bridge.evaluate_lm_eval
    monkeypatch.setattr(lm_eval_bridge, "evaluate_lm_eval", lambda *a, **k: runs.append(a) or real(*a, **k))
    again = run_sweep(cfg, out, log=lambda s: None)
    cols = ["candidate", "task", "language", "metric", "value", "stderr", "ci_low", "ci_high", "n"]
    pd.testing.assert_frame_equal(first.results[cols], again.results[cols])
    pd.testing.assert_frame_equal(first.comparisons, again.comparisons)
    assert not runs  # resumed: nothing evaluated again
    with open(data, "a", encoding="utf-8") as fh:  # the task's data changed: the stored results are stale
        fh.write(json.dumps(XCOPA[0], ensure_ascii=False) + "\n")
    run_sweep(validate_sweep_dict(cfg.model_dump()), out, log=lambda s: None)
    assert len(runs) == 2 * 3  # both lm_eval: tasks, for each of the 3 candidates


def test_a_block_scores_only_its_documents(tiny_llama, task_files):
    """A halving block (``EvalRequest.offset``) runs lm-eval on documents offset..limit only, with their own doc ids."""
    from layerswap.evaluate.runner import load_model
    from layerswap.evaluate.tasks import EvalRequest

    spec = get_task(f"lm_eval:{task_files['loglik']}")
    assert spec.scores_blocks
    lm = load_model(tiny_llama, device="cpu")
    whole = {r["id"]: r["score"] for r in spec.run(lm, EvalRequest(limit=5, batch_size=BATCH)).records}
    block = spec.run(lm, EvalRequest(limit=5, offset=2, batch_size=BATCH))
    assert [r["id"] for r in block.records] == ["2", "3", "4"]
    assert {r["id"]: r["score"] for r in block.records} == {k: whole[k] for k in ("2", "3", "4")}
    assert block.summary["n"].tolist() == [3]
