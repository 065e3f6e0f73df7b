"""Slow tests on the real Gemma 3 270M: a few examples, few new tokens."""

from __future__ import annotations

import math

import pytest
import torch

from layerswap.evaluate import api
from layerswap.evaluate.greedy_head import greedy_head
from layerswap.evaluate.runner import generate, load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma(gemma3_270m):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model("gemma3-270m", device="cpu")
    torch.set_num_threads(before)


def test_mgsm_two_shot_batched_equals_hf_generate(gemma, data_dir):
    """Shared-prefix, row-by-row prefilled, screened-output-layer batched greedy == transformers
    ``generate`` on each full prompt."""
    res = api.evaluate_mgsm(gemma, ["sw"], shots=2, limit=2, batch_size=2, max_new_tokens=6, data_dir=data_dir)
    assert len(res.records) == 2
    for rec in res.records:
        enc = gemma.tokenizer(rec["prompt"], return_tensors="pt")
        with torch.inference_mode():
            seq = gemma.model.generate(**enc, max_new_tokens=6, do_sample=False)
        want = gemma.tokenizer.decode(seq[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        assert rec["output"] == want.split("Swali:")[0]
    assert generate(gemma, [r["prompt"] for r in res.records], stop=("Swali:",), max_new_tokens=6, batch_size=1) == [r["output"] for r in res.records]
    head = greedy_head(gemma)
    assert head.screening and head.stats["steps"] > head.stats["full"]  # the 262k-token output layer was screened


def test_language_checks_and_proxy_are_finite(gemma, data_dir):
    res = api.evaluate(gemma, ["flores", "sib200", "proxy"], ["sw"], limit=2, batch_size=4, data_dir=data_dir)
    s = res.summary.set_index("task")
    assert 0.3 < s.loc["flores", "bits_per_byte"] < 3.0
    assert 0.0 <= s.loc["sib200", "accuracy"] <= 1.0
    assert math.isfinite(s.loc["proxy", "gold_logprob"]) and s.loc["proxy", "gold_logprob"] < 0
    for task in ("flores", "proxy"):  # two real examples each: a finite error and an interval around the metric
        metric = {"flores": "bits_per_byte", "proxy": "gold_logprob"}[task]
        assert s.loc[task, "n"] == 2 and s.loc[task, "stderr"] > 0
        assert s.loc[task, "ci_low"] <= s.loc[task, metric] <= s.loc[task, "ci_high"]
