"""lm-evaluation-harness task configs that read the same local MGSM files as layerswap.

Used by the faithfulness tests and ``benchmarks/bench_evaluate.py`` to run lm-eval on exactly
our data offline: the local TSV and exemplar JSON are converted to the ``juletxara/mgsm`` field
layout (``question``, ``answer``, ``answer_number``) and each task includes lm-eval's own
``mgsm_<format>_<lang>.yaml``, overriding only the data source and the few-shot sampler
(``first_n``, the exemplars in release order, which is what ``--shots N`` uses here).
"""

from __future__ import annotations

import json
from pathlib import Path

from layerswap.evaluate.mgsm import load_examples, load_exemplars

FORMAT_DIRS = {"direct": "direct", "native_cot": "native_cot"}


def lm_eval_task_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks" / "mgsm"


def task_name(lang: str, fmt: str) -> str:
    return f"layerswap_mgsm_{fmt}_{lang}"


def write_lm_eval_tasks(out: str | Path, langs: list[str], fmt: str, *, data_dir: str | Path | None = None) -> list[str]:
    """Write task YAMLs + JSONL data under ``out`` (pass it as ``include_path``); return task names."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for lang in langs:
        test = out / f"mgsm_{lang}_test.jsonl"
        train = out / f"mgsm_{lang}_train.jsonl"
        with open(test, "w", encoding="utf-8") as fh:
            for ex in load_examples(lang, data_dir=data_dir):
                fh.write(json.dumps({"question": ex.question, "answer": None, "answer_number": int(ex.gold)}, ensure_ascii=False) + "\n")
        with open(train, "w", encoding="utf-8") as fh:
            for ex in load_exemplars(lang, data_dir=data_dir):
                fh.write(json.dumps({"question": ex.question, "answer": ex.answer, "answer_number": int(ex.number)}, ensure_ascii=False) + "\n")
        source = lm_eval_task_dir() / FORMAT_DIRS[fmt] / f"mgsm_{fmt}_{lang}.yaml"
        name = task_name(lang, fmt)
        yaml_text = (
            f"include: {source}\n"
            f"task: {name}\n"
            "tag: []\n"
            "dataset_path: json\n"
            "dataset_name: null\n"
            "dataset_kwargs:\n"
            "  data_files:\n"
            f"    train: {train}\n"
            f"    test: {test}\n"
            "fewshot_config:\n"
            "  sampler: first_n\n"
        )
        (out / f"{name}.yaml").write_text(yaml_text, encoding="utf-8")
        names.append(name)
    return names
