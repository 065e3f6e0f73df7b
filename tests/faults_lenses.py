"""Lens mistakes (issue 29): ``layerswap analyze --lens ...`` refuses them in one line before any model loads.

A LoRA adapter given as the base, or an adapter made for another base; an expert whose tokenizer is
not the base's (the activation lenses compare models on the same token ids); fewer examples than a
lens needs; an unknown lens; a lens without the data or the target language it reads; ``--data``
without ``--lens``. (Too few FLORES languages for LAPE is no error: that lens is skipped and says
why, the others run; ``tests/test_analysis_lenses.py`` checks it.)
"""

from __future__ import annotations

import shutil

from faults_catalogue import Case, Env

MATH_TXT = "lens-math.txt"
LANG_TXT = "lens-lang.txt"


def build(env: Env) -> None:
    from layerswap.testing import make_tiny_tokenizer

    env.p(MATH_TXT).write_text("Question: 2 + 3? Answer: 5\nQuestion: 4 * 6? Answer: 24\nQuestion: 9 - 4? Answer: 5\n")
    env.p(LANG_TXT).write_text("Habari za asubuhi.\nLeo ni siku nzuri sana.\nJuma ana machungwa manne.\n")
    env.p("lens-one-line.txt").write_text("Habari za asubuhi.\n")
    other = shutil.copytree(env.math, env.p("other-tokenizer"))
    for f in other.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            f.unlink()
    tok = make_tiny_tokenizer(env.p("other-tokenizer-files"), vocab_size=300)
    for f in tok.iterdir():
        shutil.copy(f, other / f.name)


def _lens(env: Env, lens: str, *, math: str | None = None, lang: str | None = None, base: str | None = None, data: tuple[str, ...] | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    argv = ["analyze", "--base", base or str(env.base), "--expert", f"math={math or env.math}", "--expert", f"lang={lang or env.lang}"]
    if data is None:
        data = (f"math={env.p(MATH_TXT)}", f"lang={env.p(LANG_TXT)}")
    for d in data:
        argv += ["--data", d]
    return [*argv, "--lens", lens, "--target-lang", "sw", "--out", env.out, "--no-plots", *extra]


CASES: list[Case] = [
    Case("lens-adapter-as-base", "analyze --base ADAPTER --lens cka ...", lambda e: _lens(e, "cka", base=str(e.lora)), "InputPathError", "is a LoRA adapter, not a full model", "pass the base model folder here"),
    Case("lens-adapter-other-base", "analyze --expert lang=ADAPTER-OF-ANOTHER-BASE --lens cka ...", lambda e: _lens(e, "cka", lang=str(e.p("lora-other-base"))), "IncompatibleModelsError", "base", "the adapter was made for another base"),
    Case("lens-other-tokenizer", "analyze --expert math=EXPERT-WITH-ANOTHER-TOKENIZER --lens cka,logit ...", lambda e: _lens(e, "cka,logit", math=str(e.p("other-tokenizer"))), "IncompatibleModelsError", "has another tokenizer than base", "use experts fine-tuned from this base"),
    Case("lens-too-few-examples", "analyze --lens cka --data lang=ONE-LINE.txt ...", lambda e: _lens(e, "cka", data=(f"math={e.p(MATH_TXT)}", f"lang={e.p('lens-one-line.txt')}")), "DataError", "has 1 example(s); the cka lens needs at least 2", "pass more data"),
    Case("lens-unknown", "analyze --lens deltas,attention ...", lambda e: _lens(e, "deltas,attention"), "ConfigError", "unknown lens 'attention'", "choose from"),
    Case("lens-twice", "analyze --lens cka,cka ...", lambda e: _lens(e, "cka,cka"), "ConfigError", "names a lens twice", "name each once"),
    Case("lens-without-data", "analyze --lens grad (no --data)", lambda e: _lens(e, "grad", data=()), "ConfigError", "the grad lens reads each task's data", "pass --data math=gsm8k"),
    Case("lens-data-roles-unknown", "analyze --lens cka --data a=X --data b=Y", lambda e: _lens(e, "cka", data=(f"a={e.p(MATH_TXT)}", f"b={e.p(LANG_TXT)}")), "ConfigError", "cannot tell the language data set from the math data set", "name them lang and math"),
    Case("lens-bad-option", "analyze --lens cka --examples 0 ...", lambda e: _lens(e, "cka", extra=("--examples", "0")), "ConfigError", "--examples must be at least 1", "at least 1"),
    Case("lens-data-without-lens", "analyze --data math=gsm8k (no --lens)", lambda e: ["analyze", "--base", str(e.base), "--expert", f"math={e.math}", "--data", "math=gsm8k", "--out", e.out], "ConfigError", "--data is read by the lenses", "add --lens"),
]
