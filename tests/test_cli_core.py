"""CLI: inspect, models, one-line errors with exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from layerswap.cli import main
from layerswap.errors import EXIT_CODES


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_inspect_model_json(tiny_gemma3, capsys):
    code, out, _ = run_cli(["inspect", str(tiny_gemma3), "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert info["num_layers"] == 4 and info["tied_embeddings"] is True
    assert sum(info["parameters_per_layer"].values()) < info["num_parameters"]
    assert "q_proj" in info["parameters_per_module"]


def test_inspect_json_of_a_name_prepared_on_first_use_is_json_only(tiny_gemma3, tmp_path, monkeypatch, capsys):
    """First use of an embedded name prepares it; what that says goes to stderr, stdout stays JSON."""
    import dataclasses
    import shutil

    from layerswap.io import embedded

    monkeypatch.setenv("LAYERSWAP_CACHE", str(tmp_path / "cache"))
    fake = dataclasses.replace(
        embedded.EMBEDDED["gemma3-270m"], name="tiny", prepare=lambda out: shutil.copytree(tiny_gemma3, out, dirs_exist_ok=True)
    )
    monkeypatch.setitem(embedded.EMBEDDED, "tiny", fake)
    code, out, err = run_cli(["inspect", "tiny", "--json"], capsys)
    assert code == 0 and "preparing tiny" in err
    assert json.loads(out)["num_layers"] == 4  # nothing but the JSON on stdout


def test_version(capsys):
    from layerswap import __version__

    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"layerswap {__version__}"


def test_inspect_adapter(tiny_lora, capsys):
    code, out, _ = run_cli(["inspect", str(tiny_lora)], capsys)
    assert code == 0 and "LoRA adapter" in out and "[1, 2]" in out


def test_missing_path_is_one_line(tmp_path, capsys):
    code, out, err = run_cli(["inspect", str(tmp_path / "nope")], capsys)
    assert code == EXIT_CODES["InputPathError"]
    assert err.count("\n") == 1 and err.startswith("error:") and "Traceback" not in err


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "layerswap", "inspect", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == EXIT_CODES["InputPathError"]
    assert "not a model folder" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_real_gemma_prepare_inspect_and_generate(capsys):
    """Prepares the embedded Gemma 3 270M (cached after the first run) and checks a greedy completion."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerswap.io import prepare_model

    path = prepare_model("gemma3-270m", quiet=True)
    code, out, _ = run_cli(["inspect", "gemma3-270m", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["num_layers"] == 18 and info["tied_embeddings"] is True
    assert 2.6e8 < info["num_parameters"] < 2.8e8
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    completions = {}
    for prompt in ("Monday, Tuesday, Wednesday,", "The capital of France is Paris. The capital of Germany is"):
        ids = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=8, do_sample=False)
        completions[prompt] = tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Thursday" in completions["Monday, Tuesday, Wednesday,"], completions
    assert "Berlin" in completions["The capital of France is Paris. The capital of Germany is"], completions


def test_merge_takes_one_document_of_a_multi_document_yaml(tiny_experts, tmp_path, capsys):
    """The README's merge configs pasted into one file: refused with the option that picks one, then
    merged with ``--document N``; the generated options override the chosen document's keys."""
    e = {k: str(v) for k, v in tiny_experts.items()}
    config = tmp_path / "merges.yaml"
    config.write_text(
        f"method: layer_swap\nexperts: {{math: {e['math']}, lang: {e['lang']}}}\nparams: {{bottom: 1, top: 1}}\n"
        f"---\nmethod: linear\nexperts: {{math: {e['math']}, lang: {e['lang']}}}\n"
    )
    with pytest.raises(SystemExit) as exc:
        main(["merge", str(config), "--out", str(tmp_path / "o")])
    assert exc.value.code == 6 and not (tmp_path / "o").exists()
    said = capsys.readouterr().err
    assert "holds 2 YAML documents" in said and "pass --document N (1 to 2)" in said
    with pytest.raises(SystemExit) as exc:
        main(["merge", str(config), "--document", "3", "--out", str(tmp_path / "o")])
    assert exc.value.code == 6 and "--document 3" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["merge", str(config), "--document", "1", "--params", "top=2", "--out", str(tmp_path / "o")])
    assert exc.value.code == 0
    made = json.loads((tmp_path / "o" / "layerswap.json").read_text())
    assert "layer_swap" in json.dumps(made) and '"top": 2' in json.dumps(made)
    with pytest.raises(SystemExit) as exc:
        main(["merge", str(config), "--document", "2", "--out", str(tmp_path / "o2")])
    assert exc.value.code == 0 and "linear" in (tmp_path / "o2" / "layerswap.json").read_text()
