"""The standalone toy experiment's pieces: the cached sampler equals greedy `generate`, the losses equal
their dense definitions, and SD with no context starts as an exact no-op."""

from __future__ import annotations

import pytest
import torch

from sd_bench.prompts import render
from sd_bench.toy import experiment, world
from sd_bench.toy.model import build_model
from sd_bench.toy.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    tok, model = build_tokenizer(), build_model(seed=0).eval()
    path = tmp_path_factory.mktemp("toy-base")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return tok, model, path


def test_cached_sampler_with_compaction_equals_greedy_generate(tiny):
    tok, model, _ = tiny
    problems = world.toy_problems("id", 3) + world.toy_problems("ood", 3)  # different prompt lengths
    prompts = experiment.encode_prompts(tok, [render(tok, p.prompt) for p in problems])
    gen = torch.Generator().manual_seed(0)
    sampled = experiment.sample(model, tok, prompts, 12, 1e-6, gen)  # temperature -> 0: greedy
    for p, out in zip(prompts, sampled):
        ref = model.generate(
            torch.tensor([p]), max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id
        )[0, len(p) :].tolist()
        assert out == ref[: len(out)] and (len(out) == 12 or out[-1] == tok.eos_token_id)


def test_response_logprobs_align_with_the_response_tokens(tiny):
    tok, model, _ = tiny
    prompt, response = tok.encode("Q:12+34\n"), tok.encode("A:46")
    logp, mask = experiment.response_logprobs(
        model, [prompt, prompt[:4]], [response, response[:2]], tok.pad_token_id
    )
    with torch.no_grad():
        full = torch.log_softmax(model(torch.tensor([prompt + response])).logits[0], -1)
    assert torch.allclose(
        logp[0].detach(), full[len(prompt) - 1 : len(prompt) - 1 + len(response)], atol=1e-5
    )
    assert mask.tolist() == [[True] * 4, [True, True, False, False]]


def test_losses_match_their_definitions():
    torch.manual_seed(0)
    s = torch.log_softmax(torch.randn(3, 5, 7), -1)
    t = torch.log_softmax(torch.randn(3, 5, 7), -1)
    mask = torch.ones(3, 5)
    mask[2, 3:] = 0
    dense = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=s), torch.distributions.Categorical(logits=t)
    )
    assert torch.allclose(
        experiment.reverse_kl_loss(s, t, mask), (dense * mask).sum() / mask.sum(), atol=1e-6
    )
    assert experiment.reverse_kl_loss(s, s, mask).item() == pytest.approx(0.0, abs=1e-7)
    tokens = torch.randint(0, 7, (4, 5))
    logp = torch.log_softmax(torch.randn(4, 5, 7), -1)
    same = experiment.grpo_loss(logp, tokens, torch.ones(4, 5), torch.tensor([1.0, 1.0, 0.0, 0.0]), group=2)
    assert same.item() == 0.0  # equal rewards within each group: no signal
    adv = torch.tensor([1.0, 0.0, 0.0, 0.0])
    loss = experiment.grpo_loss(logp, tokens, torch.ones(4, 5), adv, group=2)
    picked = logp.gather(-1, tokens[..., None]).squeeze(-1)
    assert loss.item() == pytest.approx(
        -(0.5 * picked[0].sum() - 0.5 * picked[1].sum()).item() / 20, rel=1e-5
    )


def test_sd_without_context_starts_as_an_exact_no_op(tiny):
    *_, path = tiny
    train = world.coverage_set(8)
    _, records = experiment.post_train(
        path, "sd", "none", train, steps=1, seed=0, log=lambda *_: None, max_new=8
    )
    assert records[0]["loss"] == 0.0
    _, records = experiment.post_train(
        path, "sd", "solution", train, steps=1, seed=0, log=lambda *_: None, max_new=8
    )
    assert records[0]["loss"] > 0.0
