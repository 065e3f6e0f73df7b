"""Importance before training: the diagonal Fisher of the base on each task's data.

``F(p) = mean over N batches of (d loss / d p)^2``, the mean squared gradient of the language-
modelling loss (a batch-level empirical Fisher). Nothing is trained. Each task's Fisher is
written as a float32 safetensors folder and then read back through the same streaming analysis
as the deltas (:class:`~layerswap.analysis.deltas.FisherSource`, values ``sqrt(F)``), so the
tables, overlap, plots and boundary recommendation mean the same with "share of squared update"
read as "share of Fisher mass".

Data comes from the core (:func:`layerswap.io.lm_passes.load_texts`, shared with the data-aware merges), as for
fine-tuning: the same specs (``gsm8k``, ``ntrex:sw``, ``tico:sw``, ``tatoeba:sw``, ``hf:NAME``, JSONL/TSV/text files
with ``?key=value`` options) and the same refusal of evaluation sets. Prompt/completion records
become one text each (prompt followed by completion), as a language model reads them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence

import torch

from layerswap.analysis.boundaries import BoundaryRule
from layerswap.analysis.core import build_analysis
from layerswap.analysis.deltas import FisherSource
from layerswap.analysis.overlap import check_top_k
from layerswap.analysis.report import Analysis
from layerswap.config import check_device
from layerswap.errors import ConfigError
from layerswap.io import AtomicDir, ModelFolder, open_model, prepare_output_dir, write_tensors
from layerswap.io.lm_passes import gradient_moments, load_model, load_texts

__all__ = ["diagonal_fisher", "gradient_moments", "importance", "load_model", "load_texts"]


def diagonal_fisher(
    model: torch.nn.Module,
    tokenizer,  # noqa: ANN001 - a transformers tokenizer
    texts: Sequence[str],
    *,
    batch_size: int = 4,
    seq_len: int = 128,
    desc: str = "fisher",
) -> tuple[dict[str, torch.Tensor], int]:
    """Mean squared gradient of the LM loss per parameter over the batches of ``texts``; returns (F, batches)."""
    return gradient_moments(model, tokenizer, texts, batch_size=batch_size, seq_len=seq_len, desc=desc, power=2)


def importance(
    base: str | os.PathLike[str] | ModelFolder,
    data: Mapping[str, str],
    *,
    examples: int = 32,
    batch_size: int = 4,
    seq_len: int = 128,
    data_dir: str | os.PathLike[str] | None = None,
    top_k: Sequence[float] = (1.0, 5.0),
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    keep_fisher: bool = False,
    device: str = "cpu",
    lang_task: str | None = None,
    math_task: str | None = None,
    rule: BoundaryRule | None = None,
    plots: bool = True,
) -> Analysis:
    """Diagonal Fisher of ``base`` on each named data spec, analysed like deltas (module docstring).

    With ``out`` the tables, figures and summary go there, and each task's Fisher (float32,
    model-sized) is written to ``out/fisher/<task>/`` (safetensors) as soon as it is complete and the
    analysis streams it from there, so memory holds one task's Fisher at a time; ``keep_fisher`` keeps
    those folders. Without ``out`` the Fishers are held in memory.
    """
    if not data:
        raise ConfigError("no data given: pass --data NAME=SPEC, e.g. --data math=gsm8k --data lang=ntrex:sw")
    for option, value in (("examples", examples), ("batch-size", batch_size), ("seq-len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"--{option} {value} must be a whole number of at least 1")
    check_device(device)
    check_top_k(top_k)
    inputs = [base, data, data_dir]  # data specs that are files, the data folder, the base
    if out is not None:
        out = prepare_output_dir(out, overwrite, inputs=inputs)  # never an input, never someone else's folder
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    base_folder = base if isinstance(base, ModelFolder) else open_model(base)
    texts = {name: load_texts(spec, data_dir=data_dir, limit=examples) for name, spec in data.items()}
    atomic = AtomicDir(out, overwrite=overwrite, inputs=inputs) if out is not None else None
    work = atomic.__enter__() if atomic is not None else None
    try:
        started = time.perf_counter()
        model, tokenizer = load_model(base_folder, device)
        sources, batches, seconds_by_task = [], {}, {}
        base_names = set(base_folder.names())
        for name, task_texts in texts.items():
            t0 = time.perf_counter()
            fisher, batches[name] = diagonal_fisher(
                model, tokenizer, task_texts, batch_size=batch_size, seq_len=seq_len, desc=f"fisher {name}"
            )
            seconds_by_task[name] = round(time.perf_counter() - t0, 2)
            kept = {n: f.cpu() for n, f in fisher.items() if n in base_names}
            del fisher
            if atomic is not None:  # on disk, so the next task's pass does not hold this one's (model-sized) Fisher too
                folder = write_tensors(
                    work / "fisher" / name,
                    kept,
                    donor=base_folder.path,
                    provenance={
                        "kind": "diagonal_fisher",
                        "base": str(base_folder.path),
                        "data": data[name],
                        "examples": len(task_texts),
                        "batches": batches[name],
                        "batch_size": batch_size,
                        "seq_len": seq_len,
                    },
                )
                del kept
                sources.append(FisherSource(ModelFolder(folder), name))
            else:
                sources.append(FisherSource(kept, name))
        del model
        fisher_seconds = round(time.perf_counter() - started, 2)
        result = build_analysis(
            "importance",
            base_folder,
            sources,
            inputs={name: spec for name, spec in data.items()},
            top_k=top_k,
            lang=lang_task,
            math=math_task,
            rule=rule,
        )
        result.info.update(
            {
                "examples": {n: len(t) for n, t in texts.items()},
                "batches": batches,
                "batch_size": batch_size,
                "seq_len": seq_len,
                "device": device,
                "seconds_fisher": {"total": fisher_seconds, **seconds_by_task},
            }
        )
        if atomic is not None:
            result.write_into(work, plots_too=plots, provenance={"data": dict(data)})
            if not keep_fisher:
                shutil.rmtree(work / "fisher")
    except BaseException as exc:
        if atomic is not None:
            atomic.__exit__(type(exc), exc, None)
        raise
    if atomic is not None:
        atomic.__exit__(None, None, None)
        result.out = atomic.out
    return result
