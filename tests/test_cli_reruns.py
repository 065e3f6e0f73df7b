"""Reruns a user would type: resuming a sweep from the config it saved, evaluating an adapter next to its base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import tiny_sweep_config

from layerswap.cli import main


def _run(argv: list[str], capsys) -> tuple[int, str]:  # noqa: ANN001
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0), capsys.readouterr().err


def test_a_sweep_resumes_from_the_config_it_saved(tmp_path, tiny_experts, data_dir, capsys, monkeypatch):
    monkeypatch.setenv("LAYERSWAP_QUIET", "1")
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(tiny_sweep_config(tiny_experts, data_dir, candidates={"grid": {"bottom": [1], "top": [1], "transition": [0]}, "baselines": ["base"]})))
    out = tmp_path / "sweep"
    assert _run(["sweep", str(cfg), "--out", str(out)], capsys)[0] == 0
    before = (out / "results.csv").read_text()
    code, err = _run(["sweep", str(out / "sweep.yaml"), "--out", str(out)], capsys)  # the saved copy: resumes
    assert code == 0, err
    assert (out / "results.csv").read_text() == before
    held = tmp_path / "held"
    held.mkdir()
    (held / "my-sweep.yaml").write_text(cfg.read_text())
    code, err = _run(["sweep", str(held / "my-sweep.yaml"), "--out", str(held)], capsys)  # a folder holding the config: refused
    assert code != 0 and "input" in err, err


def test_evaluating_an_adapter_refuses_its_base_as_output_before_any_work(tmp_path, tiny_lora, tiny_experts, capsys, monkeypatch):
    from layerswap.evaluate import result as result_module

    base = Path(json.loads((tiny_lora / "adapter_config.json").read_text())["base_model_name_or_path"])
    assert base.resolve() == Path(tiny_experts["base"]).resolve()
    monkeypatch.setattr(result_module, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the output was checked"))
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "1+1?", "answer": "2"}\n')
    code, err = _run(["evaluate", str(tiny_lora), "--task", "custom", "--data", str(questions), "--out", str(base), "--overwrite"], capsys)
    assert code != 0 and "input" in err.lower(), err
