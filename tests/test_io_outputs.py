"""The output guard (layerswap/io/outputs.py) and the atomic folder: inputs are sacred, nothing half-written."""

from __future__ import annotations

import errno
import json
import os
import warnings
from pathlib import Path

import pytest

from layerswap.errors import InputPathError, OutputExistsError, WriteFailedError
from layerswap.io import AtomicDir, write_provenance, write_text_atomic
from layerswap.io.outputs import check_output, check_output_file, input_paths, written_by_layerswap


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    ex = tmp_path / "ex"
    (ex / "math").mkdir(parents=True)
    (ex / "math" / "model.safetensors").write_bytes(b"weights")
    (ex / "data.jsonl").write_text("{}\n")
    return tmp_path


@pytest.mark.parametrize(
    ("out", "words"),
    [("ex/math", "is the input"), ("ex/math/merged", "lies inside the input"), ("ex", "contains the input"), ("ex/math/..", "contains the input")],
)
def test_output_overlapping_an_input_is_refused_even_with_overwrite(layout: Path, out: str, words: str):
    before = _tree(layout)
    for overwrite in (False, True):
        with pytest.raises(InputPathError, match=words):
            check_output(layout / out, [layout / "ex" / "math"], overwrite=overwrite)
    assert _tree(layout) == before


def test_links_cannot_hide_an_input(layout: Path):
    (layout / "alias").symlink_to(layout / "ex")
    with pytest.raises(InputPathError, match="is the input"):
        check_output(layout / "alias" / "math", [layout / "ex" / "math"], overwrite=True)
    with pytest.raises(InputPathError, match="lies inside the input"):
        check_output(layout / "ex" / "math" / "x", [layout / "alias" / "math"])


def test_data_file_and_spec_options_are_inputs(layout: Path):
    spec = f"{layout / 'ex' / 'data.jsonl'}?prompt=q,completion=a"
    with pytest.raises(InputPathError, match="is the input"):
        check_output(layout / "ex" / "data.jsonl", [spec], overwrite=True)
    assert input_paths(["gsm8k", None, "hf:x/y", {"a": spec}]) == [(layout / "ex" / "data.jsonl").resolve()]


