"""Fast tests of the evaluate wing: extraction and prompts vs lm-eval, runner, log-likelihoods, CLI,
and the task registry."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import require_module

from layerswap.errors import ConfigError, DataError
from layerswap.evaluate import api, loglik, mgsm
from layerswap.evaluate.answers import FALLBACK, Extractor, exact_match, flexible_extractor, normalise_number, strict_extractor
from layerswap.evaluate.generation import Example
from layerswap.evaluate.runner import as_loaded, common_prefix_length, first_stop, generate, load_model
from layerswap.evaluate.tasks import TASKS, TaskSpec, get_task, higher_is_better, register


def strip_stop(text: str, stop) -> str:  # noqa: ANN001
    """``text`` cut as the runner cuts a generation (lm-eval's post-processing)."""
    cut = first_stop(text, stop)
    return text if cut == -1 else text[:cut]


def need_lm_eval() -> None:
    """Skip, saying why, where lm-eval is absent; CI (``LAYERSWAP_REQUIRE_ALL``) fails instead, since it installs it."""
    require_module(
        "lm_eval",
        "lm-eval is not installed (pip install -e '.[dev]'): the parity checks against lm-evaluation-harness cannot run",
    )


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run ~50x faster on one thread than on two contended ones (OpenMP spinning)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Outputs in several scripts, with the strict pattern of their language.
STRICT_CASES = [
    ("sw", "Mikebe 2 ni mipira 6. 5 + 6 = 11. Jibu ni 2,125.", "2,125."),
    ("bn", "রজারের 5টি বল ছিল। The answer is 11।", "11"),
    ("te", "మొత్తం 5 + 6 = 11. సమాధానం 11.", "11."),
    ("th", "5 + 6 = 11 คำตอบคือ 1,000", "1,000"),
    ("ja", "5+6=11。答えは2,125です。", "2,125"),
    ("zh", "5 + 6 = 11。答案是 -42。", "-42"),
    ("ru", "5 + 6 = 11. Ответ — 11.", "11."),
    ("de", "5 + 6 = 11. Die Antwort lautet 11.", "11."),
    ("fr", "La réponse est 3.", "3."),
    ("sw", "Hakuna jibu hapa.", FALLBACK),
    ("ja", "答えは 11 です。", FALLBACK),  # the space breaks lm-eval's Japanese pattern too
]
FLEXIBLE_CASES = [
    ("He pays $80,000 and then 2,125 more.", "2,125"),
    ("5 + 6 = 11.\n", "11."),
    ("jibu ni 7", "7"),
    ("hakuna namba", FALLBACK),
    ("", FALLBACK),
]


@pytest.mark.parametrize(("lang", "text", "want"), STRICT_CASES)
def test_strict_pattern(lang, text, want):
    assert strict_extractor(mgsm.MGSM_LANGUAGES[lang].regex)(text) == want


@pytest.mark.parametrize(("text", "want"), FLEXIBLE_CASES)
def test_flexible_extract(text, want):
    assert flexible_extractor()(text) == want


def test_extraction_matches_lm_eval_filters():
    need_lm_eval()
    from lm_eval.filters.extraction import RegexFilter, WhitespaceFilter

    texts = [t for _, t, _ in STRICT_CASES] + [t for t, _ in FLEXIBLE_CASES]
    for lang, words in mgsm.MGSM_LANGUAGES.items():
        ours, theirs = strict_extractor(words.regex), RegexFilter(regex_pattern=words.regex)
        assert [ours(t) for t in texts] == [r[0] for r in theirs.apply([[t] for t in texts], None)], lang
    flex = RegexFilter(regex_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)
    assert [flexible_extractor()(t) for t in texts] == [r[0] for r in flex.apply([[t] for t in texts], None)]
    ws = WhitespaceFilter()
    assert [Extractor("remove_whitespace")(t) for t in texts] == [r[0] for r in ws.apply([[t] for t in texts], None)]


def test_exact_match_semantics():
    assert exact_match("2,125", "2125") and exact_match("$18.", "18") and not exact_match("19", "18")
    assert normalise_number("2,125") == "2125" and normalise_number("$1,000.") == "1000" and normalise_number("12.0") == "12"
    need_lm_eval()
    from lm_eval.api.metrics import exact_match_hf_evaluate

    preds, golds = ["2,125", "18.", "-5", "[invalid]", "1.000"], ["2125", "18", "5", "3", "1000"]
    for p, g in zip(preds, golds, strict=True):
        want = exact_match_hf_evaluate([p], [g], ignore_case=True, ignore_punctuation=True)["exact_match"] == 1.0
        assert exact_match(p, g) == want, (p, g)


def test_score_empty_output_is_wrong():
    task = mgsm.make_task("sw", "native_cot")
    assert task.score("", "5")["correct"] is False
    assert task.score(None, "5")["answer"] == FALLBACK
    scored = task.score(" 2 + 3 = 5. Jibu ni 5.", "5")
    assert scored["correct"] and scored["extracted"]["strict-match"] == "5."
    # strict fails -> flexible fallback decides the headline answer
    assert task.score(" 2 + 3 = 5", "5")["correct"]


def test_stop_strings_cut_at_first():
    assert strip_stop("abc Swali: x </s>", ("Swali:", "</s>")) == "abc "
    assert strip_stop("abc </s> Swali:", ("Swali:", "</s>")) == "abc "
    assert strip_stop("abc", ("Swali:",)) == "abc" and first_stop("abc", ("Swali:", "")) == -1


def test_make_task_errors():
    with pytest.raises(ConfigError, match="0..8"):
        mgsm.make_task("sw", shots=9, exemplars=[])
    with pytest.raises(DataError, match="valid languages are bn, de"):
        mgsm.make_task("xx")
    with pytest.raises(ConfigError, match="direct, native_cot"):
        mgsm.make_task("sw", "cot")


def test_templates_are_lm_eval_words():
    t = mgsm.make_task("ja", "native_cot")
    assert t.prompt("Q") == "問題： Q\nステップごとの答え:" and t.stop[0] == "問題："
    d = mgsm.make_task("de", "direct")
    assert d.prompt("Q") == "Frage: Q\nAntwort:" and d.answer_order == ("flexible-extract",)
    assert mgsm.make_task("bn", "native_cot").extractors[0].pattern == r"The answer is (\-?[0-9\.\,]+)"


# --- against lm-eval itself, on the real MGSM files ------------------------------------------


@pytest.fixture(scope="module")
def lm_eval_requests(data_dir, tmp_path_factory):
    """lm-eval's rendered prompts and stop strings for our local-data MGSM tasks."""
    need_lm_eval()
    from lm_eval.tasks import TaskManager, get_task_dict

    from layerswap.evaluate.lm_eval_config import write_lm_eval_tasks

    out = tmp_path_factory.mktemp("lmeval")
    langs = ["sw", "bn", "ja", "fr", "zh"]
    names = {fmt: write_lm_eval_tasks(out, langs, fmt, data_dir=data_dir) for fmt in mgsm.FORMATS}
    tm = TaskManager(include_path=str(out))
    got = {}
    for fmt, task_names in names.items():
        tasks = get_task_dict(task_names, tm)
        for lang, name in zip(langs, task_names, strict=True):
            for shots in (0, 2):
                task = tasks[name]
                task.set_config(key="num_fewshot", value=shots)
                task.build_all_requests(limit=2, rank=0, world_size=1)
                got[(fmt, lang, shots)] = [inst.args for inst in sorted(task.instances, key=lambda i: i.doc_id)]
    return got


@pytest.mark.parametrize("fmt", mgsm.FORMATS)
def test_prompts_identical_to_lm_eval(lm_eval_requests, data_dir, fmt):
    for lang in ["sw", "bn", "ja", "fr", "zh"]:
        examples = mgsm.load_examples(lang, data_dir=data_dir, limit=2)
        for shots in (0, 2):
            task = mgsm.make_task(lang, fmt, shots=shots, exemplars=mgsm.load_exemplars(lang, data_dir=data_dir))
            theirs = lm_eval_requests[(fmt, lang, shots)]
            assert [task.prompt(e.question) for e in examples] == [a[0] for a in theirs], (fmt, lang, shots)
            assert list(task.stop) == list(theirs[0][1]["until"]), (fmt, lang)


def _fake_mgsm_output(prompt: str, gold_by_question: dict[str, str]) -> str:
    """A fixed "model": right on about 2 in 5 prompts (by a hash of the prompt), else off by one."""
    import hashlib

    gold = gold_by_question[prompt.split("Swali: ")[-1].split("\n")[0]]
    right = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 5 < 2
    return f" Hatua kwa hatua. Jibu ni {gold if right else int(gold) + 1}."


def test_mgsm_stderr_equals_lm_eval(data_dir, tiny_lm, tmp_path, monkeypatch):
    """The same outputs scored by lm-eval's MGSM task and by ours: same exact match and the same
    ``exact_match_stderr`` (lm-eval's ``mean_stderr``: sample sd / sqrt(n)) to 3 decimals."""
    need_lm_eval()
    from lm_eval import evaluator
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager

    from layerswap.evaluate import runner
    from layerswap.evaluate.lm_eval_config import write_lm_eval_tasks

    gold = {ex.question: ex.gold for ex in mgsm.load_examples("sw", data_dir=data_dir)}

    class Fixed(LM):
        def generate_until(self, requests):
            return [_fake_mgsm_output(r.args[0], gold) for r in requests]

        def loglikelihood(self, requests):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

    names = write_lm_eval_tasks(tmp_path, ["sw"], "native_cot", data_dir=data_dir)
    theirs = evaluator.simple_evaluate(
        model=Fixed(), tasks=names, task_manager=TaskManager(include_path=str(tmp_path)), num_fewshot=0, bootstrap_iters=100
    )["results"][names[0]]
    monkeypatch.setattr(runner, "generate", lambda lm, prompts, **kw: [_fake_mgsm_output(p, gold) for p in prompts])
    ours = api.evaluate_mgsm(tiny_lm, ["sw"], data_dir=data_dir)
    row = ours.summary.iloc[0]
    assert theirs["sample_len"] == row["n"] == 250
    assert row["exact_match"] == pytest.approx(theirs["exact_match,strict-match"])
    assert 0.2 < row["exact_match"] < 0.6  # a real spread of right and wrong answers
    assert round(row["stderr"], 3) == round(theirs["exact_match_stderr,strict-match"], 3)
    assert row["stderr"] == pytest.approx(theirs["exact_match_stderr,strict-match"], rel=1e-9)


def test_mgsm_rows_and_example_scores(data_dir, tiny_lm, monkeypatch):
    from layerswap.evaluate import example_scores, runner

    gold = {ex.question: ex.gold for ex in mgsm.load_examples("sw", data_dir=data_dir)}
    monkeypatch.setattr(runner, "generate", lambda lm, prompts, **kw: [_fake_mgsm_output(p, gold) for p in prompts])
    res = api.evaluate_mgsm(tiny_lm, ["sw"], limit=40, data_dir=data_dir)
    assert_uncertainty_from_example_scores(res, "mgsm")
    scores = example_scores(res, TASKS["mgsm"])  # a result or its records; a name or a spec
    assert scores.equals(example_scores(res.records, "mgsm")) and set(scores["score"]) == {0.0, 1.0}
    assert list(scores["id"]) == [r["id"] for r in res.records] and example_scores(res, "flores").empty


def test_fill_uncertainty_for_a_plugin_task():
    """A task registered from outside that reports only its metric gets n, stderr and the interval
    from its records (the built-in tasks fill their rows themselves; filled rows stay untouched)."""
    from layerswap.evaluate.result import EvalResult
    from layerswap.evaluate.scores import fill_uncertainty

    spec = TaskSpec(name="toy", summary="a toy", run=lambda lm, req: None, metric="toy_score", score_field="score")
    records = [{"task": "toy", "lang": lang, "id": f"{lang}-{i}", "score": float(i % 2)} for lang in ("sw", "bn") for i in range(5)]
    rows = [{"task": "toy", "lang": lang, "toy_score": 0.4, "seconds": 1.0} for lang in ("sw", "bn")]
    res = fill_uncertainty(EvalResult.of(records, rows), spec)
    assert list(res.summary.columns) == ["task", "lang", "toy_score", "stderr", "ci_low", "ci_high", "seconds", "n"]
    assert list(res.summary["n"]) == [5, 5]
    assert res.summary["stderr"].iloc[0] == pytest.approx(math.sqrt(0.3 / 5))  # sd^2 = (2*0.36 + 3*0.16) / 4
    before = res.summary.copy()
    assert fill_uncertainty(res, spec).summary.equals(before)


def test_format_summary_prints_each_task_with_its_interval():
    import pandas as pd

    from layerswap.evaluate.result import counts_as_ints, format_summary

    rows = [
        {"task": "mgsm", "format": "native_cot", "lang": "sw", "shots": 0, "n": 250, "exact_match": 0.5, "stderr": 0.0317,
         "ci_low": 0.438, "ci_high": 0.562, "seconds": 9.0},
        {"task": "flores", "lang": "sw", "n": 1012, "seconds": 4.0, "bits_per_byte": 1.2, "stderr": 0.01, "ci_low": 1.18,
         "ci_high": 1.22, "tokens_per_byte": 0.3},
    ]
    wide = counts_as_ints(pd.DataFrame(rows))  # as evaluate makes it
    one = format_summary(pd.DataFrame(rows[:1]))  # one task: as before
    assert one.splitlines()[0].split() == ["task", "format", "lang", "shots", "n", "exact_match", "stderr", "ci_low", "ci_high", "seconds"]
    mgsm_block, flores_block = format_summary(wide).split("\n\n")
    assert mgsm_block == one
    assert flores_block.splitlines()[0].split() == ["task", "lang", "n", "bits_per_byte", "stderr", "ci_low", "ci_high", "seconds", "tokens_per_byte"]
    assert "1.2000  0.0100  1.1800   1.2200" in flores_block


def test_mgsm_data(data_dir):
    en = mgsm.load_examples("en", data_dir=data_dir)
    assert len(en) == 250 and any(e.gold == "2125" for e in en)  # "2,125" in the file
    ex = mgsm.load_exemplars("te", data_dir=data_dir)
    assert len(ex) == 8 and ex[0].number == "11"


# --- runner on tiny models --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm(tiny_llama):
    return load_model(tiny_llama, device="cpu")


@pytest.fixture(scope="module")
def tiny_gemma_lm(tiny_gemma3):
    return load_model(tiny_gemma3, device="cpu")


PROMPTS = [
    "Question: Janet has 3 apples and buys 2 more. How many apples does she have? Answer:",
    "Swali: Juma ana machungwa 4.",
    "The quick brown fox jumps over the lazy dog 0123456789. Habari za asubuhi. Leo ni siku nzuri sana kwa kusoma hesabu na lugha. Jibu:",
    "2 + 3 =",
    "Habari",
]


@pytest.mark.parametrize("which", ["tiny_lm", "tiny_gemma_lm"])
def test_batched_equals_unbatched(which, request):
    lm = request.getfixturevalue(which)
    one = generate(lm, PROMPTS, max_new_tokens=12, batch_size=1, share_prefix=False)
    assert all(one)
    assert generate(lm, PROMPTS, max_new_tokens=12, batch_size=3) == one
    assert generate(lm, PROMPTS, max_new_tokens=12, batch_size=8) == one


@pytest.mark.parametrize("which", ["tiny_lm", "tiny_gemma_lm"])
def test_shared_prefix_equals_full_prompts(which, request):
    """Few-shot prompts share a long prefix; the gemma3 fixture's 64-token sliding window is crossed."""
    lm = request.getfixturevalue(which)
    shots = " ".join(PROMPTS[:3]) * 2 + "\n\n"
    prompts = [shots + p for p in PROMPTS]
    ids = [lm.tokenizer(p)["input_ids"] for p in prompts]
    assert common_prefix_length(ids) >= 64
    full = generate(lm, prompts, max_new_tokens=10, batch_size=1, share_prefix=False)
    assert generate(lm, prompts, max_new_tokens=10, batch_size=4, share_prefix=True) == full
    assert generate(lm, prompts, max_new_tokens=10, batch_size=1, share_prefix=True) == full


def test_generate_matches_hf_generate(tiny_gemma_lm):
    lm = tiny_gemma_lm
    for prompt in PROMPTS[:3]:
        enc = lm.tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            seq = lm.model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
        want = lm.tokenizer.decode(seq[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        assert generate(lm, [prompt], max_new_tokens=8, batch_size=1) == [want]


@pytest.fixture
def screen_all(monkeypatch):
    """Screen the output layer however small the vocabulary and however many candidates a step keeps."""
    from layerswap.evaluate import greedy_head

    monkeypatch.setattr(greedy_head, "SCREEN_MAX_CANDIDATES", 1.0)


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gemma3"])
def test_screened_head_is_the_full_argmax(which, request, screen_all):
    """The screened output layer returns the float32 argmax, first index on ties, near ties included."""
    from transformers import AutoModelForCausalLM

    from layerswap.evaluate.greedy_head import GreedyHead

    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(which)).eval()
    w = model.get_output_embeddings().weight
    with torch.no_grad():
        w[7] = w[3]  # an exact tie: generate's argmax takes token 3
        w[11] = w[5] * (1 + 1e-6)  # a near tie within float32 rounding
    head = GreedyHead(model, screen=True)
    assert head.screening
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(64, 1, w.shape[1], generator=gen) * 4
    hidden[:8, 0] = w[3] * 5  # rows whose winner is the tied pair
    hidden[8:16, 0] = w[5] * 5
    with torch.inference_mode():
        want = model.get_output_embeddings()(hidden)[:, -1].argmax(-1)
        got = head(hidden)
        one_by_one = torch.cat([head(hidden[i : i + 1]) for i in range(len(hidden))])
    assert torch.equal(got, want) and torch.equal(one_by_one, want)
    assert head.stats["steps"] > head.stats["full"]  # most steps were settled by the screen
    assert not GreedyHead(model, screen=None).screening  # a small vocabulary takes the full layer by default


@pytest.mark.parametrize("which", ["tiny_lm", "tiny_gemma_lm"])
def test_screened_generate_matches_hf_generate(which, request, screen_all):
    """At batch size 1 the screened loop gives ``model.generate``'s tokens, cut at stop strings and at max_new_tokens."""
    from layerswap.evaluate.greedy_head import greedy_head

    lm = request.getfixturevalue(which)
    for prompt in PROMPTS[:4]:
        enc = lm.tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            seq = lm.model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
        want = lm.tokenizer.decode(seq[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        assert generate(lm, [prompt], max_new_tokens=12, batch_size=1, screen=True) == [want]
        short = lm.tokenizer.decode(seq[0, enc["input_ids"].shape[1] : enc["input_ids"].shape[1] + 5], skip_special_tokens=True)
        assert generate(lm, [prompt], max_new_tokens=5, batch_size=1, screen=True) == [short]
        stop = (want[3:6],) if len(want) > 6 else ("\x00",)
        assert generate(lm, [prompt], stop=stop, max_new_tokens=12, batch_size=1, screen=True) == [strip_stop(want, stop)]
    assert greedy_head(lm, screen=True).screening
    full = generate(lm, PROMPTS, max_new_tokens=12, batch_size=1, screen=False)
    assert generate(lm, PROMPTS, max_new_tokens=12, batch_size=4, screen=True) == full


def test_greedy_head_rebuilt_when_weights_change(tiny_llama, screen_all):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerswap.evaluate.greedy_head import greedy_head

    lm = as_loaded(AutoModelForCausalLM.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama))
    head = greedy_head(lm, screen=True)
    assert greedy_head(lm, screen=True) is head
    with torch.no_grad():
        lm.model.get_output_embeddings().weight.mul_(2)
    assert greedy_head(lm, screen=True) is not head
    assert not greedy_head(lm, screen=False).screening


def test_stop_strings_per_sequence(tiny_lm):
    full = generate(tiny_lm, PROMPTS, max_new_tokens=16, batch_size=1)
    stop = (full[0][2:5], full[3][4:6])  # one stop string found in row 0, another in row 3
    cut = generate(tiny_lm, PROMPTS, stop=stop, max_new_tokens=16, batch_size=5)
    assert cut == [strip_stop(t, stop) for t in full]
    assert cut[0] == full[0][: full[0].find(stop[0])]
    assert len(cut[0]) < len(full[0])


def test_empty_generation_and_eos(tiny_lm, tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = tiny_lm.tokenizer(PROMPTS[0])["input_ids"]
    with torch.inference_mode():
        token = int(tiny_lm.model(torch.tensor([first])).logits[0, -1].argmax())
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.generation_config.eos_token_id = [token, 2]  # the first greedy token ends the sequence
    lm = as_loaded(model, AutoTokenizer.from_pretrained(tiny_llama))
    assert generate(lm, [PROMPTS[0]], max_new_tokens=5) == [""]
    task = mgsm.make_task("en", "native_cot")
    res = api.run_generation_task(lm, task, [Example("e0", PROMPTS[0], "5")], max_new_tokens=5)
    assert res.summary["empty"].iloc[0] == 1 and res.summary["exact_match"].iloc[0] == 0.0


def test_missing_pad_token_uses_eos(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.pad_token = None
    lm = as_loaded(AutoModelForCausalLM.from_pretrained(tiny_llama), tok)
    assert lm.tokenizer.pad_token_id == lm.tokenizer.eos_token_id
    assert len(generate(lm, PROMPTS[:3], max_new_tokens=4, batch_size=3)) == 3


def test_lora_adapter_loads_on_base(tiny_lora, tiny_lm):
    lm = load_model(tiny_lora, device="cpu")
    assert lm.info["base"] is not None
    assert len(generate(lm, PROMPTS[:2], max_new_tokens=4)) == 2


# --- log-likelihoods ----------------------------------------------------------------------------


def test_bits_per_byte_formula():
    assert bits_per_byte_close(loglik.bits_per_byte(-math.log(2) * 8, 8), 1.0)
    assert bits_per_byte_close(loglik.bits_per_byte(-math.log(2) * 3, 12), 0.25)


def bits_per_byte_close(a, b):
    return abs(a - b) < 1e-12


def _manual_logprob(lm, ids):
    with torch.inference_mode():
        logp = torch.log_softmax(lm.model(torch.tensor([ids])).logits[0].float(), -1)
    return float(sum(logp[i - 1, ids[i]] for i in range(1, len(ids))))


def test_score_tokens_matches_full_logits(tiny_gemma_lm):
    lm = tiny_gemma_lm
    texts = ["Habari za asubuhi.", "The quick brown fox jumps over the lazy dog 0123456789.", "2 + 3 = 5"]
    seqs = [loglik.text_tokens(lm, t) for t in texts]
    scored = loglik.score_tokens(lm, seqs, batch_size=3)
    for (ids, n), s in zip(seqs, scored, strict=True):
        assert n == len(ids) - 1 and s.n_tokens == n
        assert abs(s.logprob - _manual_logprob(lm, ids)) < 1e-3


def assert_uncertainty_from_example_scores(result, name):
    """Each summary row of task ``name`` carries n, stderr, ci_low, ci_high of its headline metric,
    recomputed here from ``example_scores`` with layerswap.stats (the sweep pairs the same scores)."""
    from layerswap import stats
    from layerswap.evaluate import example_scores

    spec = get_task(name)
    scores = example_scores(result.records, name)
    assert list(scores.columns) == ["task", "lang", "id", "score"] + (["num", "den"] if spec.ratio_fields else [])
    assert not scores.duplicated(["task", "lang", "id"]).any()
    rows = result.summary[result.summary["task"] == name]
    assert len(rows) and {"n", "stderr", "ci_low", "ci_high"} <= set(rows.columns)
    cols = list(rows.columns)
    assert cols.index(spec.metric) + 1 == cols.index("stderr")  # shown right after the metric
    for _, row in rows.iterrows():
        sub = scores[scores["lang"] == row["lang"]]
        assert row["n"] == len(sub) > 0
        if spec.ratio_fields:
            est = stats.ratio_estimate(sub["num"], sub["den"], n_resamples=2000, seed=0)
        else:
            est = stats.mean_estimate(sub["score"])
        assert row[spec.metric] == pytest.approx(est.value)
        got = (row["stderr"], row["ci_low"], row["ci_high"])
        assert got == pytest.approx((est.stderr, est.low, est.high), nan_ok=True), name
        assert row["ci_low"] <= row[spec.metric] <= row["ci_high"]


def test_flores_bits_per_byte(tiny_lm, tmp_path):
    folder = tmp_path / "flores200" / "devtest"
    folder.mkdir(parents=True)
    lines = ["Habari za asubuhi.", '"Leo ni ""siku"" nzuri."', "Jibu ni 42."]
    (folder / "swh_Latn.devtest").write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = api.evaluate_flores(tiny_lm, ["sw"], data_dir=tmp_path)
    clean = ["Habari za asubuhi.", 'Leo ni "siku" nzuri.', "Jibu ni 42."]
    total = sum(_manual_logprob(tiny_lm, loglik.text_tokens(tiny_lm, t)[0]) for t in clean)
    want = -total / (math.log(2) * sum(len(t.encode()) for t in clean))
    assert abs(res.summary["bits_per_byte"].iloc[0] - want) < 1e-4
    assert [r["text"] for r in res.records] == clean
    spec = get_task("flores")
    assert set(spec.metrics) <= set(res.summary) and spec.score_field in res.records[0]
    assert spec.ratio_fields == ("bits", "bytes") and res.records[0]["bits"] == pytest.approx(-res.records[0]["logprob"] / math.log(2))
    assert_uncertainty_from_example_scores(res, "flores")
    assert res.summary["stderr"].iloc[0] > 0


def test_sib200_and_proxy(tiny_lm, tmp_path, data_dir):
    folder = tmp_path / "sib200" / "swh_Latn"
    folder.mkdir(parents=True)
    (folder / "test.tsv").write_text(
        "index_id\tcategory\ttext\n1\tsports\tTimu ilishinda.\n2\thealth\tDaktari alikuja.\n", encoding="utf-8"
    )
    res = api.evaluate_sib200(tiny_lm, ["sw"], data_dir=tmp_path)
    assert res.summary["n"].iloc[0] == 2 and 0.0 <= res.summary["accuracy"].iloc[0] <= 1.0
    proxy = api.evaluate_proxy(tiny_lm, ["sw"], limit=2, data_dir=data_dir)
    assert proxy.records[0]["continuation"] == " Jibu ni 18." and proxy.summary["gold_logprob"].iloc[0] < 0
    for name, result in (("sib200", res), ("proxy", proxy)):
        spec = get_task(name)
        assert set(spec.metrics) <= set(result.summary) and spec.score_field in result.records[0], name
        assert_uncertainty_from_example_scores(result, name)


def test_non_finite_scores_warn_and_keep_the_results(tiny_llama, tmp_path, data_dir):
    """An expert with one Inf weight scores NaN/Inf: each row keeps its metric as computed, with NaN
    stderr and interval and one warning naming task, language and count, instead of an exception."""
    from layerswap.io import write_tensors
    from layerswap.testing import state_dict_of

    tensors = dict(state_dict_of(tiny_llama))
    name = next(n for n in tensors if "layers.1.mlp.down_proj" in n)
    tensors[name] = tensors[name].clone()
    tensors[name][0, 0] = float("inf")
    broken = write_tensors(tmp_path / "inf", tensors, donor=tiny_llama)
    lm = load_model(broken, device="cpu")
    for name, run in (("proxy", api.evaluate_proxy), ("flores", api.evaluate_flores)):
        with pytest.warns(RuntimeWarning, match=rf"{name} sw\w*: 3 of 3 examples have a NaN or infinite score"):
            res = run(lm, ["sw"], limit=3, data_dir=data_dir)
        row = res.summary.iloc[0]
        assert row["n"] == 3 and len(res.records) == 3, name
        assert all(math.isnan(row[c]) for c in ("stderr", "ci_low", "ci_high")), name
        assert not math.isfinite(row[get_task(name).metric]), name  # the metric as computed, not hidden


def test_non_finite_synthetic_records_fill_nan_uncertainty():
    """fill_uncertainty (plugin tasks) and the column helpers on synthetic scores with NaN and +-Inf."""
    import pandas as pd

    from layerswap.evaluate import fill_uncertainty
    from layerswap.evaluate.result import EvalResult
    from layerswap.evaluate.uncertainty import mean_columns, ratio_columns

    with pytest.warns(RuntimeWarning, match="toy xx: 2 of 4 examples"):
        cols = mean_columns([1.0, float("inf"), float("nan"), 2.0], task="toy", lang="xx")
    assert all(math.isnan(v) for v in cols.values())
    with pytest.warns(RuntimeWarning, match="flores sw: 1 of 3 examples"):
        cols = ratio_columns([1.0, 2.0, float("-inf")], [10, 10, 10], task="flores", lang="sw")
    assert all(math.isnan(v) for v in cols.values())
    assert mean_columns([1.0, 0.0, 1.0])["stderr"] > 0  # finite scores: as before
    records = [{"task": "proxy", "lang": "sw", "id": str(i), "logprob": v} for i, v in enumerate([-1.0, -float("inf"), -2.0])]
    result = EvalResult.of(records, [{"task": "proxy", "lang": "sw", "gold_logprob": -float("inf")}])
    with pytest.warns(RuntimeWarning, match="proxy sw: 1 of 3 examples"):
        fill_uncertainty(result, "proxy")
    row = result.summary.iloc[0]
    assert row["n"] == 3 and pd.isna(row["stderr"]) and pd.isna(row["ci_low"]) and pd.isna(row["ci_high"])


# --- custom data, package entry, CLI ---------------------------------------------------------


def test_custom_missing_field_names_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"q": "2+3?", "a": "5"}\n{"q": "4+4?"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2 lacks field 'a'"):
        api.load_custom(path, question_field="q", answer_field="a")
    tsv = tmp_path / "q.tsv"
    tsv.write_text("q\ta\n2+3?\t#### 2,125\n", encoding="utf-8")
    assert api.load_custom(tsv, question_field="q", answer_field="a")[0].gold == "2125"


def test_package_level_evaluate_is_lazy_and_callable():
    import layerswap

    assert callable(layerswap.evaluate)


def _cli(argv, capsys):
    from layerswap.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr()


def test_cli_errors(tiny_llama, tmp_path, capsys, data_dir):
    out = str(tmp_path / "o")
    code, io = _cli(["evaluate", str(tiny_llama), "--task", "mmlu", "--out", out], capsys)
    assert code == 6 and "valid tasks are mgsm" in io.err
    code, io = _cli(["evaluate", str(tiny_llama), "--langs", "sw,xx", "--out", out], capsys)
    assert code == 7 and "valid languages are" in io.err
    code, io = _cli(["evaluate", str(tiny_llama), "--shots", "9", "--out", out], capsys)
    assert code == 6 and "0..8" in io.err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "1+1?", "a": 2}\n{"a": 3}\n', encoding="utf-8")
    code, io = _cli(_custom_argv(tiny_llama, bad, out), capsys)
    assert code == 7 and "line 2" in io.err and not Path(out).exists()


def _custom_argv(model: Path, data: Path, out: Path | str, *options: str) -> list[str]:
    """``layerswap evaluate MODEL --task custom`` on ``data`` with fields q and a, in Swahili."""
    return ["evaluate", str(model), "--task", "custom", "--data", str(data), "--question-field", "q", "--answer-field", "a", "--lang", "sw", *options, "--out", str(out)]


def test_cli_custom_writes_outputs(tiny_llama, tmp_path, capsys):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"q": f"{i} + 1 = ?", "a": str(i + 1)}) + "\n" for i in range(3)), encoding="utf-8")
    out = tmp_path / "run"
    argv = _custom_argv(tiny_llama, data, out, "--max-new-tokens", "4", "--batch-size", "2")
    code, io = _cli(argv, capsys)
    assert code == 0, io.err
    records = [json.loads(x) for x in (out / "examples.jsonl").read_text().splitlines()]
    assert len(records) == 3 and {"prompt", "output", "answer", "gold", "correct"} <= set(records[0])
    assert records[0]["prompt"].startswith("Swali: 0 + 1 = ?\nJibu la Hatua kwa Hatua:")
    assert (out / "summary.csv").exists() and (out / "layerswap.json").exists()
    assert "custom" in io.out
    spec = get_task("custom")
    header = (out / "summary.csv").read_text().splitlines()[0].split(",")
    assert spec.score_field in records[0] and spec.metric in header
    assert header[header.index("exact_match") + 1 : header.index("exact_match") + 4] == ["stderr", "ci_low", "ci_high"]
    assert "stderr" in io.out and "ci_low" in io.out and "ci_high" in io.out  # printed too
    code, io = _cli(argv, capsys)  # exists, no --overwrite
    assert code == 8
    first = (out / "examples.jsonl").read_text()
    code, _ = _cli([*argv, "--overwrite"], capsys)
    assert code == 0 and (out / "examples.jsonl").read_text() == first  # deterministic


