"""Checkpoints of a running fine-tune (``OUT.work``) and resuming an interrupted one.

The work folder holds the Trainer's ``checkpoint-N`` folders, the running loss log and
``run_config.json`` (the settings that must not change on ``--resume``). A stale folder is never
reused silently: ``--resume`` continues it, ``--overwrite`` starts over, anything else is refused.
Under ``accelerate launch`` only the main process (:func:`is_main_process`) creates or clears it, and
:func:`check_launch` refuses launches that would not run as asked.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from layerswap.errors import CheckpointError, ConfigError, InputPathError, LayerswapError, OutputExistsError
from layerswap.finetune.config import FinetuneConfig
from layerswap.io import write_text_atomic
from layerswap.io.outputs import check_location, check_not_input, input_paths, refuse_links_inside, resolved
from layerswap.io.stored import read_stored_json

#: The file that says layerswap created a work folder (and so may delete it): ``{"created": true}``,
#: or ``false`` for an empty folder the user made, which is emptied but kept. It also records the
#: folder's identity (device and inode), which only the folder it was written in has: a marker copied
#: or written by hand into another folder is not trusted (:func:`_marker`).
MARKER = ".layerswap-work"
#: Config keys that may change between an interrupted run and its ``--resume``.
RESUME_FREE = {
    "resume",
    "overwrite",
    "quiet",
    "steps",
    "save_steps",
    "save_total_limit",
    "keep_checkpoints",
    "log_steps",
    "report_to",
}
_TRUE = ("1", "true", "yes")


def is_main_process() -> bool:
    """False in processes 1.. of an ``accelerate launch``/``torchrun`` group (``RANK``), else True.

    Every process checks the inputs and trains; only the main one creates the work folder, writes
    the running loss log and the output, and prints."""
    return int(os.environ.get("RANK", "0")) == 0


def check_launch(cfg: FinetuneConfig) -> None:
    """Refuse launches that would not run as asked: ``accelerate launch --cpu --num_processes N`` on
    one machine (which starts one process), an FSDP config without a GPU (which runs DDP), and
    ``--merge-lora`` under FSDP/DeepSpeed (``merge_and_unload`` needs the whole model in one process).

    accelerate starts several CPU processes only through ``mpirun``; without it, ``--cpu`` runs the
    command once (with ``MASTER_ADDR`` set but no ``WORLD_SIZE``), so the run would train at 1/N of
    the global batch that was asked for, silently. ``--multi_gpu`` starts the N processes (through
    torchrun), and the recipe trains them on the CPU where there is no GPU (gloo). accelerate (1.16)
    turns an FSDP config into FSDP only on GPU-like devices; on CPU processes it silently trains DDP
    (torch's ``fully_shard`` itself runs on CPU, accelerate does not route to it)."""
    env = os.environ
    started_alone = env.get("ACCELERATE_USE_CPU", "").lower() in _TRUE and "MASTER_ADDR" in env
    group = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    if started_alone and not any(k in env for k in group):
        raise ConfigError(
            "accelerate launch --cpu started one process, not --num_processes N (on one machine it starts more "
            "only through mpirun): use accelerate launch --multi_gpu --num_processes N, which trains on the CPU "
            "(gloo) where there is no GPU"
        )
    sharded = [k for k in ("FSDP", "DEEPSPEED") if env.get(f"ACCELERATE_USE_{k}", "").lower() in _TRUE]
    if sharded and cfg.merge_lora:
        raise ConfigError(
            f"--merge-lora under {sharded[0]}: the sharded model cannot be merged in place; drop --merge-lora "
            "(the adapter is written, and layerswap's merges take it as an expert with --base)"
        )
    if env.get("ACCELERATE_USE_FSDP", "").lower() in _TRUE and not has_accelerator():
        raise ConfigError(
            "an FSDP accelerate config on a machine without a GPU: accelerate shards only on GPUs and would run "
            "these CPU processes as plain DDP, each holding the whole model: use a DDP config "
            "(examples/accelerate/ddp-2.yaml) or run on GPUs"
        )


def has_accelerator() -> bool:
    """A GPU (or other torch accelerator) is present; else the Trainer is told to use the CPU."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "current_accelerator"):
        return accelerator.current_accelerator() is not None
    return torch.cuda.is_available() or torch.backends.mps.is_available()  # torch < 2.6


def default_work_dir(out: Path) -> Path:
    """Checkpoints and the running loss log live beside the output: ``<out>.work``."""
    return out.parent / f"{out.name}.work"


def work_dir_of(cfg: FinetuneConfig, out: Path) -> Path:
    """``--work-dir``, else :func:`default_work_dir`."""
    return Path(cfg.work_dir).expanduser() if cfg.work_dir else default_work_dir(out)


def last_complete_checkpoint(work: Path) -> str | None:
    """The newest ``checkpoint-N`` whose ``trainer_state.json`` (the Trainer writes it last) is valid.

    The Trainer writes checkpoints in place, so a run killed while saving leaves an incomplete
    newest checkpoint; resuming must skip it rather than fail on it. A state whose ``global_step``
    is not the folder's ``N`` (edited, or copied from another checkpoint) is not complete either."""
    best: tuple[int, Path] | None = None
    for folder in work.glob("checkpoint-*"):
        step = folder.name.rsplit("-", 1)[-1]
        if not step.isdigit() or folder.is_symlink():
            continue
        try:
            state = read_stored_json(folder / "trainer_state.json", root=work)
        except LayerswapError:
            continue
        if state.get("global_step") != int(step):
            continue
        if best is None or int(step) > best[0]:
            best = (int(step), folder)
    return str(best[1]) if best else None


def check_work_dir(work: Path, out: Path, inputs: Any, *, resume: bool = False) -> None:
    """Refuse a work folder that is an input, overlaps the output, or is a folder layerswap did not create.

    The work folder is deleted after a successful run (and cleared by ``--overwrite``), so it must be
    one layerswap made (its :data:`MARKER` file says so), a new path, or an empty folder. ``--resume``
    deletes nothing until the run ends, so it may continue a folder of an older version (no marker),
    which is then left in place."""
    check_not_input(work, input_paths(inputs), option="--work-dir")
    where, final = resolved(work), resolved(out)
    if where == final or final in where.parents or where in final.parents:
        raise InputPathError(
            f"--work-dir {work} overlaps the output {out}: checkpoints are deleted after the run; choose a folder beside the output"
        )
    if work.is_symlink():
        raise InputPathError(f"--work-dir {work} is a symbolic link: pass the folder itself or choose another path")
    if not work.exists():
        check_location(work, option="--work-dir")
        return
    if not work.is_dir():
        raise InputPathError(f"--work-dir {work} is a file, not a folder: choose another path")
    refuse_links_inside(work, option="--work-dir")
    if not resume and _marker(work) is None and any(work.iterdir()):
        raise _foreign(work)


def _foreign(work: Path) -> OutputExistsError:
    return OutputExistsError(
        f"--work-dir {work} is a folder layerswap did not create (no {MARKER} of its own), and layerswap deletes only "
        "work folders it created: choose a new or empty folder"
    )


def check_log_dirs(report_to: str, inputs: Any) -> None:
    """A logging folder the user chose by environment (``TENSORBOARD_LOGGING_DIR``, ``WANDB_DIR``) must not be an input."""
    variable = {"tensorboard": "TENSORBOARD_LOGGING_DIR", "wandb": "WANDB_DIR"}.get(report_to)
    if variable and os.environ.get(variable):
        check_not_input(Path(os.environ[variable]).expanduser(), input_paths(inputs), option=f"${variable}")


def _identity(work: Path) -> dict[str, int]:
    st = os.stat(work, follow_symlinks=False)
    return {"device": st.st_dev, "inode": st.st_ino}


def _marker(work: Path) -> dict[str, Any] | None:
    """The folder's marker if layerswap wrote it in this very folder (its recorded identity matches), else None."""
    try:
        data = read_stored_json(work / MARKER, root=work)
        identity = _identity(work)
    except (LayerswapError, OSError):
        return None
    if any(data.get(key) != value for key, value in identity.items()):
        return None
    return data


def remove_work_dir(work: Path) -> None:
    """Delete a work folder after the run, only if layerswap created it (an adopted empty folder is emptied)."""
    marker = _marker(work)
    if marker is None:
        return
    if marker.get("created", False):
        shutil.rmtree(work, ignore_errors=True)
        return
    for child in work.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def prepare_work_dir(cfg: FinetuneConfig, work: Path, *, create: bool = True) -> str | None:
    """Return the checkpoint to resume from, or None; refuse stale work unless told what to do.

    ``create=False`` only checks, so that a mistake found later (data, partition) leaves no folder."""
    run_file = work / "run_config.json"
    current = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in RESUME_FREE}
    last = last_complete_checkpoint(work) if work.is_dir() else None
    if cfg.resume:
        if last is None:
            raise InputPathError(
                f"--resume: no checkpoint in {work}; start without --resume (checkpoints are saved every {cfg.save_steps} steps)"
            )
        check_resumable(Path(last))
        if os.path.lexists(run_file):
            saved = read_stored_json(run_file, root=work, fix="start over with --overwrite")
            for key in sorted(set(saved) | set(current)):
                if saved.get(key) != current.get(key):
                    raise ConfigError(
                        f"--resume: {key} was {saved.get(key)!r} in the interrupted run, now {current.get(key)!r}: use the same settings"
                    )
        return last
    if last is not None and not cfg.overwrite:
        raise OutputExistsError(
            f"{work} holds checkpoints of an interrupted run: pass --resume to continue or --overwrite to start over"
        )
    if not create or not is_main_process():
        return None  # under accelerate launch only the main process clears and prepares the folder
    marker = _marker(work) if work.is_dir() else None
    if marker is not None:
        remove_work_dir(work)  # layerswap's own: stale checkpoints go (--overwrite) or there were none
    created = not work.exists() or bool(marker and marker.get("created"))
    if work.is_dir() and any(work.iterdir()):
        raise _foreign(work)
    work.mkdir(parents=True, exist_ok=True)
    write_text_atomic(work / MARKER, json.dumps({"created": created, **_identity(work)}) + "\n")
    write_text_atomic(run_file, json.dumps(current, indent=2))
    return None


def check_resumable(checkpoint: Path) -> None:
    """A checkpoint resumes only from files that need no unpickling: weights in safetensors, and the
    optimizer, scheduler and RNG state as layerswap writes them (:mod:`layerswap.finetune.state`)."""
    from layerswap.finetune.state import STATE_FILES

    names = {p.name for p in checkpoint.iterdir()}
    weights = {"model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors"}
    if not names & weights:
        raise CheckpointError(
            f"{checkpoint} holds no safetensors weights (layerswap never unpickles a .bin or .pt): start over with --overwrite"
        )
    missing = [name for name in STATE_FILES if name not in names]
    if missing:
        pickled = sorted(n for n in names if n.endswith((".pt", ".pth")))
        what = f" (it has {pickled[0]}, a pickle layerswap never loads)" if pickled else ""
        raise CheckpointError(
            f"{checkpoint} lacks {missing[0]}{what}: it was not written by this layerswap; start over with --overwrite"
        )


def step_of(checkpoint: str | None) -> int:
    """The optimizer step a ``checkpoint-N`` folder was saved at (0 for a fresh run)."""
    return int(Path(checkpoint).name.rsplit("-", 1)[-1]) if checkpoint is not None else 0