def test_embedded_model_names_are_their_cache_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``--math gemma3-270m`` reads cache/models/gemma3-270m: an output inside it is refused, prepared or not."""
    from layerswap.io.embedded import DEFAULT_MODEL

    cache = tmp_path / "cache"
    monkeypatch.setenv("LAYERSWAP_CACHE", str(cache))
    folder = cache / "models" / DEFAULT_MODEL
    assert input_paths([DEFAULT_MODEL]) == [folder.resolve()]  # not prepared yet: still the folder preparing would create
    assert not cache.exists()
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert input_paths([DEFAULT_MODEL, "gsm8k"]) == [folder.resolve()]
    before = _tree(cache)
    for overwrite in (False, True):
        with pytest.raises(InputPathError, match="lies inside the input"):
            check_output(folder / "merged", [DEFAULT_MODEL, DEFAULT_MODEL], overwrite=overwrite)
    with pytest.raises(InputPathError, match="contains the input"):
        check_output(cache, {"math": DEFAULT_MODEL}, overwrite=True)
    assert _tree(cache) == before
    check_output(tmp_path / "elsewhere", [DEFAULT_MODEL])  # anywhere else is fine


def test_targets_of_a_folders_links_are_inputs(tmp_path: Path):
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "rev"
    blobs.mkdir()
    snap.mkdir(parents=True)
    (blobs / "sha").write_bytes(b"w")
    (snap / "model.safetensors").symlink_to(blobs / "sha")
    with pytest.raises(InputPathError, match="contains the input"):
        check_output(blobs, [snap], overwrite=True)


def test_overwrite_replaces_only_a_layerswap_folder_and_says_what(tmp_path: Path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(OutputExistsError, match="not written by layerswap"):
        check_output(foreign, overwrite=True)
    with pytest.raises(OutputExistsError, match="already exists"):
        check_output(foreign)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        check_output(tmp_path / "file", overwrite=True)

    ours = tmp_path / "ours"
    ours.mkdir()
    write_provenance(ours, {"kind": "merge"})
    assert written_by_layerswap(ours)["kind"] == "merge"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with AtomicDir(ours, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in ours.iterdir()) == ["new.txt"]
    assert any("replaced" in str(w.message) and "merge written by layerswap" in str(w.message) for w in caught)
    assert (foreign / "notes.txt").read_text() == "keep"


def test_an_empty_folder_may_be_overwritten_silently(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with AtomicDir(empty, overwrite=True) as tmp:
            (tmp / "a").write_text("a")
    assert (empty / "a").read_text() == "a"


def test_a_fake_provenance_is_not_enough(tmp_path: Path):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "layerswap.json").write_text(json.dumps(["not", "a", "record"]))
    with pytest.raises(OutputExistsError, match="not written by layerswap"):
        check_output(folder, overwrite=True)


def test_links_dots_and_long_names(tmp_path: Path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputPathError, match="dangling symbolic link"):
        check_output(tmp_path / "dangling")
    with pytest.raises(OutputExistsError, match="already exists"):
        check_output(tmp_path / "a" / "..")  # resolves to tmp_path, which exists
    with pytest.raises(InputPathError, match="over the file system's limit"):
        check_output(tmp_path / ("x" * 250))
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputPathError, match="which is a file"):
        check_output(tmp_path / "f" / "sub" / "out")
    assert not (tmp_path / "a").exists()


def test_unwritable_parent_is_refused_before_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(WriteFailedError, match="cannot write"):
        check_output(tmp_path / "new" / "out")
    assert list(tmp_path.iterdir()) == []


def test_parents_created_only_when_writing_and_removed_on_failure(tmp_path: Path):
    out = tmp_path / "a" / "b" / "out"
    atomic = AtomicDir(out)
    assert not (tmp_path / "a").exists()  # the check created nothing
    with pytest.raises(RuntimeError):
        with atomic as tmp:
            (tmp / "x").write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with AtomicDir(out) as tmp:
        (tmp / "x").write_text("done")
    assert (out / "x").read_text() == "done"


@pytest.mark.parametrize(
    ("code", "error"),
    [(errno.EROFS, WriteFailedError), (errno.EPERM, WriteFailedError), (errno.ENAMETOOLONG, InputPathError), (errno.ENOTDIR, InputPathError)],
)
def test_temp_folder_failure_is_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, error: type):
    out = tmp_path / "new" / "out"
    atomic = AtomicDir(out)
    real_mkdir = Path.mkdir

    def failing(self: Path, *a, **k) -> None:  # noqa: ANN002, ANN003
        if self.name.startswith(".out.tmp-"):
            raise OSError(code, os.strerror(code), str(self))
        real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", failing)
    with pytest.raises(error) as caught:
        with atomic:
            pass
    assert "\n" not in str(caught.value) and "nothing was written" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_write_text_atomic_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def full(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(WriteFailedError, match="No space left"):
        write_text_atomic(tmp_path / "r.md", "text")
    assert list(tmp_path.iterdir()) == []


def test_output_file_rules(tmp_path: Path):
    (tmp_path / "d").mkdir()
    with pytest.raises(InputPathError, match="is a folder"):
        check_output_file(tmp_path / "d")
    mine = tmp_path / "mk.yaml"
    mine.write_text("# mergekit equivalent of a layerswap swap merge\n")
    with pytest.raises(OutputExistsError, match="already exists"):
        check_output_file(mine, written_marker="# mergekit equivalent of a layerswap ")
    assert check_output_file(mine, overwrite=True, written_marker="# mergekit equivalent of a layerswap ") == mine
    (tmp_path / "notes.yaml").write_text("mine\n")
    with pytest.raises(OutputExistsError, match="not written by layerswap"):
        check_output_file(tmp_path / "notes.yaml", overwrite=True, written_marker="# mergekit")
    with pytest.raises(InputPathError, match="overlaps the output"):
        check_output_file(tmp_path / "out", outputs=[tmp_path / "out"])
    with pytest.raises(InputPathError, match="overlaps the output"):
        check_output_file(tmp_path, outputs=[tmp_path / "out"])
    assert check_output_file(tmp_path / "out" / "mk.yaml", outputs=[tmp_path / "out"]) == tmp_path / "out" / "mk.yaml"


def test_merge_api_refuses_an_input_as_output(tiny_experts, tmp_path: Path):
    from layerswap.merge import swap

    base = tiny_experts["math"]
    before = _tree(base)
    with pytest.raises(InputPathError, match="is the input"):
        swap(math=base, lang=tiny_experts["lang"], bottom=1, top=1, out=base, overwrite=True)
    with pytest.raises(InputPathError, match="lies inside the input"):
        swap(math=base, lang=tiny_experts["lang"], bottom=1, top=1, out=tmp_path / "o", emit_mergekit=base / "config.json")
    assert _tree(base) == before and not (tmp_path / "o").exists()
    # A merge written before may be replaced, and its mergekit YAML too.
    res = swap(math=base, lang=tiny_experts["lang"], bottom=1, top=1, out=tmp_path / "o", emit_mergekit=tmp_path / "mk.yaml")
    with pytest.warns(UserWarning, match="replaced"):
        swap(math=base, lang=tiny_experts["lang"], bottom=2, top=1, out=res.out, overwrite=True, emit_mergekit=tmp_path / "mk.yaml")


def test_work_dir_deleted_only_if_layerswap_created_it(tmp_path: Path):
    from layerswap.finetune.config import FinetuneConfig
    from layerswap.finetune.workdir import MARKER, check_work_dir, prepare_work_dir, remove_work_dir

    cfg = FinetuneConfig(base="b", data=["d.jsonl"], out=str(tmp_path / "out"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    with pytest.raises(OutputExistsError, match="did not create"):
        check_work_dir(foreign, tmp_path / "out", [])
    with pytest.raises(OutputExistsError, match="did not create"):
        prepare_work_dir(cfg, foreign)
    remove_work_dir(foreign)
    assert (foreign / "precious.txt").read_text() == "keep"
    with pytest.raises(InputPathError, match="overlaps the output"):
        check_work_dir(tmp_path, tmp_path / "out", [])

    new = tmp_path / "new.work"
    prepare_work_dir(cfg, new)
    assert json.loads((new / MARKER).read_text())["created"] is True  # with the folder's device and inode
    remove_work_dir(new)
    assert not new.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    check_work_dir(empty, tmp_path / "out", [])
    prepare_work_dir(cfg, empty)
    (empty / "checkpoint-x").mkdir()
    remove_work_dir(empty)
    assert empty.is_dir() and list(empty.iterdir()) == []  # adopted: emptied, kept


def test_sweep_output_checks(tiny_experts, tmp_path: Path):
    from layerswap.sweep.config import SweepConfig
    from layerswap.sweep.loop import check_sweep_output

    cfg = SweepConfig(base=str(tiny_experts["base"]), math=str(tiny_experts["math"]), lang=str(tiny_experts["lang"]), save_best=True)
    with pytest.raises(InputPathError, match="contains the input"):
        check_sweep_output(cfg, tiny_experts["math"].parent)
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="folder of something else"):
        check_sweep_output(cfg, other)
    own = tmp_path / "own"
    (own / "best-model").mkdir(parents=True)
    (own / "sweep.yaml").write_text("base: x\n")
    (own / "best-model" / "model.safetensors").write_bytes(b"someone else's")
    with pytest.raises(OutputExistsError, match="not written by layerswap"):
        check_sweep_output(cfg, own)
    write_provenance(own / "best-model", {"kind": "merge"})
    assert check_sweep_output(cfg, own) == own
    assert check_sweep_output(cfg, tmp_path / "fresh") == tmp_path / "fresh" and not (tmp_path / "fresh").exists()
