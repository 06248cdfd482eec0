"""The toy tokenizer: `wait` is one token that E(y) counts; the paper's prompt builders render to the toy
formats through the chat template; it saves and loads with AutoTokenizer offline."""

from __future__ import annotations

import json
import random

import pytest
from transformers import AutoTokenizer

from sd_bench.markers import epistemic_count
from sd_bench.prompts import hint_prompt, problem_prompt, render, sdpo_teacher_prompt
from sd_bench.toy import world
from sd_bench.toy.pretrain import encode_trace
from sd_bench.toy.tokenizer import VOCAB, build_tokenizer, save_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_wait_is_one_token_and_counted_by_the_paper_marker_counter(tok):
    response = "A:112wait12+34=46;46+56=101;wait46+56=102;A:102"
    ids = tok.encode(response, add_special_tokens=False)
    assert ids.count(tok.convert_tokens_to_ids("wait")) == 2
    assert len(ids) == len(response) - 2 * (len("wait") - 1)  # one token per character, one per wait
    decoded = tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True)
    assert decoded == response
    assert epistemic_count(decoded) == 2
    assert tok.unk_token_id not in ids


def test_chat_template_renders_the_paper_prompts_to_the_toy_formats(tok):
    p = world.toy_problems("id")[0]
    assert render(tok, p.prompt) == f"Q:{p.question}\n"
    assert (
        render(tok, problem_prompt(p.question)) == f"Q:{p.question}\n"
    )  # the paper's instruction is dropped
    assert render(tok, sdpo_teacher_prompt(p.prompt, p.solution)) == f"Q:{p.question}|H:{p.solution}\n"
    assert render(tok, sdpo_teacher_prompt(p.prompt, p.answer)) == f"Q:{p.question}|H:{p.answer}\n"
    assert render(tok, hint_prompt(p.prompt, p.solution)) == f"Q:{p.question}|H:{p.solution}\n"
    assert render(tok, hint_prompt(p.prompt, p.answer)) == f"Q:{p.question}|H:{p.answer}\n"
    sibling = "A:112wait12+34=46;46+56=102;A:102"  # a successful rollout as the demonstration
    assert render(tok, sdpo_teacher_prompt("12+34+56", sibling)) == f"Q:12+34+56|H:{sibling}\n"
    rendered = render(tok, sdpo_teacher_prompt(p.prompt, p.solution))
    assert tok.unk_token_id not in tok.encode(rendered, add_special_tokens=False)
    chat = [{"role": "user", "content": "1+2"}, {"role": "assistant", "content": "A:3"}]
    assert tok.apply_chat_template(chat, tokenize=False) == "Q:1+2\nA:3<eos>"


def test_pretraining_encoding_equals_the_rendered_chat(tok):
    rng = random.Random(0)
    for _ in range(50):
        trace = world.sample_trace(rng)
        user = trace.question if trace.hint is None else sdpo_teacher_prompt(trace.question, trace.hint)
        text = render(tok, user) + trace.response
        ids, mask = encode_trace(tok, trace)
        assert ids == tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
        assert len(mask) == len(ids) and mask[-1] == 1


def test_saves_and_loads_offline(tok, tmp_path):
    save_tokenizer(tok, tmp_path)
    assert (
        json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"]
        == "PreTrainedTokenizerFast"
    )
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tok.get_vocab() and len(loaded) == len(VOCAB)
    assert (loaded.eos_token, loaded.pad_token, loaded.padding_side) == ("<eos>", "<pad>", "left")
    assert render(loaded, sdpo_teacher_prompt("12+34", "46")) == "Q:12+34|H:46\n"
    text = "Q:12+34\nA:46wait12+34=46;A:46"
    assert loaded.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
