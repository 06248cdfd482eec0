"""The committed toy base behaves as the smoke pipeline needs, sampled by the trainer's own rollouts
(`HFRollouts`, the one sampler of `sd-bench reproduce`) at the toy decoding (temperature 1.0):

- its `wait` is a real hedge: answers after a wait are right far more often than gut answers;
- given one of its OWN correct responses as the hint (the paper's c = s for Tables 1-2, with the response's
  gut answer and `wait`), it answers like the paper's teacher: almost always right, almost never hedging.
  Measured on 231 problems (sd_bench/toy/README.md "c = s"): accuracy 1.000, waits 0.04 per response
  (plain prompt: 0.45, 0.61), so the smoke scale needs no departure for c = s.
"""

from __future__ import annotations

import statistics

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sd_bench.markers import epistemic_count
from sd_bench.prompts import hint_prompt, render
from sd_bench.toy import BASE_DIR, world
from sd_bench.train.rollout import HFRollouts, sample_seed

PROBLEMS, SAMPLES = 48, 4


@pytest.fixture(scope="module")
def sampler():
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(BASE_DIR)
    engine = HFRollouts(AutoModelForCausalLM.from_pretrained(BASE_DIR).eval(), tok)

    def sample(turns: list[str], n: int, salt: int) -> list[list[str]]:
        prompts = [tok(render(tok, t), add_special_tokens=False)["input_ids"] for t in turns]
        seeds = [sample_seed(0, salt, i) for i in range(len(turns))]
        out = engine.generate(prompts, n=n, temperature=1.0, top_p=1.0, max_new_tokens=96, seeds=seeds)
        texts: list[list[str]] = [[] for _ in turns]
        for s in out:
            texts[s.prompt_index].append(tok.decode(s.response_ids, skip_special_tokens=True))
        return texts

    return sample


def test_the_wait_is_a_hedge_and_an_own_correct_response_makes_a_confident_teacher(sampler):
    problems = world.toy_problems("train", PROBLEMS, seed=11)
    plain = sampler([p.prompt for p in problems], SAMPLES, salt=1)
    graded = [(p, r, world.grade_toy(r, p.answer).correct) for p, rs in zip(problems, plain) for r in rs]
    after_wait = [c for _, r, c in graded if epistemic_count(r)]
    gut_only = [c for _, r, c in graded if not epistemic_count(r)]
    assert len(after_wait) >= 20 and len(gut_only) >= 20
    assert statistics.mean(after_wait) > statistics.mean(gut_only) + 0.3, (after_wait, gut_only)

    own = {}  # each problem's first correct response: c = s
    for p, r, c in graded:
        if c and p.id not in own:
            own[p.id] = (p, r)
    assert sum(epistemic_count(r) > 0 for _, r in own.values()) >= 5  # hints that carry a `wait`
    hinted = sampler([hint_prompt(p.prompt, r) for p, r in own.values()], 2, salt=2)
    responses = [(p, r) for (p, _), rs in zip(own.values(), hinted) for r in rs]
    acc = statistics.mean(world.grade_toy(r, p.answer).correct for p, r in responses)
    waits = statistics.mean(epistemic_count(r) for _, r in responses)
    plain_waits = statistics.mean(epistemic_count(r) for _, r, _ in graded)
    assert acc >= 0.9, acc
    assert waits < 0.3 * plain_waits, (waits, plain_waits)
