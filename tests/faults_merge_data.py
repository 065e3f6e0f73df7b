"""The data-aware merges (issue 30, Fisher and RegMean) given what they cannot run: each one line, before anything is read or written.

Fisher merging and RegMean run each expert over its own data, so a config without data specs, one
that leaves an expert without one, and a LoRA expert without the base it completes are refused
when the config is read; so are RegMean's alpha outside [0, 1] and a Fisher floor of 0.
"""

from __future__ import annotations

from faults_catalogue import Case, Env


def build(env: Env) -> None:
    """Nothing to build: the base catalogue's tiny models and LoRA adapter serve."""


def _merge(method: str, params: str, *, lang: str = "lang", base: bool = True):  # noqa: ANN202
    def argv(env: Env) -> list[str]:
        lang_path = env.lora if lang == "lora" else env.lang
        head = f"method: {method}\n" + (f"base: {env.base}\n" if base else "")
        return env.merge_yaml(head + f"experts: {{math: {env.math}, lang: {lang_path}}}\nparams: {params}\n")

    return argv


DATA = "{math: gsm8k, lang: 'ntrex:sw'}"

CASES: list[Case] = [
    Case("fisher-no-data", "merge cfg.yaml (method: fisher, no params.data)", _merge("fisher", "{}"), "ConfigError", "fisher reads each expert's own data and none was given", "add params.data: {math: gsm8k, lang: ntrex:sw}"),
    Case("regmean-expert-without-data", "merge cfg.yaml (method: regmean, data for math only)", _merge("regmean", "{data: {math: gsm8k}}"), "ConfigError", "expert 'lang' has no data spec", "give one spec per expert"),
    Case("regmean-lora-without-base", "merge cfg.yaml (method: regmean, a LoRA expert, no base)", _merge("regmean", f"{{data: {DATA}}}", lang="lora", base=False), "ConfigError", "expert 'lang' is a LoRA adapter and regmean runs it over its data", "add base: PATH (its base model)"),
    Case("regmean-alpha-range", "merge cfg.yaml (method: regmean, alpha: 1.5)", _merge("regmean", f"{{data: {DATA}, alpha: 1.5}}"), "ConfigError", "params.alpha 1.5 is outside [0, 1]", "0.9 in the paper"),
    Case("fisher-floor-zero", "merge cfg.yaml (method: fisher, floor: 0)", _merge("fisher", f"{{data: {DATA}, floor: 0}}"), "ConfigError", "params.floor 0 must be a positive number", "e.g. 1e-6"),
]
