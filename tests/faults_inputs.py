"""Silent bad output and one line for every config, CLI and data mistake (issue 14, class 4 and the rest of 5).

Swap's raw byte copy refuses NaN/Inf weights, naming the tensor; a merge's output dtype must be floating
point; YAML keys given twice are refused (YAML would keep the last); expert and data-set labels become
file names, so they must be plain names; sizes must parse; evaluate refuses settings that would run
nothing or crash mid-run (no language, ``gpu0``, batch size 0, an integer dtype); a single-value
option given twice is refused (click keeps the last); data files must be UTF-8 regular files; and
fine-tuning's floats must be finite and in range; the demo's config (flags or ``--config``) is checked before any model work.
"""

from __future__ import annotations

import os

import torch
from faults_catalogue import Case, Env, _write_sd

LATIN1_JSONL = '{"prompt": "caf\xe9", "completion": " au lait"}\n'


def build(env: Env) -> None:
    """Non-UTF-8 data files, a data path that is a folder, a language expert holding -Inf, a LoRA adapter holding NaN."""
    env.p("latin1.jsonl").write_bytes(('{"prompt": "two", "completion": " four"}\n' + LATIN1_JSONL).encode("latin-1"))
    env.p("latin1.txt").write_bytes("a first line\nune deuxi\xe8me ligne\n".encode("latin-1"))
    env.p("latin1-custom.jsonl").write_bytes('{"question": "1+1 caf\xe9?", "answer": "2"}\n'.encode("latin-1"))
    env.p("data-folder.jsonl").mkdir()
    (env.p("data-folder.jsonl") / "part-0.jsonl").write_text('{"prompt": "a", "completion": "b"}\n', encoding="utf-8")
    _write_sd(env.p("nan-lang"), env.lang, _poison_layer0)
    from safetensors.torch import load_file

    from layerswap.io import write_tensors

    sd = load_file(env.lora / "adapter_model.safetensors")
    name = next(k for k in sorted(sd) if "layers.1." in k and "lora_B" in k)
    sd[name][0, 0] = float("nan")
    write_tensors(env.p("lora-nan"), sd, donor=env.lora, adapter=True)


def _poison_layer0(sd: dict[str, torch.Tensor]) -> None:
    w = sd["model.layers.0.self_attn.q_proj.weight"]
    w[2, 3] = float("-inf")


def _merge(env: Env, extra: str, experts: str | None = None) -> list[str]:
    experts = experts or f"{{math: {env.math}, lang: {env.lang}}}"
    return env.merge_yaml(f"method: linear\nexperts: {experts}\n{extra}")


def _eval(env: Env, *extra: str) -> list[str]:
    return ["evaluate", str(env.base), "--task", "proxy", "--langs", "sw", "--out", env.out, *extra]


def _analyze(env: Env, *experts: str) -> list[str]:
    return ["analyze", "--base", str(env.base), *(a for e in experts for a in ("--expert", e)), "--out", env.out, "--no-plots"]


def _finetune(env: Env, data: str, *extra: str) -> list[str]:
    return ["finetune", "--base", str(env.base), "--data", data, "--steps", "1", "--out", env.out, *extra]


def _importance(env: Env, data: str) -> list[str]:
    return ["importance", "--base", str(env.base), "--data", f"math={data}", "--data", f"lang={env.p('latin1.txt')}", "--out", env.out, "--no-plots"]


GOOD_JSONL = "no-field.jsonl"  # a readable JSONL from the base catalogue (finetune checks its options first)
FLOAT_FIX = "floating point"

def _demo(env: Env, *extra: str) -> list[str]:
    """The demo on the tiny base, refused while its config is read (before any model work)."""
    return ["demo", "--quick", "--base", str(env.base), "--out", env.out, *extra]


