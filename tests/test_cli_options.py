"""CLI options generated from pydantic configs: each field is one option, each option one field."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import typer
from pydantic import Field

from layerswap.cli.options import command_from_config, flags_of
from layerswap.config import StrictModel
from layerswap.errors import ConfigError
from layerswap.finetune.config import FinetuneConfig


def click_command(name: str):  # noqa: ANN201 - typer's vendored click command
    from layerswap.cli import app

    group = typer.main.get_command(app)
    return group.commands[name]  # type: ignore[attr-defined]


def test_every_finetune_field_is_an_option_and_every_option_a_field():
    command = click_command("finetune")
    options = {p.name: p for p in command.params if p.param_type_name == "option" and p.name != "help"}
    assert set(options) == set(FinetuneConfig.model_fields) | {"config"}
    for field, info in FinetuneConfig.model_fields.items():
        option = options[field]
        assert f"--{field.replace('_', '-')}" in option.opts, field  # flag = YAML key in kebab case
        assert option.help and option.help == info.description, field
        assert option.default is None, field  # not given -> the config (or --config file) decides
    assert options["use_rslora"].secondary_opts == ["--no-rslora"]
    assert options["data"].multiple and options["partition"].multiple and options["ratio"].multiple
    assert not options["train_modules"].multiple  # comma-separated: --train-modules q_proj,v_proj


class Toy(StrictModel):
    """A config with one field of each supported type."""

    name: str = Field(description="A name.")
    count: int = Field(3, description="A count.")
    scale: float | None = Field(None, description="A scale.")
    kind: Literal["a", "b", "c"] = Field("a", description="A kind.")
    items: list[str] = Field([], description="Repeatable items.")
    parts: list[str] | None = Field(None, description="Comma parts.", json_schema_extra={"cli_comma": True})
    weights: dict[str, int] = Field({}, description="NAME=N weights.")
    paths: dict[str, str] = Field({}, description="NAME=PATH.")
    on: bool = Field(False, description="A switch.", json_schema_extra={"cli_off": "--off"})
    folder: Path | None = Field(None, description="A folder.")


def toy_app(seen: list[Toy]) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @command_from_config(Toy, example="toy --name x")
    def toy(config: Toy) -> None:
        """Run the toy."""
        seen.append(config)

    @app.command()
    def other() -> None:  # a second command keeps typer from collapsing the app into one command
        pass

    return app


def invoke(args: list[str]) -> tuple[list[Toy], BaseException | None]:
    seen: list[Toy] = []
    command = typer.main.get_command(toy_app(seen))
    try:
        command.main(args=["toy", *args], standalone_mode=False)
    except Exception as exc:  # noqa: BLE001 - ConfigError, or typer's (vendored) click errors
        return seen, exc
    return seen, None


def test_a_new_field_is_a_new_option_with_its_type(tmp_path):
    seen, err = invoke(
        ["--name", "n", "--count", "5", "--kind", "b", "--items", "x,y", "--items", "z", "--parts", "p, q",
         "--weights", "a=2", "--paths", "m=./m", "--off", "--folder", str(tmp_path)]
    )  # fmt: skip
    assert err is None
    assert seen[0].model_dump() == {
        "name": "n",
        "count": 5,
        "scale": None,
        "kind": "b",
        "items": ["x,y", "z"],
        "parts": ["p", "q"],
        "weights": {"a": 2},
        "paths": {"m": "./m"},
        "on": False,
        "folder": tmp_path,
    }
    seen, err = invoke(["--name", "n", "--on"])
    assert seen[0].on and seen[0].count == 3 and seen[0].items == []


def test_generated_errors_are_one_line_config_errors(tmp_path):
    assert str(invoke(["--name", "n", "--kind", "d"])[1]) == "--kind 'd': use a, b or c"
    assert str(invoke(["--count", "2"])[1]) == "missing --name: e.g. toy --name x"
    assert str(invoke(["--name", "n", "--weights", "a=x"])[1]) == "--weights a=x: the count must be a whole number"
    assert "must be NAME=VALUE" in str(invoke(["--name", "n", "--paths", "m"])[1])
    assert type(invoke(["--name", "n", "--count", "x"])[1]).__name__ == "BadParameter"  # click checks numbers
    config = tmp_path / "toy.yaml"
    config.write_text("name: from-file\ncount: 7\nitems: [f]\n")
    seen, err = invoke(["--config", str(config), "--count", "8"])
    assert err is None and (seen[0].name, seen[0].count, seen[0].items) == ("from-file", 8, ["f"])  # flags win


def test_own_options_pass_through_and_fields_can_be_chosen(tmp_path):
    seen: list[tuple[Toy, Path, bool]] = []
    app = typer.Typer()

    @app.command()
    @command_from_config(Toy, fields=("name", "count"), config_file=False)
    def toy(config: Toy, out: Path = typer.Option(..., "--out", help="Output."), dry: bool = typer.Option(False, "--dry")) -> None:
        seen.append((config, out, dry))

    @app.command()
    def other() -> None:
        pass

    command = typer.main.get_command(app)
    options = {p.name for p in command.commands["toy"].params}  # type: ignore[attr-defined]
    assert options == {"name", "count", "out", "dry"}
    command.main(args=["toy", "--name", "n", "--out", str(tmp_path), "--dry"], standalone_mode=False)
    assert seen[0][0].name == "n" and seen[0][0].count == 3 and seen[0][1:] == (tmp_path, True)


def test_a_field_without_a_command_line_form_is_refused():
    class Odd(StrictModel):
        pairs: list[tuple[int, int]] = []

    with pytest.raises(TypeError, match="Odd.pairs: no command-line form"):
        flags_of(Odd)

    class Clash(StrictModel):
        config: str = "x"

    with pytest.raises(TypeError, match="field named config"):
        command_from_config(Clash, example="")


def test_finetune_cli_errors_are_the_documented_lines(capsys):
    from layerswap.cli import main

    def error(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main(["finetune", *argv])
        assert exit_info.value.code == ConfigError.exit_code
        return capsys.readouterr().err.strip()

    assert error(["--data", "gsm8k"]) == (
        "error: missing --base, --out: e.g. layerswap finetune --base gemma3-270m --data gsm8k --out experts/math"
    )
    assert error(["--method", "qlora"]) == "error: --method 'qlora': use full or lora"
    assert error(["--mode", "both"]) == "error: --mode 'both': use single, simultaneous or mix"
    assert error(["--ratio", "math=x"]) == "error: --ratio math=x: the count must be a whole number"
    assert error(["--partition", "math"]) == "error: --partition 'math' must be NAME=VALUE, e.g. --partition math=./experts/math"


class Inner(StrictModel):
    #: Examples per round.
    block: int = 24
    alpha: float = Field(0.05, description="Error rate.")


class Outer(StrictModel):
    search: str = "exhaustive"
    halving: Inner = Field(default_factory=Inner)
    sizes: list[int] = Field(default_factory=lambda: [2, 3])


class Nested(StrictModel):
    name: str = "x"
    candidates: Outer = Field(default_factory=Outer)


def test_nested_fields_are_dotted_options_merged_key_by_key_over_the_file(tmp_path):
    """``--candidates.halving.block 12`` sets one nested key; the file's other nested keys stay."""
    flags = {f.name: f for f in flags_of(Nested)}
    assert list(flags) == ["--name", "--candidates.search", "--candidates.halving.block", "--candidates.halving.alpha", "--candidates.sizes"]
    assert flags["--candidates.halving.block"].help == "Examples per round."  # the #: comment is the help
    assert flags["--candidates.halving.alpha"].help == "Error rate."
    seen: list[Nested] = []
    app = typer.Typer()

    @app.command()
    @command_from_config(Nested)
    def toy(config: Nested) -> None:
        seen.append(config)

    @app.command()
    def other() -> None:
        pass

    command = typer.main.get_command(app)
    config = tmp_path / "nested.yaml"
    config.write_text("candidates:\n  search: halving\n  halving: {alpha: 0.1}\n")
    args = ["toy", "--config", str(config), "--candidates.halving.block", "12", "--candidates.sizes", "4,5"]
    command.main(args=args, standalone_mode=False)
    got = seen[0].candidates
    assert (got.search, got.halving.block, got.halving.alpha, got.sizes) == ("halving", 12, 0.1, [4, 5])
    with pytest.raises(ConfigError, match="give comma-separated whole numbers"):
        command.main(args=["toy", "--candidates.sizes", "4,x"], standalone_mode=False)