# --- the task registry ---------------------------------------------------------------------


def test_registry_lists_every_task_module_in_order():
    import pkgutil

    from layerswap.evaluate import tasks

    modules = {m.name for m in pkgutil.iter_modules(tasks.__path__) if not m.name.startswith("_")} - {"registry", "spec", "lm_eval_bridge"}
    assert list(TASKS)[:6] == ["mgsm", "gsm8k", "flores", "sib200", "proxy", "custom"]
    assert set(TASKS) == modules  # one module per task, each found without a list to edit
    for name, spec in TASKS.items():
        assert spec.name == name and spec.summary and "\n" not in spec.summary
        assert spec.default_shots is None or spec.check_shots is not None, name
    with pytest.raises(ConfigError, match="unknown task 'mmlu': valid tasks are mgsm, gsm8k, flores, sib200, proxy, custom"):
        get_task("mmlu")
    assert [get_task(t).metric for t in ("mgsm", "flores", "sib200", "proxy")] == [
        "exact_match",
        "bits_per_byte",
        "accuracy",
        "gold_logprob",
    ]
    assert not higher_is_better("bits_per_byte")
    assert higher_is_better("exact_match") and higher_is_better("accuracy") and higher_is_better("gold_logprob_per_token")
    with pytest.raises(ConfigError, match="unknown metric 'loss'"):
        higher_is_better("loss")
    directions: dict[str, bool] = {}
    for spec in TASKS.values():  # a metric reported by several tasks points one way
        for metric in spec.metrics:
            assert directions.setdefault(metric, spec.higher_is_better) == spec.higher_is_better, metric