CASES: list[Case] = [
    # --- the demo's config (flags or --config FILE.yaml)
    Case("demo-config-unknown-key", "demo --config cfg.yaml (stepz: 3)", lambda e: _demo(e, "--config", e.yaml("demo.yaml", "stepz: 3\n")), "ConfigError", "unknown key 'stepz'", "valid keys here"),
    Case("demo-screen-below-block", "demo --limit 20 --screen-examples 5", lambda e: _demo(e, "--limit", "20", "--screen-examples", "5"), "ConfigError", "candidates.halving.max_examples 5 (else limit) is smaller than one block (10 examples)", "lower candidates.halving.block or raise the limit"),
    Case("demo-candidate-source-unknown", "demo --candidate-source pca", lambda e: _demo(e, "--candidate-source", "pca"), "ConfigError", "candidate_source ['pca']", "name each of analysis, importance, cka, logit, lape, grad at most once"),
    Case("demo-final-baseline-not-swept", "demo --baselines base --baselines math --final-baselines ties", lambda e: _demo(e, "--baselines", "base", "--baselines", "math", "--final-baselines", "ties"), "ConfigError", "final_baselines names 'ties', which is not among candidates.baselines", "add it there or drop it"),
    # --- finite weights in the swap's raw byte copy
    Case("swap-nan-math", "swap --math NAN-EXPERT (NaN/Inf in a middle layer) ...", lambda e: ["swap", "--math", str(e.p("nan-expert")), "--lang", str(e.lang), "--bottom", "1", "--top", "1", "--out", e.out], "NumericalError", "model.layers.3.mlp.up_proj.weight", "check the inputs"),
    Case("swap-inf-lang", "swap --lang INF-EXPERT (-Inf in layer 0) ...", lambda e: ["swap", "--math", str(e.math), "--lang", str(e.p("nan-lang")), "--bottom", "1", "--top", "1", "--out", e.out], "NumericalError", "nan or inf", "use a finite checkpoint"),
    Case("swap-lora-nan", "swap --math NAN-ADAPTER --lang ADAPTER --base BASE", lambda e: ["swap", "--math", str(e.p("lora-nan")), "--lang", str(e.lora), "--base", str(e.base), "--bottom", "1", "--top", "1", "--out", e.out], "NumericalError", "lora_b", "check the inputs"),
    # --- merge config: output dtype, labels, sizes
    Case("merge-dtype-int8", "merge cfg.yaml (dtype: I8)", lambda e: _merge(e, "dtype: I8\n"), "ConfigError", "not a floating point type", "use bf16, fp16 or fp32"),
    Case("merge-dtype-bool", "merge cfg.yaml (dtype: BOOL)", lambda e: _merge(e, "dtype: BOOL\n"), "ConfigError", "not a floating point type", "use bf16, fp16 or fp32"),
    Case("merge-label-slash", "merge cfg.yaml (expert label 'a/b')", lambda e: _merge(e, "", f"{{a/b: {e.math}, lang: {e.lang}}}"), "ConfigError", "'a/b' is not a plain name", "no '/' or '..'"),
    Case("merge-label-dotdot", "merge cfg.yaml (expert label '..')", lambda e: _merge(e, "", f"{{'..': {e.math}, lang: {e.lang}}}"), "ConfigError", "'..' is not a plain name", "no '/' or '..'"),
    Case("analyze-label-slash", "analyze --expert ../x=MATH ...", lambda e: _analyze(e, f"../x={e.math}", f"lang={e.lang}"), "ConfigError", "'../x' is not a plain name", "no '/' or '..'"),
    Case("max-shard-size-garbled", "merge cfg.yaml (max_shard_size: 1.2.3GB)", lambda e: _merge(e, "max_shard_size: 1.2.3GB\n"), "ConfigError", "cannot read size '1.2.3gb'", "write e.g. 5gb"),
    Case("max-shard-size-zero", "merge cfg.yaml (max_shard_size: 0)", lambda e: _merge(e, "max_shard_size: 0\n"), "ConfigError", "must be positive", "write e.g. 5gb"),
    # --- YAML keys given twice
    Case("yaml-duplicate-key", "merge cfg.yaml (method: given twice)", lambda e: e.merge_yaml(f"method: linear\nexperts: {{math: {e.math}, lang: {e.lang}}}\nmethod: ties\n"), "ConfigError", "key 'method' is given twice", "keep one"),
    Case("yaml-duplicate-expert", "merge cfg.yaml (experts: {math: A, math: B})", lambda e: _merge(e, "", f"{{math: {e.math}, math: {e.lang}}}"), "ConfigError", "key 'math' is given twice", "keep one"),
    Case("sweep-yaml-duplicate-key", "sweep cfg.yaml (lang: given twice)", lambda e: ["sweep", e.yaml("sweep.yaml", f"base: {e.base}\nmath: {e.math}\nlang: {e.lang}\nlang: {e.math}\n"), "--out", e.out], "ConfigError", "key 'lang' is given twice", "keep one"),
    # --- evaluate settings
    Case("evaluate-empty-langs", "evaluate --langs ,", lambda e: ["evaluate", str(e.base), "--task", "proxy", "--langs", ",", "--out", e.out], "ConfigError", "names no language", "--langs sw"),
    Case("evaluate-device-gpu0", "evaluate --device gpu0", lambda e: _eval(e, "--device", "gpu0"), "ConfigError", "'gpu0' is not a device", "use auto, cpu, cuda"),
    Case("evaluate-device-missing-gpu", "evaluate --device cuda:64 (no such GPU)", lambda e: _eval(e, "--device", "cuda:64"), "ConfigError", "--device cuda:64", "use --device cpu or auto"),
    Case("evaluate-batch-size-0", "evaluate --batch-size 0", lambda e: _eval(e, "--batch-size", "0"), "ConfigError", "--batch-size 0", "at least 1"),
    Case("evaluate-limit-0", "evaluate --limit 0", lambda e: _eval(e, "--limit", "0"), "ConfigError", "--limit 0", "leave it out"),
    Case("evaluate-dtype-int8", "evaluate --dtype I8", lambda e: _eval(e, "--dtype", "I8"), "ConfigError", "--dtype 'i8' cannot run a model", "use auto, float32"),
    # --- a single-value option given twice (click would keep the last)
    Case("evaluate-task-twice", "evaluate --task proxy --task flores", lambda e: ["evaluate", str(e.base), "--task", "proxy", "--task", "flores", "--langs", "sw", "--out", e.out], "ConfigError", "--task is given twice", "--task proxy,flores"),
    Case("evaluate-langs-alias-twice", "evaluate --langs sw --lang bn", lambda e: ["evaluate", str(e.base), "--task", "proxy", "--langs", "sw", "--lang", "bn", "--out", e.out], "ConfigError", "given twice", "--lang sw,bn"),
    Case("swap-bottom-twice", "swap --bottom 1 --bottom 2 ...", lambda e: e.swap("--bottom", "1", "--bottom", "2", "--top", "1"), "ConfigError", "--bottom is given twice", "give it once"),
    Case("analyze-plots-and-no-plots", "analyze ... --plots --no-plots", lambda e: [*_analyze(e, f"math={e.math}", f"lang={e.lang}"), "--plots"], "ConfigError", "--no-plots and --plots are both given", "pass one of them"),
    Case("finetune-lr-twice", "finetune --lr 1e-4 --lr 2e-4", lambda e: _finetune(e, str(e.p(GOOD_JSONL)), "--lr", "1e-4", "--lr=2e-4"), "ConfigError", "--lr is given twice", "give it once"),
    Case("sweep-out-twice", "sweep cfg.yaml --out A --out B", lambda e: ["sweep", e.yaml("sweep.yaml", f"base: {e.base}\nmath: {e.math}\nlang: {e.lang}\n"), "--out", e.out, "--out", e.out + "2"], "ConfigError", "--out is given twice", "give it once"),
    # --- data files: UTF-8 regular files only
    Case("evaluate-custom-not-utf8", "evaluate --task custom --data latin1.jsonl", lambda e: ["evaluate", str(e.base), "--task", "custom", "--data", str(e.p("latin1-custom.jsonl")), "--langs", "sw", "--out", e.out], "DataError", "line 1 is not utf-8", "convert the file to utf-8"),
    Case("finetune-data-not-utf8", "finetune --data latin1.jsonl", lambda e: _finetune(e, str(e.p("latin1.jsonl"))), "DataError", "line 2 is not utf-8", "convert the file to utf-8"),
    Case("importance-data-not-utf8", "importance --data math=latin1.txt ...", lambda e: _importance(e, str(e.p("latin1.txt"))), "DataError", "line 2 is not utf-8", "convert the file to utf-8"),
    Case("finetune-data-folder", "finetune --data FOLDER.jsonl", lambda e: _finetune(e, str(e.p("data-folder.jsonl"))), "InputPathError", "is a folder", "pass a jsonl, tsv or text file"),
    Case("evaluate-custom-data-folder", "evaluate --task custom --data FOLDER.jsonl", lambda e: ["evaluate", str(e.base), "--task", "custom", "--data", str(e.p("data-folder.jsonl")), "--langs", "sw", "--out", e.out], "InputPathError", "is a folder", "pass a jsonl, tsv or text file"),
    Case("importance-data-folder", "importance --data math=FOLDER.jsonl ...", lambda e: _importance(e, str(e.p("data-folder.jsonl"))), "InputPathError", "is a folder", "pass a jsonl, tsv or text file"),
    Case("importance-batch-size-0", "importance ... --batch-size 0", lambda e: [*_importance(e, str(e.p(GOOD_JSONL))), "--batch-size", "0"], "ConfigError", "--batch-size 0", "at least 1"),
    Case("importance-device-gpu0", "importance ... --device gpu0", lambda e: [*_importance(e, str(e.p(GOOD_JSONL))), "--device", "gpu0"], "ConfigError", "'gpu0' is not a device", "use auto, cpu, cuda"),
    Case("finetune-data-fifo", "finetune --data FIFO.jsonl (a named pipe)", lambda e: _finetune(e, str(e.sandbox / "fifo.jsonl")), "InputPathError", "not a regular file", "pass a jsonl, tsv or text file", setup=lambda e: os.mkfifo(e.sandbox / "fifo.jsonl")),
    Case("config-fifo", "merge FIFO.yaml (a named pipe)", lambda e: ["merge", str(e.sandbox / "cfg.yaml"), "--out", e.out], "InputPathError", "not a regular file", "pass the path of a yaml file", setup=lambda e: os.mkfifo(e.sandbox / "cfg.yaml")),
    # --- fine-tuning numbers
    Case("finetune-lr-nan", "finetune --lr nan", lambda e: _finetune(e, str(e.p(GOOD_JSONL)), "--lr", "nan"), "ConfigError", "--lr nan is out of range", "a positive number"),
    Case("finetune-lr-negative", "finetune --lr -1e-4", lambda e: _finetune(e, str(e.p(GOOD_JSONL)), "--lr=-1e-4"), "ConfigError", "--lr -0.0001 is out of range", "a positive number"),
    Case("finetune-dropout-one", "finetune --method lora --lora-dropout 1", lambda e: _finetune(e, str(e.p(GOOD_JSONL)), "--method", "lora", "--lora-dropout", "1"), "ConfigError", "--lora-dropout 1.0 is out of range", "[0, 1)"),
    Case("finetune-grad-norm-inf", "finetune --max-grad-norm inf", lambda e: _finetune(e, str(e.p(GOOD_JSONL)), "--max-grad-norm", "inf"), "ConfigError", "--max-grad-norm inf is out of range", "0 (no clipping)"),
    # --- usage mistakes caught by the option parser (click, inside typer): one line too, exit 2
    Case("usage-missing-option", "swap --math MATH --lang LANG --bottom 1 --top 1 (no --out)", lambda e: ["swap", "--math", str(e.math), "--lang", str(e.lang), "--bottom", "1", "--top", "1"], "LayerswapError", "missing option '--out'", "see layerswap swap --help"),
    Case("swap-missing-setting", "swap --math MATH --bottom 1 --top 1 --out OUT (no --lang)", lambda e: ["swap", "--math", str(e.math), "--bottom", "1", "--top", "1", "--out", e.out], "ConfigError", "missing --lang", "e.g. layerswap swap --math"),
    Case("usage-unknown-option", "swap ... --bottomm 1", lambda e: ["swap", "--math", str(e.math), "--lang", str(e.lang), "--bottomm", "1", "--top", "1", "--out", e.out], "LayerswapError", "no such option: --bottomm", "see layerswap swap --help"),
    Case("usage-not-an-integer", "swap ... --bottom five", lambda e: ["swap", "--math", str(e.math), "--lang", str(e.lang), "--bottom", "five", "--top", "1", "--out", e.out], "LayerswapError", "invalid value for '--bottom'", "see layerswap swap --help"),
    Case("usage-missing-argument", "evaluate --task proxy --out OUT (no model)", lambda e: ["evaluate", "--task", "proxy", "--out", e.out], "LayerswapError", "missing argument 'model'", "see layerswap evaluate --help"),
]
