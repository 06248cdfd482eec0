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


# ---------------------------------------------------------------- top-k (issue 12 rule 9) and the context clamp


def test_warp_top_k_then_top_p_reference():
    """Reference from the definition: keep the k largest probabilities, renormalise, then the nucleus of
    that distribution (transformers' and vLLM's order)."""
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    lp = warp_logprobs(torch.log(p)[None], 1.0, 1.0, top_k=2)[0]
    assert torch.isinf(lp[2:]).all() and lp[:2].exp().tolist() == pytest.approx([0.625, 0.375])
    top3 = p[:3] / p[:3].sum()  # [0.526, 0.316, 0.158]: 0.526 + 0.316 < 0.9, so the third stays
    lp = warp_logprobs(torch.log(p)[None], 1.0, 0.9, top_k=3)[0]
    assert torch.isinf(lp[3]) and lp[:3].exp().tolist() == pytest.approx(top3.tolist())
    lp = warp_logprobs(torch.log(p)[None], 1.0, 0.8, top_k=3)[0]  # 0.526 + 0.316 >= 0.8: two tokens
    assert torch.isinf(lp[2:]).all() and lp[:2].exp().tolist() == pytest.approx([0.625, 0.375])
    assert torch.equal(
        warp_logprobs(torch.log(p)[None], 1.0, 1.0, top_k=10), warp_logprobs(torch.log(p)[None], 1.0, 1.0)
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from sd_bench.tiny_model import build_tiny_qwen3

    torch.set_num_threads(1)
    path = build_tiny_qwen3(tmp_path_factory.mktemp("tiny") / "tiny")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = [tok(render(tok, q), add_special_tokens=False)["input_ids"] for q in ["What is 1 + 2?", "Hi"]]
    return model, tok, prompts


def test_top_k_1_is_greedy(tiny):
    model, tok, prompts = tiny
    samples = _gen(HFRollouts(model, tok), prompts, [3, 4], n=2, max_new_tokens=16, temperature=1.0, top_k=1)
    for s in samples:
        with torch.no_grad():
            greedy = model.generate(
                torch.tensor([s.prompt_ids]),
                max_new_tokens=16,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )[0, len(s.prompt_ids) :].tolist()
        assert s.response_ids == greedy[: len(s.response_ids)] and len(s.response_ids) == len(greedy)
        assert s.logprobs == pytest.approx([0.0] * len(s.logprobs), abs=1e-6)  # one token left: p = 1


def test_top_k_restricts_the_support(tiny):
    """Every token sampled with top_k=3 is among the 3 most probable under the teacher-forced forward, and
    its log-prob is the top-k-renormalised one; without top_k the random tiny model leaves the top 3."""
    model, tok, prompts = tiny
    engine = HFRollouts(model, tok)

    def ranks(samples, top_k):
        out = []
        for s in samples:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([s.prompt_ids + s.response_ids])).logits[0]
            logits = logits[len(s.prompt_ids) - 1 : -1]
            order = logits.argsort(-1, descending=True)
            out += [int((order[i] == t).nonzero()) for i, t in enumerate(s.response_ids)]
            ref = warp_logprobs(logits, 1.0, 1.0, top_k=top_k)
            want = ref.gather(-1, torch.tensor(s.response_ids)[:, None]).squeeze(-1)
            assert s.logprobs == pytest.approx(want.tolist(), abs=1e-4)
        return out

    limited = _gen(engine, prompts, [7, 8], n=4, max_new_tokens=24, top_k=3)
    seen = ranks(limited, 3)
    assert max(seen) <= 2 and len(set(seen)) > 1
    free = _gen(engine, prompts, [7, 8], n=4, max_new_tokens=24)
    assert max(ranks(free, None)) > 2


def test_max_new_tokens_clamped_to_the_context(tiny, capsys):
    from sd_bench.train.rollout import clamp_new_tokens

    warned: set = set()
    assert clamp_new_tokens(100, 20, 64, warned) == 44 and clamp_new_tokens(100, 30, 64, warned) == 34
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "rollout.max_new_tokens=100" in err and "context of 64" in err
    assert clamp_new_tokens(10, 20, 64, set()) == 10 and clamp_new_tokens(10, 20, None, set()) == 10
    with pytest.raises(ValueError, match="fills the model's context of 64"):
        clamp_new_tokens(10, 64, 64, set())
    model, tok, prompts = tiny
    saved, context = model.config.max_position_embeddings, len(prompts[0]) + 6
    model.config.max_position_embeddings = context  # a short context, so the clamped run stays short
    try:  # each prompt gets its own room, as verl's rollout server gives it (the short prompt gets more)
        samples = _gen(HFRollouts(model, tok), prompts, [1, 2], n=2, max_new_tokens=40)
    finally:
        model.config.max_position_embeddings = saved
    assert len(prompts[1]) < len(prompts[0])
    assert all(len(s.prompt_ids) + len(s.response_ids) <= context for s in samples)
    assert max(len(s.response_ids) for s in samples[:2]) == 6  # the random tiny model rarely stops early
    assert max(len(s.response_ids) for s in samples[2:]) == context - len(prompts[1])
    assert capsys.readouterr().err.count("warning:") == 1  # one engine, one warning
