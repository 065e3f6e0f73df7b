"""Assemble ``benchmarks/RESULTS.md`` from the per-benchmark results in ``benchmarks/results/``.

Each benchmark script writes its own ``results/<name>.md`` with the command that produced it;
this joins them in a fixed order so RESULTS.md is never edited by hand.

    python benchmarks/collect.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["merge", "merge_nan_check", "merge_swap_final", "analysis", "evaluate", "finetune", "finetune_gemma", "sweep", "halving", "verdicts", "verdicts_early_stop", "load", "gpu_check"]

HEADER = """# Benchmark results

Every number below was measured on this project's development machine (2 CPU cores, 24 GiB RAM, no
GPU), often while other jobs shared the cores; each benchmark therefore compares contenders side by
side in one run and reports ratios (and CPU time where wall time was disturbed). Each section names
the command that produced it; rerun it and then `python benchmarks/collect.py` to refresh this file.
Synthetic checkpoints come from `benchmarks/synthetic.py` (Llama-shaped, bf16, sharded, planted deltas).
"""


def demote_headings(text: str) -> str:
    """One level down, outside code fences: each file's title becomes a section of RESULTS.md."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        out.append("#" + line if not fenced and line.startswith("#") else line)
    return "\n".join(out)


def main() -> None:
    parts = [HEADER]
    files = {p.stem: p for p in (HERE / "results").glob("*.md")}
    for name in ORDER + sorted(set(files) - set(ORDER)):
        if name in files:
            text = files[name].read_text(encoding="utf-8").strip()
            parts.append(demote_headings(text))
    (HERE / "RESULTS.md").write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    print(f"wrote {HERE / 'RESULTS.md'} from {len(files)} result files")


if __name__ == "__main__":
    main()
