"""Refuse the two lm-eval options that silently break sd-bench's tasks, before any response is generated.

1. `--gen_kwargs seed=N`: lm-eval clones each request `repeats` (k) times with the same generation kwargs
   (lm_eval/evaluator.py, evaluate: `cloned_reqs.extend([req] * req.repeats)`), so
   every one of the k samples of a problem gets the same seed: k identical responses, avg@k = one sample,
   pass@k meaningless. lm-eval's own `--seed` seeds the run once and is the right option.
2. `--model_args ...,think_end_token=T`: lm-eval then cuts every response up to T before the tasks see it
   (lm_eval/models/huggingface.py and vllm_causallms.py, `postprocess_generated_text`), so E(y) and the
   response length would count only the answer, not the thinking the paper counts (PAPER.md, "Epistemic
   count E(y)"). sd-bench's tasks find the answer after the last `</think>` themselves.

Where the hooks can see them: model_args reach the custom_dataset hook as metadata (lm-eval passes
model_args to tasks as metadata); the generation kwargs live in the task's config, and `doc_to_text` is
called by that task (ConfigurableTask.doc_to_text) while the contexts are built, after lm-eval merged
`--gen_kwargs` into the config (evaluator.simple_evaluate, `set_config(key="generation_kwargs", ...)`) and
before any generation.
"""

from __future__ import annotations

import sys
from typing import Any


class UnsupportedOption(ValueError):
    """An lm-eval option that would make an sd-bench task report wrong numbers."""


def check_model_args(metadata: dict[str, Any]) -> None:
    """Raise UnsupportedOption when model_args (seen as task metadata) carry think_end_token."""
    if metadata.get("think_end_token") not in (None, ""):
        raise UnsupportedOption(
            f"sd_bench: --model_args think_end_token={metadata['think_end_token']} makes lm-eval strip the "
            "thinking before scoring, so E(y) and response length would count only the answer; drop it "
            "(sd-bench's tasks read the answer after the last </think> themselves)"
        )


def check_generation(generation_kwargs: dict[str, Any] | None, repeats: int | None, task: str = "") -> None:
    """Raise UnsupportedOption when the generation kwargs carry a seed and the task samples k > 1."""
    gen = generation_kwargs or {}
    if gen.get("seed") is not None and (repeats or 1) > 1:
        raise UnsupportedOption(
            f"sd_bench: {task or 'task'}: --gen_kwargs seed={gen['seed']} gives each of the k = {repeats} "
            "repeats of a problem the same seed (k identical samples: avg@k is one sample, pass@k is "
            "meaningless); drop seed= from --gen_kwargs and use lm-eval's --seed"
        )


def check_calling_task(depth: int = 2) -> None:
    """Check the generation kwargs of the lm-eval task that called the hook.

    `depth` frames up from here is the hook's caller: ConfigurableTask.doc_to_text(self, doc). Outside
    lm-eval (a test calling the hook) there is no such task, and nothing is checked.
    """
    try:
        frame = sys._getframe(depth)
    except ValueError:
        return
    for _ in range(3):  # the task method itself, or a wrapper one or two frames above
        if frame is None:
            return
        task = frame.f_locals.get("self")
        config = getattr(task, "config", None)
        if config is not None and hasattr(config, "generation_kwargs"):
            # on every call (microseconds): the task also calls doc_to_text while it is being built,
            # before lm-eval merges --gen_kwargs into its config
            repeats = getattr(config, "repeats", None)
            check_generation(config.generation_kwargs, repeats, config.task or "")
            return
        frame = frame.f_back
