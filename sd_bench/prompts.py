"""The paper's prompts (PAPER.md, "Prompt" and "Teacher contexts"), as chat messages.

Rendering to text goes through the model's own chat template (`render`), so the same builders serve the
paper's models and the miniature world, whose tokenizer carries a template of its own.
"""

from __future__ import annotations

import re

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def problem_prompt(question: str) -> str:
    """The user turn for every set: `{problem}\\nPlease reason step by step, ...`."""
    return f"{question}\n{INSTRUCTION}"


def hint_prompt(prompt: str, solution: str) -> str:
    """Table 1 probe: the problem prompt with a correct solution (or answer) as a hint, as the user turn."""
    return f"{prompt}\n\nCorrect solution: {solution}\n\nCorrectly solve the original question."


def sdpo_teacher_prompt(prompt: str, demonstration: str) -> str:
    """SDPO's on-policy teacher user turn; the student's response is appended after the generation prompt."""
    return f"{prompt}\nCorrect solution:\n\n{demonstration}\n\nCorrectly solve the original question."


_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)


def strip_think(solution: str) -> str:
    """c = s\\think: drop the `<think>...</think>` part.

    For models whose template opens `<think>` in the prompt (DeepSeek-R1-Distill), the response holds only a
    lone `</think>`: everything up to and including it is dropped.
    """
    if "<think>" in solution:
        return _THINK_BLOCK.sub("", solution).strip()
    if "</think>" in solution:
        return solution.split("</think>", 1)[1].strip()
    return solution


def user_messages(text: str) -> list[dict[str, str]]:
    """One user message, no system prompt (the paper's protocol)."""
    return [{"role": "user", "content": text}]


def render(tokenizer, text: str, **template_kwargs) -> str:
    """The user turn rendered with the tokenizer's chat template and the generation prompt.

    `template_kwargs` reach the template (Qwen3: `enable_thinking=False` for the thinking-off runs).
    Tokenizers without a chat template get the raw text (base models, lm-eval's plain completion mode).
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            user_messages(text), tokenize=False, add_generation_prompt=True, **template_kwargs
        )
    return text
