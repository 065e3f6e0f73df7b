"""Checkpoints of a running fine-tune (``OUT.work``) and resuming an interrupted one.

The work folder holds the Trainer's ``checkpoint-N`` folders, the running loss log and
``run_config.json`` (the settings that must not change on ``--resume``). A stale folder is never
reused silently: ``--resume`` continues it, ``--overwrite`` starts over, anything else is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from layerswap.errors import ConfigError, InputPathError, OutputExistsError
from layerswap.finetune.config import FinetuneConfig
from layerswap.io.outputs import check_location, check_not_input, input_paths, resolved

#: The file that says layerswap created a work folder (and so may delete it): ``{"created": true}``,
#: or ``false`` for an empty folder the user made, which is emptied but kept.
MARKER = ".layerswap-work"
#: Config keys that may change between an interrupted run and its ``--resume``.
RESUME_FREE = {"resume", "overwrite", "quiet", "steps", "save_steps", "save_total_limit", "keep_checkpoints", "log_steps"}


def default_work_dir(out: Path) -> Path:
    """Checkpoints and the running loss log live beside the output: ``<out>.work``."""
    return out.parent / f"{out.name}.work"


def work_dir_of(cfg: FinetuneConfig, out: Path) -> Path:
    """``--work-dir``, else :func:`default_work_dir`."""
    return Path(cfg.work_dir).expanduser() if cfg.work_dir else default_work_dir(out)


def last_complete_checkpoint(work: Path) -> str | None:
    """The newest ``checkpoint-N`` whose ``trainer_state.json`` (the Trainer writes it last) parses.

    The Trainer writes checkpoints in place, so a run killed while saving leaves an incomplete
    newest checkpoint; resuming must skip it rather than fail on it."""
    best: tuple[int, Path] | None = None
    for folder in work.glob("checkpoint-*"):
        step = folder.name.rsplit("-", 1)[-1]
        if not step.isdigit():
            continue
        try:
            json.loads((folder / "trainer_state.json").read_text())
        except (OSError, ValueError):
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
    if not resume and not (work / MARKER).is_file() and any(work.iterdir()):
        raise OutputExistsError(
            f"--work-dir {work} is a folder layerswap did not create (no {MARKER}), and layerswap deletes only "
            "work folders it created: choose a new or empty folder"
        )


def _marker(work: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((work / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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
        if run_file.exists():
            saved = json.loads(run_file.read_text())
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
    if not create or int(os.environ.get("RANK", "0")) != 0:
        return None  # under accelerate launch only the main process clears and prepares the folder
    marker = _marker(work) if work.is_dir() else None
    if marker is not None:
        remove_work_dir(work)  # layerswap's own: stale checkpoints go (--overwrite) or there were none
    created = not work.exists() or bool(marker and marker.get("created"))
    if work.is_dir() and any(work.iterdir()):
        raise OutputExistsError(
            f"--work-dir {work} is a folder layerswap did not create (no {MARKER}), and layerswap deletes only "
            "work folders it created: choose a new or empty folder"
        )
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text(json.dumps({"created": created}) + "\n", encoding="utf-8")
    run_file.write_text(json.dumps(current, indent=2))
    return None


def step_of(checkpoint: str | None) -> int:
    """The optimizer step a ``checkpoint-N`` folder was saved at (0 for a fresh run)."""
    return int(Path(checkpoint).name.rsplit("-", 1)[-1]) if checkpoint is not None else 0