def test_training_refused_names_are_evaluation_sets():
    """Each task's data is refused for fine-tuning by a name the core's data rules know."""
    from layerswap.io.records import EVALUATION_SETS

    refused = {name: spec.name for spec in TASKS.values() for name in spec.training_refused}
    assert refused, "no task refuses its data for training"
    for name, task in refused.items():
        assert name in EVALUATION_SETS, f"task {task}: {name!r} is not a key of layerswap.io.records.EVALUATION_SETS"


def test_cli_lists_the_registry_and_stays_light():
    from layerswap.cli.evaluate import SHOTS_HELP, TASK_HELP

    for spec in TASKS.values():
        assert f"{spec.name}: {spec.summary}" in TASK_HELP
    assert "mgsm 0, gsm8k 5, proxy 2" in SHOTS_HELP
    code = "import sys, layerswap.cli\nprint(sorted(m for m in ('torch', 'pandas') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", "the CLI's start-up must not import torch or pandas (the registry is read for --help)"


def test_toy_task_runs_through_evaluate_and_cli(tiny_llama, tmp_path, capsys):
    """A task is one TaskSpec: registered here (no file of the package touched), it runs through
    ``evaluate`` and ``layerswap evaluate``, and is gone again afterwards."""
    from layerswap.evaluate.result import EvalResult

    def run(lm, req):
        n_params = sum(p.numel() for p in lm.model.parameters())
        records = [{"task": "toy", "lang": lang, "id": f"toy-{lang}", "score": float(n_params % 7)} for lang in req.langs]
        rows = [{"task": "toy", "lang": r["lang"], "shots": req.shots, "n": 1, "toy_score": r["score"]} for r in records]
        return EvalResult.of(records, rows)

    spec = TaskSpec(
        name="toy",
        summary="a task defined in a test",
        run=run,
        metric="toy_score",
        higher_is_better=False,
        default_shots=3,
        score_field="score",
    )
    register(spec)
    try:
        assert get_task("toy") is spec and not higher_is_better("toy_score")
        with pytest.raises(ConfigError, match="registered already"):
            register(spec)
        res = api.evaluate(str(tiny_llama), "toy", "sw,bn", device="cpu")
        assert list(res.summary["lang"]) == ["sw", "bn"] and list(res.summary["shots"]) == [3, 3]
        assert [r["id"] for r in res.records] == ["toy-sw", "toy-bn"]
        out = tmp_path / "toy"
        code, io = _cli(["evaluate", str(tiny_llama), "--task", "toy", "--lang", "sw", "--shots", "1", "--out", str(out)], capsys)
        assert code == 0, io.err
        assert "toy_score" in io.out and (out / "summary.csv").read_text().splitlines()[1].startswith("toy,sw,1,1,")
        assert json.loads((out / "layerswap.json").read_text())["tasks"] == ["toy"]
    finally:
        TASKS.pop("toy", None)
    with pytest.raises(ConfigError, match="unknown task 'toy'"):
        api.evaluate(str(tiny_llama), "toy", "sw")
