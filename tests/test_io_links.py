"""Links, locks, ownership markers and stored state (issue 28): the primitives under the catalogue's cases."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pandas as pd
import pytest

from layerswap.errors import CheckpointError, InputPathError, OutputExistsError
from layerswap.io import write_text_atomic


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"an expert's weights")
    return victim


def test_atomic_writer_never_follows_a_planted_temporary_name(tmp_path: Path):
    victim = _victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    for pid in range(os.getpid(), os.getpid() + 3):  # the guessable names of round one, for this and the next PIDs
        (out / f".sweep.yaml.tmp-{pid}").symlink_to(victim)
    write_text_atomic(out / "sweep.yaml", "a: 1\n")
    assert victim.read_bytes() == b"an expert's weights"
    assert (out / "sweep.yaml").read_text() == "a: 1\n"
    assert sorted(p.name for p in out.iterdir() if not p.is_symlink()) == ["sweep.yaml"]  # no temporary left


def test_atomic_writer_replaces_a_link_at_its_name_instead_of_writing_through_it(tmp_path: Path):
    from layerswap.figures import pyplot, save_figure

    victim = _victim(tmp_path)
    (tmp_path / "results.csv").symlink_to(victim)
    write_text_atomic(tmp_path / "results.csv", "x\n")
    assert not (tmp_path / "results.csv").is_symlink() and (tmp_path / "results.csv").read_text() == "x\n"
    (tmp_path / "fig.png").symlink_to(victim)
    fig = pyplot().figure()
    save_figure(fig, tmp_path / "fig")
    assert victim.read_bytes() == b"an expert's weights"
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "fig.svg").is_file()
    assert oct((tmp_path / "results.csv").stat().st_mode & 0o777) != oct(0o600)  # a plain file's mode, not mkstemp's


def test_a_folder_resumed_in_may_hold_no_link(tmp_path: Path):
    from layerswap.io.outputs import check_output

    sweep = tmp_path / "sw"
    (sweep / "figures").mkdir(parents=True)
    (sweep / "sweep.yaml").write_text("x\n")
    assert check_output(sweep, may_exist=True, resume_marker="sweep.yaml") == sweep
    (sweep / "figures" / "bars.png").symlink_to(_victim(tmp_path))
    with pytest.raises(InputPathError, match="holds a symbolic link"):
        check_output(sweep, may_exist=True, resume_marker="sweep.yaml")


def test_model_files_must_lie_in_their_folder_but_the_hub_cache_works(tiny_llama: Path, tmp_path: Path):
    import shutil

    from faults_models import make_hf_cache

    from layerswap.io import ModelFolder

    snap = make_hf_cache(tiny_llama, tmp_path / "models--org--tiny")
    assert len(ModelFolder(snap)) > 0
    linked = tmp_path / "linked"
    shutil.copytree(tiny_llama, linked)
    (linked / "model.safetensors").unlink()
    (linked / "model.safetensors").symlink_to(tiny_llama / "model.safetensors")
    with pytest.raises(InputPathError, match="links outside"):
        ModelFolder(linked)
    inside = tmp_path / "inside"
    shutil.copytree(tiny_llama, inside)
    (inside / "weights").mkdir()
    (inside / "model.safetensors").rename(inside / "weights" / "w.safetensors")
    (inside / "model.safetensors").symlink_to(inside / "weights" / "w.safetensors")  # a link within the folder is fine
    assert len(ModelFolder(inside)) > 0


def test_one_run_per_output_and_a_stale_lock_is_taken_over(tmp_path: Path, monkeypatch):
    from layerswap.io import lock

    monkeypatch.setenv("LAYERSWAP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    with lock.output_lock({out: "--out"}):
        with pytest.raises(OutputExistsError, match=rf"in use by another layerswap run \(PID {os.getpid()}\)"):
            with lock.output_lock({tmp_path / "." / "out": "--out"}):  # another spelling, the same folder
                pass
    assert not lock.lock_path(out).exists()  # released and removed
    lock.lock_path(out).write_text(json.dumps({"pid": 2**22 + 12345}))  # left by a run that was killed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with lock.output_lock({out: "--out"}):
            pass
    assert any("no longer running" in str(w.message) for w in caught)


def test_work_folder_marker_is_trusted_only_in_its_own_folder(tmp_path: Path):
    from layerswap.finetune import workdir

    cfg = workdir.FinetuneConfig(base="b", data="d", out=str(tmp_path / "o"))
    work = tmp_path / "o.work"
    workdir.prepare_work_dir(cfg, work)
    assert workdir._marker(work) is not None
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "notes.txt").write_text("mine")
    (copy / workdir.MARKER).write_bytes((work / workdir.MARKER).read_bytes())
    assert workdir._marker(copy) is None
    workdir.remove_work_dir(copy)
    assert (copy / "notes.txt").read_text() == "mine"
    workdir.remove_work_dir(work)
    assert not work.exists()


def test_stored_state_is_validated(tmp_path: Path):
    from layerswap.io.stored import check_rows_match_scores, read_stored_json

    fix = "delete it"
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(CheckpointError, match="is a FIFO"):  # returns at once: never waits for a writer
        read_stored_json(tmp_path / "fifo.json", root=tmp_path, fix=fix)
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(CheckpointError, match="is a folder"):
        read_stored_json(tmp_path / "dir.json", root=tmp_path, fix=fix)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(CheckpointError, match="JSON list"):
        read_stored_json(tmp_path / "list.json", root=tmp_path, fix=fix)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ok.json").write_text("{}")
    (tmp_path / "outside").symlink_to(tmp_path / "sub")
    with pytest.raises(CheckpointError, match="outside"):
        read_stored_json(tmp_path / "outside" / "ok.json", root=tmp_path / "own", fix=fix)
    scores = pd.DataFrame(
        {
            "task": ["proxy"] * 2,
            "lang": ["sw"] * 2,
            "id": ["0", "1"],
            "score": [-30.0, -29.8],
            "num": [None] * 2,
            "den": [None] * 2,
        }
    )
    row = {"candidate": "math", "task": "proxy", "language": "sw", "metric": "gold_logprob", "value": -29.9, "n": 2}
    check_rows_match_scores([row], scores, what="candidate math", fix=fix)
    with pytest.raises(CheckpointError, match="does not match its scores"):
        check_rows_match_scores([{**row, "value": 70.1}], scores, what="candidate math", fix=fix)


def test_demo_figures_replace_a_planted_link(tmp_path: Path):
    from layerswap.pipeline.outputs import PUBLISHED, publish_figures

    run, dest = tmp_path / "run", tmp_path / "figs"
    src_rel, name = next(iter(PUBLISHED.items()))
    (run / src_rel).parent.mkdir(parents=True)
    (run / src_rel).with_suffix(".png").write_bytes(b"\x89PNG new figure")
    dest.mkdir()
    victim = _victim(tmp_path)
    (dest / name).with_suffix(".png").symlink_to(victim)  # --figures FIGS/demo_*.png linked to the base's weights
    publish_figures(run, dest)
    assert victim.read_bytes() == b"an expert's weights"
    assert (dest / name).with_suffix(".png").read_bytes() == b"\x89PNG new figure"


def test_a_full_disk_keeps_the_previous_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch):
    import errno

    from layerswap.errors import WriteFailedError
    from layerswap.figures import pyplot, save_figure

    (tmp_path / "results.csv").write_text("previous\n")
    (tmp_path / "fig.png").write_bytes(b"previous figure")

    def full(*_a):  # noqa: ANN002, ANN202
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteFailedError, match="No space left on device"):
        write_text_atomic(tmp_path / "results.csv", "new\n")
    with pytest.raises(OSError):
        save_figure(pyplot().figure(), tmp_path / "fig")
    assert (tmp_path / "results.csv").read_text() == "previous\n"
    assert (tmp_path / "fig.png").read_bytes() == b"previous figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "results.csv"]
