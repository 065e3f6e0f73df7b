"""Language fidelity: the share of answers (and of their chain-of-thought tokens) in the prompt's language."""

from __future__ import annotations

import pytest

from layerswap.evaluate import api, example_scores, fidelity, mgsm
from layerswap.evaluate.scores import fidelity_scores

SENTENCES = {
    "sw": "Juma alinunua machungwa matatu sokoni na akampa dada yake mawili.",
    "bn": "রহিম বাজার থেকে তিনটি কমলা কিনে তার বোনকে দুটি দিল।",
    "te": "రాము మార్కెట్ నుండి మూడు నారింజలు కొని తన చెల్లికి రెండు ఇచ్చాడు.",
    "ja": "太郎は市場でオレンジを三つ買って、妹に二つあげました。",
    "zh": "小明在市场买了三个橙子，给了妹妹两个。",
    "th": "สมชายซื้อส้มสามลูกที่ตลาดและให้น้องสาวสองลูก",
    "en": "John bought three oranges at the market and gave two to his sister.",
}


def words(text: str) -> int:
    return len(text.split()) or 1


@pytest.mark.parametrize("lang", sorted(SENTENCES))
def test_identifier_knows_the_target_scripts(lang):
    assert fidelity.identifier()(SENTENCES[lang]) == lang


def test_fidelity_of_one_answer():
    sw, en = SENTENCES["sw"], SENTENCES["en"]
    assert fidelity.fidelity(f"{sw}\n{sw} Jibu ni 1.", "sw", words) == {"answer_lang": "sw", "in_lang": True, "cot_in_lang": 1.0}
    mixed = fidelity.fidelity(f"{sw}\n3 x 4 = 12\n{en}", "sw", words)  # the formula line belongs to no language
    assert mixed["cot_in_lang"] == pytest.approx(words(sw) / (words(sw) + words(en)))
    assert fidelity.fidelity(f"{en} {en}", "sw", words)["in_lang"] is False
    assert fidelity.fidelity("18", "sw", words) == {"answer_lang": None, "in_lang": False, "cot_in_lang": 0.0}
    assert fidelity.fidelity("", "sw", words)["cot_in_lang"] == 0.0
    assert fidelity.segments("一二。三四！ 3 x 4 = 12. Juma ana 3.") == ["一二。", "三四！", "Juma ana 3."]


def test_every_generative_row_reports_fidelity_with_its_interval(data_dir, tiny_llama, monkeypatch):
    from layerswap.evaluate import runner

    answers = [SENTENCES["sw"] + " Jibu ni 3.", SENTENCES["en"] + " The answer is 3.", "3", SENTENCES["sw"] + "\n" + SENTENCES["en"]]
    monkeypatch.setattr(runner, "generate", lambda lm, prompts, **kw: answers[: len(prompts)])
    res = api.evaluate(tiny_llama, "mgsm", "sw", limit=4, data_dir=data_dir)
    [row] = res.summary.to_dict("records")
    assert row["lang_fidelity"] == pytest.approx(2 / 4)
    assert 0 < row["lang_fidelity_ci_low"] < 0.5 < row["lang_fidelity_ci_high"] < 1
    assert 1 / 4 < row["cot_fidelity"] < 3 / 4 and row["cot_fidelity_ci_low"] < row["cot_fidelity"] < row["cot_fidelity_ci_high"]
    assert [r["answer_lang"] for r in res.records][:3] == ["sw", "en", None]
    scores = fidelity_scores(res, "mgsm", "lang_fidelity")  # paired by the same ids as the headline
    assert scores["score"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert scores["id"].tolist() == example_scores(res, "mgsm")["id"].tolist() == [e.id for e in mgsm.load_examples("sw", data_dir=data_dir, limit=4)]
    assert fidelity_scores(res, "mgsm", "cot_fidelity")["score"].iloc[0] == 1.0
    with pytest.raises(Exception, match="unknown fidelity metric"):
        fidelity_scores(res, "mgsm", "fidelity")
