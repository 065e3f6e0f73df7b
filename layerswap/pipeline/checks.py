"""Did each expert learn its skill? Each against the base, paired on the same examples, before anything is merged.

Both checks are registered evaluation tasks run outside the sweep, so anyone can rerun them with
``layerswap evaluate``: ``gsm8k_solution`` (GSM8K test questions 250.., never MGSM's) for the math
expert and ``flores`` for the language expert.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from layerswap.evaluate.tasks.proxy_cot import MGSM_QUESTIONS
from layerswap.io import resolve_data_dir, write_text_atomic
from layerswap.pipeline.config import DemoConfig

#: Each expert's check: (task, language or None for the demo's, batch size).
CHECKS = {"math": ("gsm8k_solution", "en", 4), "lang": ("flores", None, 8)}
#: Which checks each model takes: the base both, each expert its own.
WANTED = {"base": ("math", "lang"), "math": ("math",), "lang": ("lang",)}


def score_table(model: str | Path, skills: tuple[str, ...], n: int, language: str, data_dir: str | Path | None) -> Any:
    """Per-example scores of one model on the checks of ``skills`` (:func:`~layerswap.evaluate.scores.example_scores`)."""
    import pandas as pd

    from layerswap.evaluate.api import evaluate
    from layerswap.evaluate.result import as_lm
    from layerswap.evaluate.scores import example_scores

    lm = as_lm(str(model))
    frames = []
    for skill in skills:
        task, lang, batch_size = CHECKS[skill]
        result = evaluate(lm, [task], [lang or language], limit=n, batch_size=batch_size, data_dir=data_dir)
        frames.append(example_scores(result, task).assign(skill=skill))
    return pd.concat(frames, ignore_index=True)


def check_experts(
    config: DemoConfig, base: str | Path, experts: dict[str, Path], out: str | Path, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Each expert against the base on its own skill, paired on the same examples; writes ``out`` and returns the checks.

    - math: mean over GSM8K test questions 250.. (never MGSM's) of the per-token log-likelihood of
      the gold worked solution (nats per token; higher is better), expert minus base;
    - language: FLORES-<lang> devtest bits per byte (lower is better), expert minus base, the ratio
      resampled with each sentence's bits and bytes together.

    Each with a 95% paired-bootstrap interval and a paired permutation p-value (:mod:`layerswap.stats`).
    An expert *learned* when the interval excludes zero on the right side.
    """
    import pandas as pd

    from layerswap.io import write_provenance
    from layerswap.stats import paired_difference, paired_ratio_difference

    out = Path(out)
    data_dir = resolve_data_dir(config.data_dir)
    n = config.check_examples
    paths = {"base": Path(base), **experts}
    frames = []
    for role, skills in WANTED.items():
        log(f"  scoring {role} on {' and '.join(CHECKS[s][0] for s in skills)} ({n} examples)")
        frames.append(score_table(paths[role], skills, n, config.language, data_dir).assign(model=role))
    scores = pd.concat(frames, ignore_index=True)

    def side(role: str, skill: str) -> Any:
        return scores[(scores["model"] == role) & (scores["skill"] == skill)].set_index("id").sort_index()

    m_exp, m_base = side("math", "math"), side("base", "math")
    math = paired_difference(m_exp["score"].to_numpy(), m_base.loc[m_exp.index, "score"].to_numpy())
    l_exp = side("lang", "lang")
    l_base = side("base", "lang").loc[l_exp.index]
    lang = paired_ratio_difference(
        l_exp["num"].to_numpy(), l_exp["den"].to_numpy(), l_base["num"].to_numpy(), l_base["den"].to_numpy()
    )
    first = MGSM_QUESTIONS  # gsm8k_solution starts after MGSM's questions
    checks = {
        "math": {
            **math.as_dict(),
            "metric": "gold worked solution log-likelihood per token (nats)",
            "higher_is_better": True,
            "data": f"GSM8K test questions {first}-{first + len(m_exp) - 1} (after MGSM's {first})",
            "base": float(m_base["score"].mean()),
            "expert": float(m_exp["score"].mean()),
            "learned": bool(math.low > 0),
        },
        "lang": {
            **lang.as_dict(),
            "metric": "bits per byte",
            "higher_is_better": False,
            "data": f"FLORES-{config.language} devtest, first {len(l_exp)} sentences",
            "base": float(l_base["num"].sum() / l_base["den"].sum()),
            "expert": float(l_exp["num"].sum() / l_exp["den"].sum()),
            "learned": bool(lang.high < 0),
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    scores.to_csv(out / "scores.csv", index=False)
    write_text_atomic(out / "checks.json", json.dumps(checks, indent=2) + "\n")
    write_text_atomic(out / "checks.md", "\n".join(check_lines(checks)) + "\n")
    write_provenance(out, {"kind": "demo-checks", "examples": n, "checks": checks})
    for line in check_lines(checks):
        log(line)
    return checks


def check_lines(checks: dict[str, Any]) -> list[str]:
    """The report's two opening lines: how much each expert gained on its own skill, or that it did not learn."""
    m, g = checks["math"], checks["lang"]
    math_said = (
        f"math expert: {m['diff']:+.3f} nats per token [95% CI {m['low']:+.3f}, {m['high']:+.3f}] over the base on the "
        f"log-likelihood of the gold worked solution ({m['data']}; n = {m['n']}, paired, permutation p = {m['p_value']:.2g}; "
        f"base {m['base']:.3f}, expert {m['expert']:.3f})"
    )
    lang_said = (
        f"language expert: {g['diff']:+.3f} [95% CI {g['low']:+.3f}, {g['high']:+.3f}] bits per byte against the base "
        f"({g['data']}; n = {g['n']}, paired, permutation p = {g['p_value']:.2g}; base {g['base']:.3f}, expert {g['expert']:.3f}; lower is better)"
    )
    if not m["learned"]:
        math_said = "**the math expert did not measurably learn**: " + math_said + " (the interval includes 0 or lies below it)"
    if not g["learned"]:
        lang_said = (
            "**the language expert did not measurably learn**: " + lang_said + " (the interval includes 0 or lies above it)"
        )
    return [math_said + ";", lang_said + "."]