def test_every_config_command_generates_its_options():
    """Every command with settings: one option per config field (sweep's and demo's nested ones dotted)."""
    from typer.main import get_command

    from layerswap.analysis.options import AnalyzeConfig, ImportanceConfig
    from layerswap.cli import app
    from layerswap.evaluate.config import EvaluateConfig
    from layerswap.pipeline.config import DemoConfig
    from layerswap.sweep.config import SweepConfig

    commands = get_command(app).commands  # type: ignore[attr-defined]
    commands_and_configs = (
        ("evaluate", EvaluateConfig),
        ("sweep", SweepConfig),
        ("demo", DemoConfig),
        ("finetune", FinetuneConfig),
        ("analyze", AnalyzeConfig),
        ("importance", ImportanceConfig),
    )
    for name, model in commands_and_configs:
        params = {p.name for p in commands[name].params}
        assert {f.param for f in flags_of(model)} <= params, name
    sweep_opts = {o for p in commands["sweep"].params for o in p.opts}
    assert {"--candidates.search", "--candidates.halving.block", "--cache-dtype", "--limit"} <= sweep_opts
    evaluate_opts = {o for p in commands["evaluate"].params for o in p.opts}
    assert {"--langs", "--lang", "--format", "--data-dir"} <= evaluate_opts


def test_sweep_overrides_reach_the_config(tmp_path, monkeypatch):
    """``layerswap sweep FILE --candidates.search halving --limit 4``: the file, with the flags laid over it."""
    import layerswap.sweep as sweep
    from layerswap.cli import main

    config = tmp_path / "sweep.yaml"
    config.write_text("base: b\nmath: m\nlang: l\nlimit: 10\ncandidates:\n  top_n: 3\n  halving: {block: 2}\n")
    seen = {}
    monkeypatch.setattr(sweep, "run_sweep", lambda cfg, out, inputs: seen.update(cfg=cfg), raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["sweep", str(config), "--out", str(tmp_path / "o"), "--candidates.search", "halving", "--limit", "4"])
    assert exc.value.code == 0
    cfg = seen["cfg"]
    assert cfg.limit == 4 and cfg.candidates.search == "halving" and cfg.candidates.top_n == 3 and cfg.candidates.halving.block == 2


def test_evaluate_lang_alias_counts_as_one_option(capsys):
    from layerswap.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "m", "--langs", "sw", "--lang", "bn", "--out", "o"])
    assert exc.value.code == 6
    assert "is given twice ('sw' and 'bn')" in capsys.readouterr().err  # the alias is the same option
