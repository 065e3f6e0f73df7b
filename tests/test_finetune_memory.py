"""A fine-tune's state in memory: Adafactor trains and resumes, and a state that cannot fit is refused before loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from layerswap.errors import ConfigError
from layerswap.finetune import FinetuneConfig, finetune, memory
from layerswap.finetune.model import resolve_partitions
from layerswap.io import ModelFolder, open_model


def cfg(base: Path, data, out: Path, **kw) -> FinetuneConfig:
    defaults = dict(steps=4, batch_size=4, seq_len=48, lr=3e-3, quiet=True, save_steps=100)
    defaults.update(kw)
    return FinetuneConfig(base=str(base), data=data, out=str(out), **defaults)


def _union(base: ModelFolder, config: FinetuneConfig):
    arch = base.architecture
    present = {r.module for r in map(arch.classify, base.names()) if r.layer is not None}
    return resolve_partitions(config, arch, present, "single").union


def test_training_state_counts_weights_gradients_and_moments(tiny_llama, qa_file, tmp_path):
    base = open_model(tiny_llama)
    n = sum(base.info(t).numel for t in base.names())
    full = cfg(tiny_llama, [str(qa_file)], tmp_path / "o")
    state = memory.training_state(base, _union(base, full), full)
    assert (state.weights, state.trained, state.moments, state.total) == (4 * n, n, 8 * n, 16 * n)
    factored = memory.training_state(base, _union(base, full), full, optim="adafactor")
    matrices = [base.info(t).shape for t in base.names()]
    assert factored.moments == 4 * sum(s[0] + s[1] if len(s) == 2 else s[0] for s in matrices)
    some = full.model_copy(update={"train_layers": "0-1", "train_global": ["none"]})
    part = memory.training_state(base, _union(base, some), some)
    assert part.trained == sum(base.info(t).numel for t in base.names() if base.architecture.classify(t).layer in (0, 1))
    lora = full.model_copy(update={"method": "lora"})
    assert memory.training_state(base, _union(base, lora), lora).total < factored.total < state.total


def test_state_that_cannot_fit_is_refused_before_anything_is_written(tiny_llama, qa_file, tmp_path, monkeypatch):
    base = open_model(tiny_llama)
    full = cfg(tiny_llama, [str(qa_file)], tmp_path / "out")
    need = memory.training_state(base, _union(base, full), full).total
    monkeypatch.setattr(memory, "_available", lambda: need - 1)
    with pytest.raises(ConfigError, match=r"needs at least .* GB .* use --optim adafactor .* or --method lora") as err:
        finetune(full)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()
    monkeypatch.setattr(memory, "_available", lambda: 1000)  # nothing fits: no mode is named
    with pytest.raises(ConfigError, match="use a machine or GPU with more memory"):
        finetune(full)
    monkeypatch.setenv("WORLD_SIZE", "2")  # several processes: the check stands aside (it sees one process)
    memory.check_fits(base, _union(base, full), full, available=1000)


def test_adafactor_trains_and_resumes_like_an_uninterrupted_run(tiny_llama, qa_file, tmp_path):
    from transformers import TrainerCallback
    from transformers.optimization import Adafactor

    seen = []

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kw):
            seen.append(type(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer))
            if state.global_step == 3:
                raise KeyboardInterrupt

    out = tmp_path / "res"
    config = cfg(tiny_llama, [str(qa_file)], out, steps=5, save_steps=2, optim="adafactor", lr=1e-2)
    with pytest.raises(KeyboardInterrupt):
        finetune(config, callbacks=[Crash()])
    assert seen and all(t is Adafactor for t in seen)
    finetune(config, resume=True)
    straight = finetune(config.model_copy(update={"out": str(tmp_path / "straight")}))
    a, b, start = ModelFolder(out), ModelFolder(straight), ModelFolder(tiny_llama)
    assert any(not torch.equal(a.get(n), start.get(n)) for n in a.names())  # it trained
    for name in a.names():
        torch.testing.assert_close(a.get(name), b.get(name), rtol=1e-5, atol=1e-6)
