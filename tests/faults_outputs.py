"""Outputs that would harm an input or leave something half-written (issue 14, classes 1 and 6, output parts of 5).

Inputs are sacred: an output (``--out``, ``--work-dir``, ``--emit-mergekit``, the sweep's and the demo's
folders, the demo's ``--figures``) that
is, contains or lies inside an input is refused with or without ``--overwrite``; ``--overwrite``
replaces only a folder layerswap wrote; a work folder is deleted only if layerswap created it; and
nothing (no parent folder, no ``sweep.yaml``, no hidden temporary sibling) is left by a refusal.

The victims live under ``env.root``, which the catalogue snapshots with the SHA-256 of every file
(:func:`faults_catalogue.snapshot`), so each case checks that every input's bytes are unchanged.
"""

from __future__ import annotations

import shutil

from faults_catalogue import Case, Env

EX = "ex"  # the experts' folder: ex/base, ex/math, ex/lang, ex/data.jsonl, ex/prev-merge (a layerswap output)


def build(env: Env) -> None:
    """The experts in one folder (as users lay them out), a folder layerswap wrote, a folder it did not."""
    from layerswap.merge import swap

    ex = env.p(EX)
    ex.mkdir()
    for name, src in (("base", env.base), ("math", env.math), ("lang", env.lang), ("lora", env.lora)):
        shutil.copytree(src, ex / name)
    (ex / "data.jsonl").write_text('{"prompt": "two and two", "completion": " make four"}\n' * 8, encoding="utf-8")
    (ex / "custom.jsonl").write_text('{"question": "1+1?", "answer": "2"}\n', encoding="utf-8")
    swap(math=ex / "math", lang=ex / "lang", bottom=1, top=1, out=ex / "prev-merge")
    user = env.p("user-folder")
    user.mkdir()
    (user / "notes.txt").write_text("a user's own folder: never deleted by layerswap\n", encoding="utf-8")


def _ex(env: Env, name: str = "") -> str:
    return str(env.p(EX) / name) if name else str(env.p(EX))


def _swap(env: Env, out: str, *extra: str) -> list[str]:
    return ["swap", "--math", _ex(env, "math"), "--lang", _ex(env, "lang"), "--bottom", "1", "--top", "1", "--out", out, *extra]


def _analyze(env: Env, out: str, *extra: str) -> list[str]:
    return ["analyze", "--base", _ex(env, "base"), "--expert", f"math={_ex(env, 'math')}", "--expert", f"lang={_ex(env, 'lang')}", "--out", out, *extra]


def _finetune(env: Env, *extra: str) -> list[str]:
    return ["finetune", "--base", _ex(env, "base"), "--data", _ex(env, "data.jsonl"), "--steps", "1", *extra]


def _sweep(env: Env, out: str, math: str | None = None) -> list[str]:
    body = f"base: {_ex(env, 'base')}\nmath: {math or _ex(env, 'math')}\nlang: {_ex(env, 'lang')}\nlimit: 1\n"
    return ["sweep", env.yaml("sweep.yaml", body), "--out", out]


def _demo(env: Env, out: str, *extra: str) -> list[str]:
    """The demo on the tiny base: every case must be refused before any model work (no training, no download)."""
    return ["demo", "--quick", "--base", _ex(env, "base"), "--out", out, *extra]


def _sweep_with_foreign_best(env: Env) -> None:
    folder = env.sandbox / "sw"
    (folder / "best-model").mkdir(parents=True)
    (folder / "sweep.yaml").write_text("a sweep's folder\n", encoding="utf-8")
    (folder / "best-model" / "model.safetensors").write_bytes(b"someone else's model")


def _dangling(env: Env) -> None:
    (env.sandbox / "link").symlink_to(env.sandbox / "nowhere")


def _folder(env: Env) -> None:
    (env.sandbox / "mk").mkdir()


def _foreign_yaml(env: Env) -> None:
    (env.sandbox / "mk.yaml").write_text("my own notes, not a mergekit config\n", encoding="utf-8")


INPUT = "layerswap never writes over, into or around an input"
ANOTHER = "choose another path"

