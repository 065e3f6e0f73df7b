"""Fine-tuning under ``accelerate launch`` with two CPU processes (DDP over gloo), and ``--report-to``.

Two processes at ``--batch-size 1`` must train exactly what one process trains at ``--batch-size 2``:
the Trainer's seeded sampler draws the same order, accelerate hands process r the r-th example of
each global batch, DDP averages the gradients and the loss is normalised by the global count of
label tokens. So the weights agree to float rounding (summation order only); a wrong shard, batch or
partition moves elements by about a learning rate (Adam's first steps are close to sign steps), far
beyond the tolerance (:data:`CLOSE`). Frozen tensors are byte copies of the base, only the main process writes the
output (one provenance, no temporary sibling left, the path printed once), and a run SIGKILLed after
a checkpoint resumes under two processes to the same weights.

The launches use ``examples/accelerate/ddp-2.yaml`` (the file the docs give for two GPUs): with no
GPU, layerswap tells the Trainer to use the CPU, and accelerate forms a gloo group. Each launch is
two fresh Python processes (about 15-40 s on two cores), so those tests are ``slow``.

FSDP is not tested here: accelerate runs FSDP only on GPUs (on CPU processes it silently trains
DDP), so layerswap refuses an FSDP config without a GPU (tested) and the docs say so.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from layerswap.errors import ConfigError
from layerswap.finetune import FinetuneConfig, finetune
from layerswap.io import ModelFolder, read_provenance

ROOT = Path(__file__).resolve().parents[1]
DDP2 = ROOT / "examples" / "accelerate" / "ddp-2.yaml"
#: How close a 2-process run must be to the 1-process run. The sums differ only in order, so almost
#: every element agrees to 1e-6; AdamW divides by the root of the squared gradient, so the few
#: elements whose gradient is near zero can differ more (measured: at most 3.8e-5, in under 0.01% of
#: the elements). A wrong shard, batch, loss scale or partition changes nearly every trained element
#: by about the learning rate (3e-3), failing both bounds.
CLOSE, MOST, WORST = 1e-6, 1e-3, 1e-3  # |diff| <= CLOSE for all but a MOST fraction of elements; none beyond WORST


from conftest import layer_of, raw_bytes  # noqa: E402  (qa_file, text_file: conftest fixtures)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ACCELERATE_", "FSDP_"))
        and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(LAYERSWAP_QUIET="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def launch(cwd: Path, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file ddp-2.yaml COMMAND`` (two processes), from ``cwd``."""
    argv = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(DDP2),
        "--main_process_port",
        str(_free_port()),
        *command,
    ]
    proc = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        pytest.fail(f"accelerate launch failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def cli(cwd: Path, argv: list[str], **kw) -> subprocess.CompletedProcess:
    return launch(cwd, "-m", "layerswap", "finetune", *argv, **kw)


def flags(config: dict) -> list[str]:
    """A config dict as ``layerswap finetune`` flags."""
    out: list[str] = []
    for key, value in config.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            for k, v in value.items():
                out += [flag, f"{k}={v}"]
        elif isinstance(value, list):
            out += [a for v in value for a in (flag, str(v))]
        else:
            out += [flag, str(value)]
    return out


def settings(base: Path, data: list[str], **kw) -> dict:
    config = dict(base=str(base), data=data, seq_len=48, lr=3e-3, steps=4, quiet=True, save_steps=100)
    config.update(kw)
    return config


def one_process(config: dict, out: Path, batch: int) -> Path:
    return finetune(FinetuneConfig(**{**config, "out": str(out), "batch_size": batch}))


def assert_same_weights(a: Path, b: Path) -> str:
    """The model folders ``a`` and ``b`` hold the same tensors up to summation order (see :data:`CLOSE`)."""
    fa, fb = ModelFolder(a), ModelFolder(b)
    return assert_close_tensors({n: fa.get(n) for n in fa.names()}, {n: fb.get(n) for n in fb.names()})


def assert_close_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> str:
    """All but a :data:`MOST` fraction of the elements within :data:`CLOSE`, none beyond :data:`WORST`."""
    assert sorted(a) == sorted(b)
    total = off = 0
    worst = 0.0
    for name in a:
        assert torch.isfinite(b[name]).all(), name
        diff = (a[name].float() - b[name].float()).abs()
        total, off, worst = total + diff.numel(), off + int((diff > CLOSE).sum()), max(worst, float(diff.max()))
        assert worst <= WORST, f"{name}: |difference| {worst:.3g} > {WORST}"
    assert off <= MOST * total, f"{off} of {total} elements differ by more than {CLOSE}"
    return f"max |difference| {worst:.2g}, {off} of {total} elements beyond {CLOSE:g}"


def assert_single_writer(parent: Path, out: Path, proc: subprocess.CompletedProcess) -> None:
    """One complete output: no temporary or moved-aside sibling, no work folder left, the path printed once."""
    assert sorted(p.name for p in parent.iterdir()) == [out.name], sorted(p.name for p in parent.iterdir())
    assert proc.stdout.split().count(str(out)) == 1, proc.stdout
    prov = read_provenance(out)
    assert prov["processes"] == 2 and prov["examples_per_step"] == 2


# ---------------------------------------------------------------------------- two processes


@pytest.mark.slow
def test_full_frozen_layers_two_processes_equal_one(tiny_llama, qa_file, tmp_path):
    config = settings(tiny_llama, [str(qa_file)], train_layers="1-3")
    runs = tmp_path / "runs"
    runs.mkdir()
    out = runs / "two"
    proc = cli(tmp_path, flags({**config, "batch_size": 1, "out": str(out)}))
    assert_single_writer(runs, out, proc)
    ref = one_process(config, tmp_path / "one", batch=2)
    print(f"full, layers 1-3, 2 processes vs 1: {assert_same_weights(ref, out)}")
    base, tuned = ModelFolder(tiny_llama), ModelFolder(out)
    for name in base.names():  # frozen: byte copies of the base; trained: moved
        assert (raw_bytes(base, name) == raw_bytes(tuned, name)) == (layer_of(name) not in (1, 2, 3)), name
    a, b = read_provenance(ref), read_provenance(out)
    assert b["steps"] == 4 and abs(a["final_loss"] - b["final_loss"]) < 1e-4
    assert _loss_steps(out) == [1, 2, 3, 4]


def _loss_steps(out: Path) -> list[int]:
    import pandas as pd

    return [int(s) for s in pd.read_csv(out / "loss.csv")["step"]]


@pytest.mark.slow
def test_lora_mix_two_processes_equal_one(tiny_llama, qa_file, text_file, tmp_path):
    from safetensors.torch import load_file

    config = settings(
        tiny_llama, [f"math={qa_file}", f"lang={text_file}"], mode="mix", method="lora", train_layers="1,4", merge_lora=True
    )
    runs = tmp_path / "runs"
    runs.mkdir()
    out = runs / "two"
    proc = cli(tmp_path, flags({**config, "batch_size": 1, "out": str(out)}))
    assert_single_writer(runs, out, proc)
    ref = one_process(config, tmp_path / "one", batch=2)
    a, b = load_file(ref / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert sorted(a) == sorted(b) and {layer_of(k) for k in b} == {1, 4}
    print(f"LoRA mix, 2 processes vs 1: adapter {assert_close_tensors(a, b)}")
    print(f"LoRA mix, 2 processes vs 1: merged {assert_same_weights(ref / 'merged', out / 'merged')}")
    base, merged = ModelFolder(tiny_llama), ModelFolder(out / "merged")
    for name in base.names():
        assert (raw_bytes(base, name) == raw_bytes(merged, name)) == (layer_of(name) not in (1, 4) or "norm" in name), name
    assert read_provenance(out)["mode"] == "mix"


@pytest.mark.slow
def test_simultaneous_two_processes_equal_one(tiny_llama, qa_file, text_file, tmp_path):
    """Steps math, lang, math, each updating only its own partition under DDP too: DDP leaves a
    partition that had no gradient untouched (no zeros into AdamW's momentum and decay)."""
    config = settings(
        tiny_llama,
        [f"math={qa_file}", f"lang={text_file}"],
        mode="simultaneous",
        partition={"math": "2-3", "lang": "0,5"},
        ratio={"math": 2, "lang": 1},
        steps=3,
        weight_decay=0.1,
    )
    runs = tmp_path / "runs"
    runs.mkdir()
    out = runs / "two"
    proc = cli(tmp_path, flags({**config, "batch_size": 1, "out": str(out)}))
    assert_single_writer(runs, out, proc)
    ref = one_process(config, tmp_path / "one", batch=2)
    print(f"simultaneous, 2 processes vs 1: {assert_same_weights(ref, out)}")
    base, tuned = ModelFolder(tiny_llama), ModelFolder(out)
    for name in base.names():
        assert (raw_bytes(base, name) == raw_bytes(tuned, name)) == (layer_of(name) not in (0, 2, 3, 5)), name
    import pandas as pd

    assert list(pd.read_csv(out / "loss.csv")["group"]) == ["math", "lang", "math"]


KILLER = """
import json, os, signal, sys
from transformers import TrainerCallback
from layerswap.finetune import finetune

class Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

finetune(json.loads(sys.argv[1]), callbacks=[Kill()])
"""


@pytest.mark.slow
def test_killed_two_process_run_resumes_to_the_same_weights(tiny_llama, qa_file, tmp_path):
    config = settings(tiny_llama, [str(qa_file)], train_layers="0-2", save_steps=2)
    runs = tmp_path / "runs"
    runs.mkdir()
    out = runs / "two"
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    # Both processes SIGKILL themselves right after step 3, one step past checkpoint-2.
    proc = launch(tmp_path, str(killer), json.dumps({**config, "batch_size": 1, "out": str(out)}), "3", check=False)
    assert proc.returncode != 0
    work = runs / "two.work"
    assert not out.exists() and sorted(p.name for p in runs.iterdir()) == ["two.work"]
    assert (work / "checkpoint-2" / "trainer_state.json").is_file() and not (work / "checkpoint-4").exists()
    assert {p.name for p in (work / "checkpoint-2").glob("rng_state_*.safetensors")} == {"rng_state_0.safetensors", "rng_state_1.safetensors"}

    proc = cli(tmp_path, flags({**config, "batch_size": 1, "out": str(out), "resume": True}))
    assert_single_writer(runs, out, proc)
    prov = read_provenance(out)
    assert prov["resumed_from_step"] == 2 and prov["steps"] == 4
    assert _loss_steps(out) == [1, 2, 3, 4]  # one writer of the running log: no row twice
    ref = one_process(config, tmp_path / "one", batch=2)
    print(f"killed and resumed with 2 processes vs 1 uninterrupted: {assert_same_weights(ref, out)}")


# ---------------------------------------------------------------------------- refusals, one line, nothing written


@pytest.mark.slow
def test_a_bad_option_fails_every_process_before_anything_is_written(tiny_llama, qa_file, tmp_path):
    """What is guaranteed: the launch fails, nothing is written, and the problem is named. How many
    ranks print their line is not: the launcher stops the others as soon as one exits (a race)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    proc = cli(
        tmp_path, flags({**settings(tiny_llama, [str(qa_file)], train_layers="4-9"), "out": str(runs / "bad")}), check=False
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors, proc.stderr[-3000:]
    assert set(errors) == {"error: layer 9 in '4-9' is out of range: valid layers are 0..5"}, proc.stderr[-3000:]
    assert list(runs.iterdir()) == []


def _nothing_written(tmp_path: Path, before: set[str]) -> None:
    assert {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")} == before


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, "started one process"),
        ({"ACCELERATE_USE_FSDP": "true"}, "FSDP accelerate config on a machine without a GPU"),
    ],
    ids=["accelerate-cpu-one-process", "fsdp-without-gpu"],
)
def test_launches_that_would_not_run_as_asked_are_refused(env, match, tiny_llama, qa_file, tmp_path, monkeypatch):
    if "ACCELERATE_USE_FSDP" in env and (torch.cuda.is_available()):
        pytest.skip("this machine has a GPU: FSDP would run")
    for key in ("WORLD_SIZE", "RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
    with pytest.raises(ConfigError, match=match) as exc:
        finetune(FinetuneConfig(**settings(tiny_llama, [str(qa_file)], out=str(tmp_path / "out"))))
    assert "\n" not in str(exc.value)
    _nothing_written(tmp_path, before)


def test_merge_lora_under_sharding_is_refused(tiny_llama, qa_file, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="--merge-lora under DEEPSPEED"):
        finetune(
            FinetuneConfig(**settings(tiny_llama, [str(qa_file)], out=str(tmp_path / "out"), method="lora", merge_lora=True))
        )
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- --report-to


def test_report_to_is_passed_to_the_trainer(tmp_path):
    from layerswap.finetune.trainer import plan_steps, training_arguments

    cfg = FinetuneConfig(base="b", data=["d.jsonl"], out=str(tmp_path / "o"), report_to="tensorboard")
    plan = plan_steps(cfg, "single", ["train"], 8)
    args = training_arguments(cfg, tmp_path / "o.work", plan, (False, False))
    assert args.report_to == ["tensorboard"] and args.output_dir == str(tmp_path / "o.work")
    none = training_arguments(cfg.model_copy(update={"report_to": "none"}), tmp_path / "o.work", plan, (False, False))
    assert none.report_to in ([], "none", ["none"])
    if not torch.cuda.is_available():  # no GPU: the Trainer is told to use the CPU, so bf16 autocast is allowed there
        assert args.use_cpu and training_arguments(cfg, tmp_path / "o.work", plan, (True, False)).bf16


@pytest.mark.parametrize("integration", ["tensorboard", "wandb"])
def test_report_to_without_its_package_is_one_line_before_anything(integration, tiny_llama, qa_file, tmp_path, monkeypatch):
    for name in ("tensorboard", "tensorboardX", "wandb"):
        monkeypatch.setitem(sys.modules, name, None)  # find_spec answers None: not installed
    before = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
    with pytest.raises(ConfigError, match=f"--report-to {integration} needs the {integration} package") as exc:
        finetune(FinetuneConfig(**settings(tiny_llama, [str(qa_file)], out=str(tmp_path / "out"), report_to=integration)))
    assert "pip install" in str(exc.value) and "--report-to none" in str(exc.value)
    _nothing_written(tmp_path, before)


def _fake_tensorboard_x() -> types.ModuleType:
    """A stand-in ``tensorboardX`` whose SummaryWriter appends each call to ``LOG_DIR/events.txt``."""
    import importlib.machinery

    module = types.ModuleType("tensorboardX")
    module.__spec__ = importlib.machinery.ModuleSpec("tensorboardX", None)

    class SummaryWriter:
        def __init__(self, log_dir: str | None = None, **kw) -> None:
            self.path = Path(log_dir) / "events.txt"
            self.path.parent.mkdir(parents=True, exist_ok=True)

        def _write(self, *items) -> None:
            with open(self.path, "a") as fh:
                fh.write(json.dumps([str(i) for i in items]) + "\n")

        def add_scalar(self, tag, value, step=None):  # noqa: ANN001
            self._write("scalar", tag, value, step)

        def add_text(self, tag, text, step=None):  # noqa: ANN001
            self._write("text", tag, step)

        def add_hparams(self, *a, **k):  # noqa: ANN002, ANN003
            self._write("hparams")

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    module.SummaryWriter = SummaryWriter
    return module


def test_report_to_tensorboard_logs_into_the_output(tiny_llama, qa_file, tmp_path, monkeypatch):
    """The Trainer's TensorBoard callback writes under OUT.work/runs while training; the output keeps it as OUT/runs."""
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # torch.utils.tensorboard fails: the callback takes tensorboardX
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboardX", _fake_tensorboard_x())
    out = finetune(
        FinetuneConfig(
            **settings(tiny_llama, [str(qa_file)], out=str(tmp_path / "out"), steps=2, train_layers="1", report_to="tensorboard")
        )
    )
    events = list((out / "runs").rglob("events.txt"))
    assert len(events) == 1
    rows = [json.loads(line) for line in events[0].read_text().splitlines()]
    assert [r[3] for r in rows if r[:2] == ["scalar", "train/loss"]] == ["1", "2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the work folder went, as always
    ModelFolder(out)  # still a model folder


def test_report_to_log_dir_inside_an_input_is_refused(tiny_llama, qa_file, tmp_path, monkeypatch):
    from layerswap.errors import InputPathError

    monkeypatch.setitem(sys.modules, "tensorboardX", _fake_tensorboard_x())
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tiny_llama / "runs"))
    with pytest.raises(InputPathError, match="TENSORBOARD_LOGGING_DIR"):
        finetune(FinetuneConfig(**settings(tiny_llama, [str(qa_file)], out=str(tmp_path / "out"), report_to="tensorboard")))
    assert not (tiny_llama / "runs").exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- the accelerate config files


def test_example_accelerate_configs_load():
    """Every file in examples/accelerate is an accelerate config of what its name says."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    folder = ROOT / "examples" / "accelerate"
    configs = {p.stem: load_config_from_file(str(p)) for p in sorted(folder.glob("*.yaml"))}
    assert set(configs) == {"ddp-1", "ddp-2", "ddp-8", "fsdp-8", "deepspeed-zero3-8"}
    assert configs["ddp-1"].distributed_type == DistributedType.NO and configs["ddp-1"].num_processes == 1
    for name, n in (("ddp-2", 2), ("ddp-8", 8)):
        assert configs[name].distributed_type == DistributedType.MULTI_GPU and configs[name].num_processes == n
    fsdp = configs["fsdp-8"]
    assert fsdp.distributed_type == DistributedType.FSDP and fsdp.num_processes == 8
    assert fsdp.fsdp_config["fsdp_version"] == 2 and fsdp.fsdp_config["fsdp_reshard_after_forward"] is True  # FULL_SHARD
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    ds = configs["deepspeed-zero3-8"]
    assert ds.distributed_type == DistributedType.DEEPSPEED and ds.deepspeed_config["zero_stage"] == 3
    assert ds.deepspeed_config["zero3_save_16bit_model"] is True
    assert all(c.mixed_precision == "no" for c in configs.values())  # precision comes from --precision
