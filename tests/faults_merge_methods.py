"""Merge-method parameters outside their domain (issue 30): each one line, before anything is read or written.

DELLA's keep probabilities leaving (0, 1), a SLERP factor outside [0, 1], SLERP with other than two
experts, Model Stock with one, a LiNeS profile that scales a layer below 0, Breadcrumbs dropping and
keeping more than the whole delta.
"""

from __future__ import annotations

from faults_catalogue import Case, Env


def build(env: Env) -> None:
    """Nothing to build: the base catalogue's tiny models serve."""


def _merge(method: str, params: str, experts: str = "math, lang"):  # noqa: ANN202
    def argv(env: Env) -> list[str]:
        paths = {"math": env.math, "lang": env.lang, "extra": env.math}
        listed = ", ".join(f"{label}: {paths[label]}" for label in experts.split(", "))
        return env.merge_yaml(f"method: {method}\nbase: {env.base}\nexperts: {{{listed}}}\nparams: {params}\n")

    return argv


CASES: list[Case] = [
    Case("della-epsilon", "merge cfg.yaml (method: della, density 0.3, epsilon 0.3)", _merge("della", "{density: 0.3, epsilon: 0.3}"), "ConfigError", "keep probabilities outside (0, 1)", "choose epsilon < min(density, 1 - density)"),
    Case("della-density", "merge cfg.yaml (method: della_linear, density 1.5)", _merge("della_linear", "{density: 1.5}"), "ConfigError", "density 1.5 of 'math' is out of range", "use a value in (0, 1]"),
    Case("breadcrumbs-gamma-density", "merge cfg.yaml (method: breadcrumbs, density 0.95, gamma 0.1)", _merge("breadcrumbs", "{density: 0.95, gamma: 0.1}"), "ConfigError", "exceed 1", "lower gamma or density"),
    Case("slerp-t-range", "merge cfg.yaml (method: slerp, t: 1.2)", _merge("slerp", "{t: 1.2}"), "ConfigError", "slerp t 1.2 is outside [0, 1]", "use a value from 0 (the first expert) to 1 (the second)"),
    Case("slerp-three-experts", "merge cfg.yaml (method: slerp, three experts)", _merge("slerp", "{}", "math, lang, extra"), "ConfigError", "exactly two experts; got 3", "name two"),
    Case("model-stock-one-expert", "merge cfg.yaml (method: model_stock, one expert)", _merge("model_stock", "{}", "math"), "ConfigError", "needs at least two experts", "add another expert"),
    Case("lines-below-zero", "merge cfg.yaml (method: ties, lines: {alpha: 0.5, beta: -0.8})", _merge("ties", "{lines: {alpha: 0.5, beta: -0.8}}"), "ConfigError", "scales the last layer by -0.3", "choose alpha >= 0 and alpha + beta >= 0"),
]
