"""MGSM variants as data: a corrected release (or any file with MGSM's columns) replaces the test questions by path."""

from __future__ import annotations

import json

import pytest

from layerswap.errors import ConfigError, DataError
from layerswap.evaluate import api, mgsm


def _write_variant(path, data_dir, langs=("sw", "te"), n=5, fix=None):
    """An MGSM file in the ``juletxara/mgsm`` column layout built from the local release, one gold number changed."""
    with open(path, "w", encoding="utf-8") as fh:
        for lang in langs:
            for i, ex in enumerate(mgsm.load_examples(lang, data_dir=data_dir, limit=n)):
                gold = fix if (fix is not None and i == 0) else float(ex.gold)  # 18.0, as the Hub's answer_number
                fh.write(json.dumps({"question": ex.question, "answer": None, "answer_number": gold, "language": lang}, ensure_ascii=False) + "\n")
    return path


def test_variant_replaces_the_questions_by_path(tmp_path, data_dir):
    path = _write_variant(tmp_path / "mgsm_corrected.jsonl", data_dir, fix="1,234")
    release = mgsm.load_examples("sw", data_dir=data_dir, limit=5)
    variant = mgsm.load_examples("sw", data_dir=data_dir, path=path)
    assert [e.id for e in variant] == [e.id for e in release]  # same ids: the two releases pair question by question
    assert [e.question for e in variant] == [e.question for e in release]
    assert variant[0].gold == "1234" and [e.gold for e in variant[1:]] == [e.gold for e in release[1:]]
    assert len(mgsm.load_examples("te", path=path, limit=2)) == 2
    tsv = tmp_path / "variant.tsv"
    tsv.write_text("question\tanswer_number\tlanguage\nJuma ana 3.\t3\tsw\n", encoding="utf-8")
    assert mgsm.load_examples("sw", path=tsv)[0].gold == "3"


def test_variant_runs_through_evaluate(tmp_path, data_dir, tiny_llama, monkeypatch):
    from layerswap.evaluate import runner

    path = _write_variant(tmp_path / "v.jsonl", data_dir, langs=("sw",), n=3)
    seen = []
    monkeypatch.setattr(runner, "generate", lambda lm, prompts, **kw: seen.extend(prompts) or ["Jibu ni 0."] * len(prompts))
    res = api.evaluate(tiny_llama, "mgsm", "sw", data=path, data_dir=data_dir)
    assert res.summary["n"].tolist() == [3] and len(seen) == 3


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ({"question": "q", "answer_number": 3}, "lacks field 'language'"),
        ({"question": "q", "answer_number": "three", "language": "sw"}, "is not a number"),
        ({"question": "q", "answer_number": 3, "language": "xx"}, "unknown MGSM language 'xx'"),
    ],
)
def test_bad_variant_is_refused_before_the_model_loads(tmp_path, line, says):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=says):
        api.evaluate(tmp_path / "no-model-here", "mgsm", "sw", data=path)


def test_variant_without_the_language_or_with_custom(tmp_path, data_dir):
    path = _write_variant(tmp_path / "v.jsonl", data_dir, langs=("sw",), n=1)
    with pytest.raises(DataError, match="no questions whose language is 'bn'"):
        api.evaluate(tmp_path / "no-model-here", "mgsm", "sw,bn", data=path)
    with pytest.raises(ConfigError, match="run them separately"):
        api.evaluate(tmp_path / "no-model-here", "mgsm,custom", "sw", data=path)
    with pytest.raises(DataError, match=r"\.jsonl file or a \.tsv"):
        mgsm.load_examples("sw", path=tmp_path / "v.parquet")
