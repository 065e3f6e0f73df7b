"""Safety, round two (issue 28): links inside folders, tampered stored state, one run per output, ownership.

- **Links** (class 1): a model or adapter folder whose file links outside it is refused before it is read
  (Hugging Face cache links keep working: ``tests/faults_models.py``); a folder layerswap resumes in
  (a sweep's, a fine-tune's work folder) that holds a link anywhere is refused before anything is written
  through it or read from it (a figure linked to an expert's weights, a planted ``.sweep.yaml.tmp-PID``,
  a ``checkpoint-N`` linked to a folder elsewhere).
- **Stored state** (class 2): a fine-tune's ``run_config.json`` cut, retyped, a folder or a FIFO, and a
  checkpoint whose optimizer state or weights are only pickles: one line, nothing unpickled.
- **One run per output** (class 6): a second fine-tune into an ``--out`` or work folder in use names the PID.
- **Ownership** (class 8): a hand-written or copied ``.layerswap-work`` marker is not trusted; ``models
  prepare`` never replaces a folder it did not create; names of 300 bytes, paths of 5,000 and a
  ``max_shard_size`` of 400 nines are one line.

The victims of links live under ``env.root``, which the catalogue snapshots with the SHA-256 of every file.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from faults_catalogue import Case, Env, _copy

ST = "model.safetensors"
#: Locks held by a case's setup (the "other run"): released when the next case sets up.
_HELD: list[int] = []


def build(env: Env) -> None:
    """Folders with links out of them, the victims links point to, and a checkpoint as layerswap writes it."""
    d = _copy(env.math, env.p("link-weights"))
    (d / ST).unlink()
    (d / ST).symlink_to(env.math / ST)  # another model's weights
    d = _copy(env.math, env.p("link-environ"))
    (d / "tokenizer_config.json").unlink(missing_ok=True)
    (d / "tokenizer_config.json").symlink_to("/proc/self/environ")
    d = _copy(env.lora, env.p("link-adapter"))
    (d / "adapter_model.safetensors").unlink()
    (d / "adapter_model.safetensors").symlink_to(env.lora / "adapter_model.safetensors")
    victim = env.p("victim-folder")  # a folder a planted link leads to: it must come out untouched
    victim.mkdir()
    shutil.copy(env.math / ST, victim / ST)
    (victim / "trainer_state.json").write_text(json.dumps({"global_step": 2}), encoding="utf-8")
    template = env.p("ckpt-template")  # what a layerswap checkpoint holds (its contents are not read by these cases)
    _copy(env.base, template)
    (template / "trainer_state.json").write_text(json.dumps({"global_step": 2}), encoding="utf-8")
    for name in ("optimizer.safetensors", "optimizer.json", "scheduler.json"):
        (template / name).write_text("{}", encoding="utf-8")
    _build_contradictions(env)
    _build_sweep(env)


#: A finished sweep over the experts of tests/faults_outputs.py (2 candidates, proxy, 2 examples), or
#: None where the data folder is missing; its stored state is copied and tampered with per case.
SWEEP_DONE = "sweep-done"


def _sweep_yaml(env: Env) -> str:
    from layerswap.io import resolve_data_dir

    data = resolve_data_dir()
    return (
        f"base: {_ex(env, 'base')}\nmath: {_ex(env, 'math')}\nlang: {_ex(env, 'lang')}\nlimit: 2\ntasks: [proxy]\n"
        f"data_dir: {data}\ncandidates: {{grid: {{bottom: [1], top: [1], transition: [0]}}, baselines: [base]}}\n"
    )


def _build_sweep(env: Env) -> None:
    import pytest

    from layerswap.io import resolve_data_dir

    if resolve_data_dir() is None:
        return
    env.sandbox = env.root  # the YAML is written beside the folders, as a user would
    config = env.yaml("sweep-done.yaml", _sweep_yaml(env))
    from layerswap.cli import main

    with pytest.raises(SystemExit) as done:
        main(["sweep", config, "--out", str(env.p(SWEEP_DONE))])
    assert done.value.code == 0, "the sweep the stored-state cases resume did not finish"


def _build_contradictions(env: Env) -> None:
    """Inputs that contradict themselves (classes 4, 5 and 7)."""
    from faults_catalogue import _vocab, _write_sd

    d = _copy(env.math, env.p("trailing-bytes"))
    with open(d / ST, "ab") as fh:
        fh.write(b"\0" * 16)
    for name, field, delta in (("config-hidden-lies", "hidden_size", 32), ("config-vocab-lies", "vocab_size", 8)):
        d = _copy(env.math, env.p(name))
        cfg = json.loads((d / "config.json").read_text())
        cfg[field] += delta
        (d / "config.json").write_text(json.dumps(cfg))

    def drop_head(sd: dict) -> None:
        sd.pop("lm_head.weight")

    _write_sd(env.p("no-head"), env.math, drop_head, config={"tie_word_embeddings": False})
    rows = _vocab(env.math) - 16

    def shrink_vocab(sd: dict) -> None:
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            sd[name] = sd[name][:rows].clone()

    _write_sd(env.p("small-vocab"), env.math, shrink_vocab, config={"vocab_size": rows})  # its tokenizer has 16 more tokens
    d = _copy(env.math, env.p("tokenizer-auto-map"))
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.update(auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]}, tokenizer_class="EvilTokenizer")
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    (d / "evil.py").write_text("raise SystemExit('the folder's own code ran')\n")

    for name, template in (
        ("chat-template-raises", "{{ raise_exception('this template refuses every conversation') }}"),
        ("chat-template-loops", "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"),
    ):
        d = _copy(env.math, env.p(name))
        cfg = json.loads((d / "tokenizer_config.json").read_text())
        cfg["chat_template"] = template
        (d / "tokenizer_config.json").write_text(json.dumps(cfg))
        (d / "chat_template.jinja").unlink(missing_ok=True)

    def huge(sd: dict) -> None:
        sd["model.layers.3.mlp.up_proj.weight"][0, 0] = 2e5  # finite in float32, past float16's 65504 even when averaged

    _write_sd(env.p("huge-weight"), env.math, huge)
    d = _copy(env.lora, env.p("adapter-relative-base"))
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "benchmarks"  # a folder of the working directory (the repository), not beside the adapter
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    (env.p("quoted-tab.tsv")).write_text('question\tanswer\n"How much is 2\t+ 2?"\t4\n', encoding="utf-8")


def _ex(env: Env, name: str) -> str:
    return str(env.p("ex") / name)  # the experts' folder of tests/faults_outputs.py


def _finetune(env: Env, *extra: str) -> list[str]:
    return ["finetune", "--base", _ex(env, "base"), "--data", _ex(env, "data.jsonl"), "--steps", "1", "--out", env.out, *extra]


def _sweep(env: Env) -> list[str]:
    body = f"base: {_ex(env, 'base')}\nmath: {_ex(env, 'math')}\nlang: {_ex(env, 'lang')}\nlimit: 1\n"
    return ["sweep", env.yaml("sweep.yaml", body), "--out", str(env.sandbox / "sw")]


def _sweep_folder_with_link(name: str, target: str) -> object:
    def setup(env: Env) -> None:
        folder = env.sandbox / "sw"
        (folder / Path(name).parent).mkdir(parents=True, exist_ok=True)
        (folder / "sweep.yaml").write_text("a sweep's folder\n", encoding="utf-8")
        (folder / name.replace("PID", str(os.getpid()))).symlink_to(env.p(target))

    return setup


def _work(env: Env) -> Path:
    return env.sandbox / "out.work"


def _checkpoint(env: Env, *, drop: tuple[str, ...] = (), add: dict[str, bytes] | None = None) -> Path:
    ckpt = _copy(env.p("ckpt-template"), _work(env) / "checkpoint-2")
    for name in drop:
        (ckpt / name).unlink()
    for name, data in (add or {}).items():
        (ckpt / name).write_bytes(data)
    return ckpt


def _work_link(name: str, target: str):  # noqa: ANN202
    def setup(env: Env) -> None:
        _work(env).mkdir()
        if name != "checkpoint-2":
            _checkpoint(env)
        (_work(env) / name).symlink_to(env.p(target))

    return setup


def _run_config(kind: str):  # noqa: ANN202
    def setup(env: Env) -> None:
        _checkpoint(env)
        run = _work(env) / "run_config.json"
        if kind == "cut":
            run.write_text('{"base": "ex/base", "data": ["ex/da', encoding="utf-8")
        elif kind == "list":
            run.write_text("[]", encoding="utf-8")
        elif kind == "folder":
            run.mkdir()
        elif kind == "fifo":
            os.mkfifo(run)

    return setup


PICKLE = b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94."  # an (empty dict) pickle: it must never be loaded


def _pickled_state(env: Env) -> None:
    _checkpoint(
        env,
        drop=("optimizer.safetensors", "optimizer.json", "scheduler.json"),
        add={"optimizer.pt": PICKLE, "scheduler.pt": PICKLE},
    )


def _pickled_weights(env: Env) -> None:
    _checkpoint(env, drop=(ST,), add={"pytorch_model.bin": PICKLE})


def _hold_lock(where: str):  # noqa: ANN202
    """Take the lock of ``where`` (``out`` or a ``--work-dir``) as another run would, and keep it during the case."""

    def setup(env: Env) -> None:
        from layerswap.io.lock import _acquire

        while _HELD:
            os.close(_HELD.pop())
        folder = Path(env.out) if where == "out" else env.sandbox / where
        _HELD.append(_acquire(folder, "--out")[0])

    return setup


def _forged_marker(identity: bool):  # noqa: ANN202
    def setup(env: Env) -> None:
        mine = env.sandbox / "mine"
        mine.mkdir()
        (mine / "notes.txt").write_text("a user's own files\n", encoding="utf-8")
        marker: dict[str, object] = {"created": True}
        if identity:  # copied from another folder layerswap made: its identity is not this folder's
            st = os.stat(env.sandbox)
            marker.update(device=st.st_dev, inode=st.st_ino)
        (mine / ".layerswap-work").write_text(json.dumps(marker), encoding="utf-8")

    return setup


def _user_cache_folder(env: Env) -> None:
    folder = env.sandbox / "cache" / "models" / "gemma3-270m"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("a user's folder that happens to sit where the model would go\n", encoding="utf-8")


def _swap(env: Env, out: str) -> list[str]:
    return ["swap", "--math", str(env.math), "--lang", str(env.lang), "--bottom", "1", "--top", "1", "--out", out]


def _long_line(env: Env) -> None:
    with open(env.sandbox / "one-line.txt", "wb") as fh:  # 17 MiB without a newline
        for _ in range(17):
            fh.write(b"abc " * (1 << 18))


def _evaluate(model: str | Path, env: Env) -> list[str]:
    return ["evaluate", str(model), "--task", "custom", "--data", _ex(env, "custom.jsonl"), "--langs", "sw", "--limit", "1",
            "--max-new-tokens", "2", "--device", "cpu", "--out", env.out]  # fmt: skip


def _tampered_sweep(edit):  # noqa: ANN001, ANN202
    """Copy the finished sweep into the sandbox and break its stored state with ``edit(candidates folder)``."""

    def setup(env: Env) -> None:
        import pytest

        if not env.p(SWEEP_DONE).is_dir():
            pytest.skip("needs the data folder (../shared/data or LAYERSWAP_DATA_DIR) for the finished sweep")
        folder = shutil.copytree(env.p(SWEEP_DONE), env.sandbox / "sw")
        edit(Path(folder) / "candidates")

    return setup


def _edit_record(change):  # noqa: ANN001, ANN202
    def edit(candidates: Path) -> None:
        record = json.loads((candidates / "base.json").read_text())
        (candidates / "base.json").write_text(json.dumps(change(record)))

    return edit


def _raise_value(record: dict) -> dict:
    record["rows"][0]["value"] += 100
    return record


def _retype_value(record: dict) -> dict:
    record["rows"][0]["value"] = "high"
    return record


def _drop_rows(record: dict) -> dict:
    del record["rows"]
    return record


def _replace(name: str, kind: str):  # noqa: ANN202
    def edit(candidates: Path) -> None:
        (candidates / name).unlink()
        if kind == "fifo":
            os.mkfifo(candidates / name)
        elif kind == "folder":
            (candidates / name).mkdir()
        else:
            (candidates / name).write_text(kind, encoding="utf-8")

    return edit


def _resume_sweep(env: Env) -> list[str]:
    return ["sweep", env.yaml("sweep.yaml", _sweep_yaml(env)), "--out", str(env.sandbox / "sw")]


STORED = "delete"


def _broken_data(sub: str, name: str, data: bytes | None):  # noqa: ANN202
    """A copy of one folder of the real data set in the sandbox, with one file broken (or cut to ``data``)."""

    def setup(env: Env) -> None:
        import pytest

        from layerswap.io import resolve_data_dir

        real = resolve_data_dir()
        if real is None or not (real / sub).is_dir():
            pytest.skip("needs the data folder (../shared/data or LAYERSWAP_DATA_DIR)")
        folder = shutil.copytree(real / sub, env.sandbox / "data" / sub)
        file = Path(folder) / name
        file.write_bytes(data if data is not None else file.read_bytes()[:100])

    return setup


def _boundaries(kind: str):  # noqa: ANN202
    def setup(env: Env) -> None:
        path = env.sandbox / "boundaries.yaml"
        if kind == "yaml":
            path.write_text("candidates: [\n  {bottom: 1, top: 1\n", encoding="utf-8")
        elif kind == "folder":
            path.mkdir()
        else:
            os.mkfifo(path)

    return setup


def _sweep_boundaries(env: Env) -> list[str]:
    body = f"base: {env.base}\nmath: {env.math}\nlang: {env.lang}\nlimit: 2\ncandidates: {{boundaries: {env.sandbox / 'boundaries.yaml'}}}\n"
    return ["sweep", env.yaml("sweep.yaml", body), "--out", env.out]


NINES = "9" * 400
LINK_OUT = ("InputPathError", "links outside", "copy the file into the folder")
LINK_IN = ("InputPathError", "holds a symbolic link", "delete the link")
STATE = "start over with --overwrite"

CASES: list[Case] = [
    # --- class 1: reads outside the folder given, writes through links inside layerswap's own folders
    Case(
        "weights-link-outside",
        "inspect FOLDER (model.safetensors -> another model's file)",
        lambda e: ["inspect", str(e.p("link-weights"))],
        *LINK_OUT,
    ),
    Case(
        "tokenizer-link-environ",
        "inspect FOLDER (tokenizer_config.json -> /proc/self/environ)",
        lambda e: ["inspect", str(e.p("link-environ"))],
        *LINK_OUT,
    ),
    Case(
        "swap-reads-linked-tokenizer",
        "swap --math FOLDER (tokenizer_config.json -> /proc/self/environ) ...",
        lambda e: [
            "swap",
            "--math",
            str(e.p("link-environ")),
            "--lang",
            str(e.lang),
            "--bottom",
            "1",
            "--top",
            "1",
            "--out",
            e.out,
        ],
        *LINK_OUT,
    ),
    Case(
        "adapter-link-outside",
        "swap --math ADAPTER (adapter_model.safetensors -> another adapter's) --base BASE",
        lambda e: [
            "swap",
            "--math",
            str(e.p("link-adapter")),
            "--lang",
            str(e.lora),
            "--base",
            str(e.base),
            "--bottom",
            "1",
            "--top",
            "1",
            "--out",
            e.out,
        ],
        *LINK_OUT,
    ),
    Case(
        "sweep-figure-link",
        "sweep cfg.yaml --out SW (SW/figures/best_vs_baselines_proxy.png -> an expert's weights)",
        _sweep,
        *LINK_IN,
        setup=_sweep_folder_with_link("figures/best_vs_baselines_proxy.png", "victim-folder/model.safetensors"),
    ),
    Case(
        "sweep-candidate-link",
        "sweep cfg.yaml --out SW (SW/candidates/math.json -> a file elsewhere)",
        _sweep,
        *LINK_IN,
        setup=_sweep_folder_with_link("candidates/math.json", "victim-folder/trainer_state.json"),
    ),
    Case(
        "sweep-planted-temp-link",
        "sweep cfg.yaml --out SW (SW/.sweep.yaml.tmp-PID -> a data file)",
        _sweep,
        *LINK_IN,
        setup=_sweep_folder_with_link(".sweep.yaml.tmp-PID", "victim-folder/trainer_state.json"),
    ),
    Case(
        "finetune-checkpoint-link",
        "finetune ... --resume (OUT.work/checkpoint-2 -> a folder elsewhere)",
        lambda e: _finetune(e, "--resume"),
        *LINK_IN,
        setup=_work_link("checkpoint-2", "victim-folder"),
    ),
    Case(
        "finetune-log-link",
        "finetune ... --resume (OUT.work/loss_running.csv -> a file elsewhere)",
        lambda e: _finetune(e, "--resume"),
        *LINK_IN,
        setup=_work_link("loss_running.csv", "victim-folder/trainer_state.json"),
    ),
    # --- class 2: a fine-tune's stored state, validated; nothing unpickled
    Case(
        "finetune-run-config-cut",
        "finetune ... --resume (OUT.work/run_config.json cut)",
        lambda e: _finetune(e, "--resume"),
        "CheckpointError",
        "is not valid json",
        STATE,
        setup=_run_config("cut"),
    ),
    Case(
        "finetune-run-config-retyped",
        "finetune ... --resume (OUT.work/run_config.json is [])",
        lambda e: _finetune(e, "--resume"),
        "CheckpointError",
        "holds a json list",
        STATE,
        setup=_run_config("list"),
    ),
    Case(
        "finetune-run-config-folder",
        "finetune ... --resume (OUT.work/run_config.json is a folder)",
        lambda e: _finetune(e, "--resume"),
        "CheckpointError",
        "is a folder",
        STATE,
        setup=_run_config("folder"),
    ),
    Case(
        "finetune-run-config-fifo",
        "finetune ... --resume (OUT.work/run_config.json is a FIFO)",
        lambda e: _finetune(e, "--resume"),
        "CheckpointError",
        "is a fifo",
        STATE,
        setup=_run_config("fifo"),
    ),
    Case(
        "finetune-resume-pickled-state",
        "finetune ... --resume (checkpoint holds optimizer.pt, scheduler.pt)",
        lambda e: _finetune(e, "--resume"),
        "CheckpointError",
        "a pickle layerswap never loads",
        STATE,
        setup=_pickled_state,
    ),
    Case(
        "finetune-resume-pickled-weights",
        "finetune ... --resume (checkpoint weights only pytorch_model.bin)",
        lambda e: _finetune(e, "--resume"),
        "CheckpointError",
        "no safetensors weights",
        STATE,
        setup=_pickled_weights,
    ),
    # --- classes 4, 5 and 7: inputs that contradict themselves, or would be read whole
    Case("safetensors-trailing-bytes", "inspect FOLDER (16 bytes after the last tensor)", lambda e: ["inspect", str(e.p("trailing-bytes"))], "CheckpointError", "bytes after its last tensor", "re-download or re-save"),
    Case("config-hidden-size-contradicts-weights", "inspect FOLDER (config.json hidden_size 64, weights 32)", lambda e: ["inspect", str(e.p("config-hidden-lies"))], "CheckpointError", "says hidden_size", "fix config.json"),
    Case("config-vocab-contradicts-weights", "swap --math FOLDER (config.json vocab_size 8 more than the embeddings) ...", lambda e: ["swap", "--math", str(e.p("config-vocab-lies")), "--lang", str(e.lang), "--bottom", "1", "--top", "1", "--out", e.out], "CheckpointError", "says vocab_size", "fix config.json"),
    Case("donor-from-another-model", "merge cfg.yaml (donor: a model with another hidden size)", lambda e: e.merge_yaml(f"method: linear\nexperts: {{math: {e.math}, lang: {e.lang}}}\ndonor: {e.p('other-hidden')}\n"), "IncompatibleModelsError", "its config.json says hidden_size", "donor: base or a label"),
    Case("merge-overflows-output-dtype", "merge cfg.yaml (linear, an expert weight 2e5, dtype: F16)", lambda e: e.merge_yaml(f"method: linear\nexperts: {{math: {e.p('huge-weight')}, lang: {e.lang}}}\ndtype: F16\n"), "NumericalError", "overflows F16 when written", "write a wider dtype"),
    Case("evaluate-tokenizer-auto-map", "evaluate MODEL (tokenizer_config.json auto_map to its own evil.py)", lambda e: _evaluate(e.p("tokenizer-auto-map"), e), "CheckpointError", "needs its own python code (auto_map)", "use a built-in tokenizer"),
    Case("finetune-tokenizer-auto-map", "finetune --base MODEL (tokenizer_config.json auto_map to its own evil.py)", lambda e: ["finetune", "--base", str(e.p("tokenizer-auto-map")), "--data", _ex(e, "data.jsonl"), "--steps", "1", "--out", e.out], "CheckpointError", "needs its own python code (auto_map)", "pass --tokenizer with a built-in tokenizer"),
    Case("chat-template-raises", "finetune --base MODEL (its chat template raises) --chat-template auto", lambda e: ["finetune", "--base", str(e.p("chat-template-raises")), "--data", _ex(e, "data.jsonl"), "--steps", "1", "--out", e.out], "DataError", "chat template fails on an example", "pass chat_template=no"),
    Case("chat-template-loops", "finetune --base MODEL (its chat template loops for 10^10 steps) --chat-template auto", lambda e: ["finetune", "--base", str(e.p("chat-template-loops")), "--data", _ex(e, "data.jsonl"), "--steps", "1", "--out", e.out], "DataError", "did not finish rendering one example in 10 s", "pass chat_template=no"),
    Case("evaluate-missing-head", "evaluate MODEL (untied, lm_head.weight missing)", lambda e: _evaluate(e.p("no-head"), e), "CheckpointError", "lacks tensor 'lm_head.weight'", "re-save the complete model"),
    Case("evaluate-tokenizer-bigger-than-embeddings", "evaluate MODEL (tokenizer 16 tokens past the embeddings)", lambda e: _evaluate(e.p("small-vocab"), e), "IncompatibleModelsError", "tokens but the model's embeddings have", "use the model's own tokenizer"),
    Case("finetune-tokenizer-bigger-than-embeddings", "finetune --base MODEL (tokenizer 16 tokens past the embeddings)", lambda e: ["finetune", "--base", str(e.p("small-vocab")), "--data", _ex(e, "data.jsonl"), "--steps", "1", "--out", e.out], "IncompatibleModelsError", "tokens but the model's embeddings have", "use the model's own tokenizer"),
    Case("adapter-relative-base", "evaluate ADAPTER (base_model_name_or_path: benchmarks, a folder of the working directory)", lambda e: _evaluate(e.p("adapter-relative-base"), e), "InputPathError", "not beside the adapter", "pass --base"),
    Case("tsv-quoted-tab", 'evaluate MODEL --task custom --data q.tsv (a tab inside "...")', lambda e: [*_evaluate(e.base, e)[:4], "--data", str(e.p("quoted-tab.tsv")), *_evaluate(e.base, e)[6:]], "DataError", "has 3 tab-separated fields where the file has 2", "remove the tab inside a field"),
    Case("data-file-one-huge-line", "finetune --data one-line.txt (17 MiB, no newline) --steps 1", lambda e: ["finetune", "--base", _ex(e, "base"), "--data", str(e.sandbox / "one-line.txt"), "--steps", "1", "--out", e.out], "DataError", "is over 16 mib", "split it into lines", setup=_long_line),
    Case("evaluate-language-twice", "evaluate MODEL --task custom --langs sw,sw", lambda e: [*_evaluate(e.base, e)[:6], "--langs", "sw,sw", *_evaluate(e.base, e)[8:]], "ConfigError", "names 'sw' twice", "list each once"),
    Case("evaluate-same-task-twice", "evaluate MODEL --task proxy,proxy --langs sw", lambda e: ["evaluate", str(e.base), "--task", "proxy,proxy", "--langs", "sw", "--out", e.out], "ConfigError", "names 'proxy' twice", "list each once"),
    Case("sweep-language-twice", "sweep cfg.yaml (languages: [sw, sw])", lambda e: ["sweep", e.yaml("sweep.yaml", f"base: {e.base}\nmath: {e.math}\nlang: {e.lang}\nlanguages: [sw, sw]\n"), "--out", e.out], "ConfigError", "names 'sw' twice", "list each once"),
    Case("sweep-task-twice", "sweep cfg.yaml (tasks: [proxy, proxy])", lambda e: ["sweep", e.yaml("sweep.yaml", f"base: {e.base}\nmath: {e.math}\nlang: {e.lang}\ntasks: [proxy, proxy]\n"), "--out", e.out], "ConfigError", "names 'proxy' twice", "list each once"),
    Case("sweep-stored-value-raised", "sweep cfg.yaml --out SW (candidates/base.json: rows[0].value raised by 100, scores untouched)", _resume_sweep, "CheckpointError", "does not match its scores", STORED, setup=_tampered_sweep(_edit_record(_raise_value))),
    Case("sweep-stored-value-not-a-number", "sweep cfg.yaml --out SW (candidates/base.json: a value 'high')", _resume_sweep, "CheckpointError", "not a number", STORED, setup=_tampered_sweep(_edit_record(_retype_value))),
    Case("sweep-stored-no-rows", "sweep cfg.yaml --out SW (candidates/base.json without rows)", _resume_sweep, "CheckpointError", "has no result rows", STORED, setup=_tampered_sweep(_edit_record(_drop_rows))),
    Case("sweep-stored-empty-list", "sweep cfg.yaml --out SW (candidates/base.json is [])", _resume_sweep, "CheckpointError", "holds a json list", STORED, setup=_tampered_sweep(_replace("base.json", "[]"))),
    Case("sweep-stored-fifo", "sweep cfg.yaml --out SW (candidates/base.json is a FIFO)", _resume_sweep, "CheckpointError", "is a fifo", STORED, setup=_tampered_sweep(_replace("base.json", "fifo"))),
    Case("sweep-stored-folder", "sweep cfg.yaml --out SW (candidates/base.json is a folder)", _resume_sweep, "CheckpointError", "is a folder", STORED, setup=_tampered_sweep(_replace("base.json", "folder"))),
    Case("sweep-scores-fifo", "sweep cfg.yaml --out SW (candidates/base.scores.csv is a FIFO)", _resume_sweep, "CheckpointError", "is a fifo", STORED, setup=_tampered_sweep(_replace("base.scores.csv", "fifo"))),
    Case("ntrex-document-ids-not-utf8", "finetune --data ntrex:sw --data-dir DATA (ntrex128/DOCUMENT_IDS.tsv not UTF-8)", lambda e: ["finetune", "--base", _ex(e, "base"), "--data", "ntrex:sw", "--data-dir", str(e.sandbox / "data"), "--steps", "1", "--out", e.out], "DataError", "line 1 is not utf-8", "convert the file to utf-8", setup=_broken_data("ntrex128", "DOCUMENT_IDS.tsv", b"\xff\xfe doc \x80\n" * 3)),
    Case("mgsm-exemplars-cut", "evaluate MODEL --task mgsm --shots 2 --data-dir DATA (mgsm/mgsm_exemplars.json cut)", lambda e: ["evaluate", str(e.base), "--task", "mgsm", "--langs", "sw", "--shots", "2", "--limit", "1", "--data-dir", str(e.sandbox / "data"), "--out", e.out], "DataError", "is not valid json", "restore the file", setup=_broken_data("mgsm", "mgsm_exemplars.json", None)),
    Case("sweep-boundaries-not-yaml", "sweep cfg.yaml (candidates.boundaries: a file that is not YAML)", _sweep_boundaries, "DataError", "is not valid yaml", "fix it", setup=_boundaries("yaml")),
    Case("sweep-boundaries-folder", "sweep cfg.yaml (candidates.boundaries: a folder)", _sweep_boundaries, "InputPathError", "is a folder", "pass a", setup=_boundaries("folder")),
    Case("sweep-boundaries-fifo", "sweep cfg.yaml (candidates.boundaries: a FIFO)", _sweep_boundaries, "InputPathError", "not a regular file", "pass a", setup=_boundaries("fifo")),
    # --- class 6: one run per output
    Case(
        "finetune-out-in-use",
        "finetune ... --out OUT (another run holds OUT)",
        _finetune,
        "OutputExistsError",
        "is in use by another layerswap run (pid",
        "wait for it to end",
        setup=_hold_lock("out"),
    ),
    Case(
        "finetune-work-dir-in-use",
        "finetune ... --work-dir W (another run holds W)",
        lambda e: _finetune(e, "--work-dir", str(e.sandbox / "w")),
        "OutputExistsError",
        "is in use by another layerswap run (pid",
        "wait for it to end",
        setup=_hold_lock("w"),
    ),
    # --- class 8: ownership markers checked, not trusted; the round-one leftovers
    Case(
        "finetune-forged-work-marker",
        "finetune ... --work-dir MINE --overwrite (MINE has notes.txt and a hand-written .layerswap-work)",
        lambda e: _finetune(e, "--work-dir", str(e.sandbox / "mine"), "--overwrite"),
        "OutputExistsError",
        "layerswap did not create",
        "choose a new or empty folder",
        setup=_forged_marker(False),
    ),
    Case(
        "finetune-copied-work-marker",
        "finetune ... --work-dir MINE (a .layerswap-work copied from another folder)",
        lambda e: _finetune(e, "--work-dir", str(e.sandbox / "mine")),
        "OutputExistsError",
        "layerswap did not create",
        "choose a new or empty folder",
        setup=_forged_marker(True),
    ),
    Case(
        "models-prepare-foreign-folder",
        "models prepare gemma3-270m ($LAYERSWAP_CACHE/models/gemma3-270m is a user's folder)",
        lambda e: ["models", "prepare", "gemma3-270m"],
        "OutputExistsError",
        "is not a model layerswap prepared",
        "move it away",
        setup=_user_cache_folder,
        environ=lambda e: {"LAYERSWAP_CACHE": str(e.sandbox / "cache")},
    ),
    Case(
        "out-name-300",
        "swap ... --out x{300 chars}",
        lambda e: _swap(e, str(e.sandbox / ("x" * 300))),
        "InputPathError",
        "300 bytes, over the file system's limit",
        "choose a shorter name",
    ),
    Case(
        "out-path-5000",
        "swap ... --out y{200}/y{200}/... (5,000 chars)",
        lambda e: _swap(e, str(e.sandbox / "/".join(["y" * 200] * 25))),
        "InputPathError",
        "over the system's limit",
        "choose a shorter path",
    ),
    Case(
        "max-shard-size-400-nines",
        "merge cfg.yaml (max_shard_size: 9 x 400)",
        lambda e: e.merge_yaml(f"method: linear\nexperts: {{math: {e.math}, lang: {e.lang}}}\nmax_shard_size: {NINES}\n"),
        "ConfigError",
        "larger than any file can be",
        "write e.g. 5gb",
    ),
    Case(
        "max-shard-size-400-nines-gb",
        "merge cfg.yaml (max_shard_size: '9 x 400 GB')",
        lambda e: e.merge_yaml(f"method: linear\nexperts: {{math: {e.math}, lang: {e.lang}}}\nmax_shard_size: '{NINES}GB'\n"),
        "ConfigError",
        "cannot read size",
        "write e.g. 5gb",
    ),
]
