"""HFRollouts (batched KV-cache sampler): samples independent of batch composition, exact sampling
log-probs, stop at EOS. Real transformers models: the committed toy base and a tiny random Qwen3."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sd_bench.prompts import render
from sd_bench.toy import BASE_DIR, world
from sd_bench.train.rollout import HFRollouts, warp_logprobs


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(BASE_DIR)
    model = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32).eval()
    prompts = [
        tok(render(tok, p.prompt), add_special_tokens=False)["input_ids"]
        for p in world.coverage_set("broad", seed=0)[:6]
    ]
    return model, tok, prompts


def _gen(engine, prompts, seeds, **kw):
    opts = {"n": 3, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 48, **kw}
    return engine.generate(prompts, seeds=seeds, **opts)


def test_same_seed_same_samples_whatever_the_batch(toy):
    model, tok, prompts = toy
    engine = HFRollouts(model, tok)
    seeds = [11, 22, 33, 44, 55, 66]
    full = _gen(engine, prompts, seeds)
    assert len(full) == 18 and [s.prompt_index for s in full] == [i for i in range(6) for _ in range(3)]
    # a subset, in another order, and one prompt alone: the same rows come back
    sub = _gen(engine, [prompts[4], prompts[1]], [55, 22])
    assert [s.response_ids for s in sub] == [s.response_ids for s in full[12:15] + full[3:6]]
    alone = _gen(engine, [prompts[2]], [33])
    assert [s.response_ids for s in alone] == [s.response_ids for s in full[6:9]]
    for a, b in zip(alone, full[6:9]):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    # another seed gives other samples; the n samples of one prompt differ from each other
    other = _gen(engine, prompts, [12, 22, 33, 44, 55, 66])
    assert [s.response_ids for s in other[:3]] != [s.response_ids for s in full[:3]]
    assert len({tuple(s.response_ids) for s in full}) > 6


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.8)])
def test_logprobs_equal_teacher_forced_warped_forward(toy, temperature, top_p):
    model, tok, prompts = toy
    samples = _gen(HFRollouts(model, tok), prompts[:3], [1, 2, 3], temperature=temperature, top_p=top_p)
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(s.prompt_ids) - 1 : -1]
        ref = warp_logprobs(logits, temperature, top_p)
        want = ref.gather(-1, torch.tensor(s.response_ids)[:, None]).squeeze(-1)
        assert torch.isfinite(want).all()  # every sampled token lies inside the nucleus
        assert s.logprobs == pytest.approx(want.tolist(), abs=1e-4)


def test_warp_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    lp = warp_logprobs(logits, 1.0, 0.8)  # 0.5 + 0.3 reaches 0.8: keep two tokens
    assert torch.isinf(lp[0, 2:]).all()
    assert lp[0, :2].exp().tolist() == pytest.approx([0.625, 0.375])
    assert torch.isfinite(warp_logprobs(logits, 1.0, 0.01)[0, 0])  # at least one token


def test_stops_at_eos_and_keeps_it(toy):
    model, tok, prompts = toy
    samples = _gen(HFRollouts(model, tok), prompts, list(range(6)), max_new_tokens=96)
    finished = [s for s in samples if tok.eos_token_id in s.response_ids]
    assert len(finished) >= len(samples) - 2  # the toy base answers in ~20 tokens
    for s in finished:
        assert s.response_ids.index(tok.eos_token_id) == len(s.response_ids) - 1
        assert len(s.logprobs) == len(s.response_ids)
    short = _gen(HFRollouts(model, tok), prompts[:2], [0, 1], max_new_tokens=3)
    assert all(len(s.response_ids) <= 3 for s in short)


def test_tiny_qwen3_batch_independent(tmp_path):
    from sd_bench.tiny_model import build_tiny_qwen3

    path = build_tiny_qwen3(tmp_path / "tiny")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = [tok(render(tok, q), add_special_tokens=False)["input_ids"] for q in ["What is 1 + 2?", "Hi"]]
    engine = HFRollouts(model, tok)
    both = _gen(engine, prompts, [5, 6], max_new_tokens=12)
    second = _gen(engine, prompts[1:], [6], max_new_tokens=12)
    assert [s.response_ids for s in second] == [s.response_ids for s in both[3:]]
