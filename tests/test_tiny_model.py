"""The tiny local Qwen3 loads with the real Auto* classes, is deterministic, and its template is Qwen-style."""

from __future__ import annotations

import hashlib

import pytest

pytest.importorskip("torch")

from sd_bench.prompts import problem_prompt, render
from sd_bench.tiny_model import build_tiny_qwen3


def _digest(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_tiny_qwen3_loads_and_generates(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_qwen3(tmp_path / "tiny", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "qwen3"
    assert model.config.vocab_size >= len(tokenizer)
    assert model.config.head_dim >= 32
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"

    text = render(tokenizer, problem_prompt("What is 2 + 3?"))
    assert text.startswith("<|im_start|>user\nWhat is 2 + 3?\nPlease reason step by step")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level BPE round-trips exactly
    assert len(ids) < 80  # the BPE learned the instruction: prompts stay short

    # <think> tags are single tokens that survive skip_special_tokens (as in Qwen3).
    think = tokenizer("<think>wait</think> \\boxed{5}", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("<think>") in think
    assert tokenizer.decode(think, skip_special_tokens=True) == "<think>wait</think> \\boxed{5}"

    torch.manual_seed(0)
    out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=True)
    assert out.shape[1] > len(ids)


def test_tiny_qwen3_is_deterministic_per_seed(tmp_path):
    a = build_tiny_qwen3(tmp_path / "a", seed=0)
    b = build_tiny_qwen3(tmp_path / "b", seed=0)
    c = build_tiny_qwen3(tmp_path / "c", seed=1)
    assert _digest(a) == _digest(b) != _digest(c)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
