"""Evaluation inputs (issue 31): lm-eval tasks named through ``lm_eval:`` and MGSM variants given by path.

An lm-eval task name lm-eval does not know, a task YAML that does not parse, a task whose headline metric is not
a mean of per-document scores (nothing to pair), a task whose data live on the unreachable Hub, the same in a
sweep config, and an MGSM variant with a non-numeric answer: one line each, before any model is loaded.
(lm-eval not installed is tested in tests/test_lm_eval_bridge.py: the catalogue runs in a process that has it.)
"""

from __future__ import annotations

import json

from faults_catalogue import Case, Env


def build(env: Env) -> None:
    folder = env.p("lm-eval-tasks")
    folder.mkdir()
    (folder / "bad.yaml").write_text("task: broken\n  metric_list: [\n", encoding="utf-8")
    data = folder / "docs.jsonl"
    data.write_text(json.dumps({"premise": "Mvua ilinyesha.", "choice1": "Barabara ililowa.", "choice2": "Jua liliwaka.", "label": 0}) + "\n", encoding="utf-8")
    bleu = env.p("lm-eval-bleu")
    bleu.mkdir()
    (bleu / "bleu.yaml").write_text(
        f"task: local_bleu\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_text: '{{premise}}'\ndoc_to_target: '{{choice1}}'\nmetric_list:\n  - metric: bleu\n",
        encoding="utf-8",
    )
    hub = env.p("lm-eval-hub")
    hub.mkdir()
    (hub / "hub.yaml").write_text(
        "task: hub_xcopa_sw\ndataset_path: cambridgeltl/xcopa\ndataset_name: sw\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{premise}}'\ndoc_to_target: label\ndoc_to_choice: ['{{choice1}}', '{{choice2}}']\nmetric_list:\n  - metric: acc\n",
        encoding="utf-8",
    )
    env.p("mgsm-variant-bad.jsonl").write_text(
        json.dumps({"question": "Juma ana machungwa 3.", "answer_number": "tatu", "language": "sw"}, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def _eval(env: Env, task: str, *extra: str) -> list[str]:
    return ["evaluate", str(env.base), "--task", task, "--langs", "sw", *extra, "--out", env.out]


OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

CASES: list[Case] = [
    Case(
        "lm-eval-unknown-task",
        "evaluate --task lm_eval:xcopa_swahili",
        lambda e: _eval(e, "lm_eval:xcopa_swahili"),
        "ConfigError",
        "unknown lm-eval task 'xcopa_swahili'",
        "pass the path of its yaml",
    ),
    Case(
        "lm-eval-yaml-does-not-parse",
        "evaluate --task lm_eval:bad.yaml (unbalanced brackets)",
        lambda e: _eval(e, f"lm_eval:{e.p('lm-eval-tasks') / 'bad.yaml'}"),
        "ConfigError",
        "does not parse",
        "fix the yaml",
    ),
    Case(
        "lm-eval-metric-not-per-example",
        "evaluate --task lm_eval:bleu.yaml (metric bleu, corpus-level)",
        lambda e: _eval(e, f"lm_eval:{e.p('lm-eval-bleu') / 'bleu.yaml'}"),
        "ConfigError",
        "no per-example score to pair",
        "pick a task with a per-document metric",
    ),
    Case(
        "lm-eval-hub-unreachable",
        "evaluate --task lm_eval:hub.yaml (dataset_path on the Hub, offline)",
        lambda e: _eval(e, f"lm_eval:{e.p('lm-eval-hub') / 'hub.yaml'}"),
        "InputPathError",
        "reads its data from the hugging face hub, which cannot be reached",
        "use a local copy",
        environ=lambda e: OFFLINE,
    ),
    Case(
        "sweep-lm-eval-yaml-does-not-parse",
        "sweep cfg.yaml (tasks: [proxy, lm_eval:bad.yaml])",
        lambda e: [
            "sweep",
            e.yaml("sweep.yaml", f"base: {e.base}\nmath: {e.math}\nlang: {e.lang}\nlanguages: [sw]\ntasks: [proxy, 'lm_eval:{e.p('lm-eval-tasks') / 'bad.yaml'}']\n"),
            "--out",
            e.out,
        ],
        "ConfigError",
        "does not parse",
        "fix the yaml",
    ),
    Case(
        "mgsm-variant-not-a-number",
        "evaluate --task mgsm --data variant.jsonl (answer_number 'tatu')",
        lambda e: _eval(e, "mgsm", "--data", str(e.p("mgsm-variant-bad.jsonl"))),
        "DataError",
        "answer_number 'tatu' is not a number",
        "fix that line",
    ),
]