CASES: list[Case] = [
    # --- class 1: an output that is, contains or lies inside an input (with --overwrite, too)
    Case("out-contains-experts", "swap --math ex/math --lang ex/lang --out ex --overwrite", lambda e: _swap(e, _ex(e), "--overwrite"), "InputPathError", "contains the input", ANOTHER),
    Case("out-is-expert", "swap ... --out ex/math --overwrite", lambda e: _swap(e, _ex(e, "math"), "--overwrite"), "InputPathError", "is the input", ANOTHER),
    Case("out-inside-expert", "swap ... --out ex/math/merged", lambda e: _swap(e, _ex(e, "math") + "/merged"), "InputPathError", "lies inside the input", ANOTHER),
    Case("out-dotdot-is-experts-folder", "swap ... --out ex/math/.. --overwrite (resolves to ex)", lambda e: _swap(e, _ex(e, "math") + "/..", "--overwrite"), "InputPathError", "contains the input", INPUT),
    Case("merge-out-is-base", "merge linear.yaml --out BASE --overwrite", lambda e: e.merge_yaml(f"method: linear\nbase: {_ex(e, 'base')}\nexperts: {{math: {_ex(e, 'math')}, lang: {_ex(e, 'lang')}}}\n")[:-1] + [_ex(e, "base"), "--overwrite"], "InputPathError", "is the input", ANOTHER),
    Case("out-is-layerswap-input", "swap --math ex/prev-merge ... --out ex/prev-merge --overwrite (a layerswap output read as input)", lambda e: ["swap", "--math", _ex(e, "prev-merge"), "--lang", _ex(e, "lang"), "--bottom", "1", "--top", "1", "--out", _ex(e, "prev-merge"), "--overwrite"], "InputPathError", "is the input", ANOTHER),
    Case("analyze-out-is-base", "analyze --base ex/base ... --out ex/base --overwrite", lambda e: _analyze(e, _ex(e, "base"), "--overwrite"), "InputPathError", "is the input", ANOTHER),
    Case("importance-out-is-data", "importance --data math=ex/data.jsonl --out ex/data.jsonl --overwrite", lambda e: ["importance", "--base", _ex(e, "base"), "--data", f"math={_ex(e, 'data.jsonl')}", "--out", _ex(e, "data.jsonl"), "--overwrite"], "InputPathError", "is the input", ANOTHER),
    Case("evaluate-out-is-model", "evaluate ex/prev-merge --task custom ... --out ex/prev-merge --overwrite", lambda e: ["evaluate", _ex(e, "prev-merge"), "--task", "custom", "--data", _ex(e, "custom.jsonl"), "--langs", "sw", "--out", _ex(e, "prev-merge"), "--overwrite"], "InputPathError", "is the input", ANOTHER),
    Case("finetune-out-is-data", "finetune --data ex/data.jsonl --out ex/data.jsonl --overwrite", lambda e: _finetune(e, "--out", _ex(e, "data.jsonl"), "--overwrite"), "InputPathError", "is the input", ANOTHER),
    Case("finetune-work-dir-is-base", "finetune --base ex/base ... --work-dir ex/base", lambda e: _finetune(e, "--out", e.out, "--work-dir", _ex(e, "base")), "InputPathError", "is the input", ANOTHER),
    Case("emit-mergekit-into-input", "swap ... --emit-mergekit ex/math/config.json", lambda e: _swap(e, e.out, "--emit-mergekit", _ex(e, "math") + "/config.json"), "InputPathError", "lies inside the input", ANOTHER),
    Case("out-is-lora-adapter", "swap --math ex/lora --base ex/base ... --out ex/lora --overwrite", lambda e: ["swap", "--math", _ex(e, "lora"), "--lang", _ex(e, "lang"), "--base", _ex(e, "base"), "--bottom", "1", "--top", "1", "--out", _ex(e, "lora"), "--overwrite"], "InputPathError", "is the input", ANOTHER),
    Case("finetune-work-dir-inside-base", "finetune --base ex/base ... --work-dir ex/base/ckpt", lambda e: _finetune(e, "--out", e.out, "--work-dir", _ex(e, "base") + "/ckpt"), "InputPathError", "lies inside the input", ANOTHER),
    Case("sweep-out-contains-experts", "sweep cfg.yaml --out ex", lambda e: _sweep(e, _ex(e)), "InputPathError", "contains the input", ANOTHER),
    Case("demo-out-is-base", "demo --base ex/base --out ex/base --quick", lambda e: _demo(e, _ex(e, "base")), "InputPathError", "is the input", ANOTHER),
    Case("demo-out-inside-base", "demo --base ex/base --out ex/base/demo --quick", lambda e: _demo(e, _ex(e, "base") + "/demo"), "InputPathError", "lies inside the input", ANOTHER),
    Case("demo-out-is-data-dir", "demo --base ex/base --data-dir DATA --out DATA --quick", lambda e: _demo(e, str(e.p("user-folder")), "--data-dir", str(e.p("user-folder"))), "InputPathError", "is the input", ANOTHER),
    Case("demo-figures-inside-base", "demo --base ex/base --out OUT --figures ex/base/figures --quick", lambda e: _demo(e, e.out, "--figures", _ex(e, "base") + "/figures"), "InputPathError", "lies inside the input", ANOTHER),
    Case("demo-figures-is-data-dir", "demo --base ex/base --data-dir DATA --out OUT --figures DATA --quick", lambda e: _demo(e, e.out, "--data-dir", str(e.p("user-folder")), "--figures", str(e.p("user-folder"))), "InputPathError", "is the input", ANOTHER),
    # --- --overwrite replaces only what layerswap wrote; a work folder is deleted only if layerswap made it
    Case("overwrite-foreign-folder", "swap ... --out USER-FOLDER --overwrite (no layerswap.json)", lambda e: _swap(e, str(e.p("user-folder")), "--overwrite"), "OutputExistsError", "was not written by layerswap", "remove it yourself"),
    Case("overwrite-a-file", "analyze ... --out notes.txt --overwrite", lambda e: _analyze(e, str(e.p("a-file.txt")), "--overwrite"), "OutputExistsError", "is a file", "remove it yourself"),
    Case("evaluate-overwrite-foreign", "evaluate MODEL ... --out USER-FOLDER --overwrite", lambda e: ["evaluate", _ex(e, "base"), "--task", "custom", "--data", _ex(e, "custom.jsonl"), "--langs", "sw", "--out", str(e.p("user-folder")), "--overwrite"], "OutputExistsError", "was not written by layerswap", "remove it yourself"),
    Case("finetune-work-dir-foreign", "finetune ... --work-dir USER-FOLDER", lambda e: _finetune(e, "--out", e.out, "--work-dir", str(e.p("user-folder"))), "OutputExistsError", "layerswap did not create", "choose a new or empty folder"),
    Case("finetune-work-dir-holds-out", "finetune --out SANDBOX/out --work-dir SANDBOX", lambda e: _finetune(e, "--out", e.out, "--work-dir", str(e.sandbox)), "InputPathError", "overlaps the output", "beside the output"),
    Case("emit-mergekit-existing", "swap ... --emit-mergekit EXISTING.yaml", lambda e: _swap(e, e.out, "--emit-mergekit", str(e.sandbox / "mk.yaml")), "OutputExistsError", "already exists", "--overwrite", setup=_foreign_yaml),
    Case("emit-mergekit-overwrite-foreign", "swap ... --emit-mergekit NOTES.yaml --overwrite (not written by layerswap)", lambda e: _swap(e, e.out, "--overwrite", "--emit-mergekit", str(e.sandbox / "mk.yaml")), "OutputExistsError", "was not written by layerswap", "remove it yourself", setup=_foreign_yaml),
    Case("sweep-out-foreign-folder", "sweep cfg.yaml --out USER-FOLDER (not a sweep's folder)", lambda e: _sweep(e, str(e.p("user-folder"))), "OutputExistsError", "folder of something else", "choose a new or empty folder"),
    Case("sweep-best-model-foreign", "sweep cfg.yaml (save_best) --out SWEEP (best-model/ not layerswap's)", lambda e: ["sweep", e.yaml("sweep.yaml", f"base: {_ex(e, 'base')}\nmath: {_ex(e, 'math')}\nlang: {_ex(e, 'lang')}\nsave_best: true\n"), "--out", str(e.sandbox / "sw")], "OutputExistsError", "was not written by layerswap", "remove it yourself", setup=_sweep_with_foreign_best),
    Case("sweep-out-is-file", "sweep cfg.yaml --out notes.txt", lambda e: _sweep(e, str(e.p("a-file.txt"))), "OutputExistsError", "is a file", ANOTHER),
    Case("demo-out-foreign-folder", "demo --base ex/base --out USER-FOLDER --quick (not a demo's folder)", lambda e: _demo(e, str(e.p("user-folder"))), "OutputExistsError", "folder of something else", "choose a new or empty folder"),
    Case("demo-figures-is-file", "demo --base ex/base --out OUT --figures notes.txt --quick", lambda e: _demo(e, e.out, "--figures", str(e.p("a-file.txt"))), "OutputExistsError", "is a file", ANOTHER),
    # --- class 6 and the output part of class 5: refused before anything (parents, temp siblings) exists
    Case("out-dangling-link", "swap ... --out LINK (-> nowhere)", lambda e: _swap(e, str(e.sandbox / "link")), "InputPathError", "dangling symbolic link", "remove the link", setup=_dangling),
    Case("emit-mergekit-folder", "swap ... --emit-mergekit DIR", lambda e: _swap(e, e.out, "--emit-mergekit", str(e.sandbox / "mk")), "InputPathError", "is a folder", "pass a file path", setup=_folder),
    Case("out-under-a-file", "swap ... --out notes.txt/merged", lambda e: _swap(e, str(e.p("a-file.txt")) + "/merged"), "InputPathError", "which is a file", ANOTHER),
    Case("out-name-too-long", "swap ... --out x{250 chars}", lambda e: _swap(e, str(e.sandbox / ("x" * 250))), "InputPathError", "over the file system's limit", "choose a shorter name"),
    Case("no-parent-folders-left", "swap --math nowhere ... --out new/a/b (fails: new/ must not appear)", lambda e: ["swap", "--math", str(e.p("nowhere")), "--lang", _ex(e, "lang"), "--bottom", "1", "--top", "1", "--out", str(e.sandbox / "new" / "a" / "b")], "InputPathError", "does not exist", "pass a model folder"),
    Case("sweep-bad-input-writes-nothing", "sweep cfg.yaml (math: nowhere) --out NEW (no sweep.yaml left)", lambda e: _sweep(e, e.out, math=str(e.p("nowhere"))), "InputPathError", "does not exist", "pass a model folder"),
]
