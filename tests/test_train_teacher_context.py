"""The teacher really sees its context: demonstration tokens in the teacher's ids, siblings never the sample
itself, truncation from the right that never drops the problem."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from sd_bench.prompts import render
from sd_bench.tiny_model import build_tokenizer
from sd_bench.train import teacher_context as tc
from sd_bench.train.config import load_config
from sd_bench.train.onpolicy import _sdpo_items
from sd_bench.train.rollout import Sample
from sd_bench.train.training_data import smoke_problems


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _contains(seq, sub):
    return any(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_successful_sibling_is_never_the_sample_itself():
    assert tc.successful_sibling([1.0, 0.0, 0.0], 0) is None  # the only success is the sample itself
    assert tc.successful_sibling([1.0, 0.0, 0.0], 1) == 0
    assert tc.successful_sibling([1.0, 0.0, 1.0], 0) == 2
    assert tc.successful_sibling([0.4, 0.0], 1, threshold=0.5) is None


def test_demonstrations_per_context():
    s = "<think>hmm, wait: 3 + 4 = 7</think> The answer is \\boxed{7}."
    assert tc.demonstration("none") == ""
    assert tc.demonstration("answer", answer="7") == "7"
    assert tc.demonstration("reference_solution", solution=None) is None
    assert tc.demonstration("sibling", sibling=s) == s
    assert tc.demonstration("sibling_nothink", sibling=s) == "The answer is \\boxed{7}."
    assert tc.demonstration("sibling", sibling=None) is None
    assert tc.demonstration("regenerated", regenerated="y_r") == "y_r"


def test_teacher_prompt_holds_the_demonstration(tokenizer):
    problem = smoke_problems()[2]
    demo = "3 + 4 = 7, so the answer is \\boxed{7}."
    ids, kept = tc.teacher_prompt_ids(
        tokenizer, problem.prompt, demo, context="sibling", max_prompt_tokens=10_000
    )
    text = tokenizer.decode(ids)
    assert text == render(
        tokenizer, f"{problem.prompt}\nCorrect solution:\n\n{demo}\n\nCorrectly solve the original question."
    )
    assert text.endswith("<|im_start|>assistant\n") and kept > 0
    none_ids, _ = tc.teacher_prompt_ids(
        tokenizer, problem.prompt, "", context="none", max_prompt_tokens=10_000
    )
    assert tokenizer.decode(none_ids) == render(tokenizer, problem.prompt)  # c = none: the student's prompt


def test_truncation_cuts_the_demonstration_never_the_problem(tokenizer):
    problem = smoke_problems()[0]
    demo = " ".join(f"step {i}: 1 + 2 = 3." for i in range(200))
    full, _ = tc.teacher_prompt_ids(
        tokenizer, problem.prompt, demo, context="sibling", max_prompt_tokens=10_000
    )
    ids, kept = tc.teacher_prompt_ids(
        tokenizer, problem.prompt, demo, context="sibling", max_prompt_tokens=120
    )
    assert len(full) > 120 and len(ids) == 120
    text = tokenizer.decode(ids)
    assert problem.prompt in text and text.startswith("<|im_start|>user\nWhat is 1 + 2?")
    assert "step 0: 1 + 2 = 3." in text and "step 199" not in text  # cut on the right
    assert text.endswith("Correctly solve the original question.<|im_end|>\n<|im_start|>assistant\n")
    tiny, kept = tc.teacher_prompt_ids(
        tokenizer, problem.prompt, demo, context="sibling", max_prompt_tokens=5
    )
    assert kept == 0 and problem.prompt in tokenizer.decode(tiny)  # the problem survives any budget


def test_sdpo_items_attach_the_sibling_tokens(tokenizer):
    """The loop's own batching: each sample's teacher ids hold a sibling's tokens (never its own), samples
    without a successful sibling are dropped, and the student's response is appended unchanged later."""
    cfg = load_config("sdpo", scale="smoke", overrides=["rollout.n=3"])
    problem = smoke_problems()[2]
    responses = ["<think>wait</think> 7", "I think 5", "maybe 7 hmm"]
    rewards = [1.0, 0.0, 1.0]
    prompt_ids = tokenizer(render(tokenizer, problem.prompt), add_special_tokens=False)["input_ids"]
    samples = [
        Sample(prompt_ids, tokenizer(r, add_special_tokens=False)["input_ids"], [0.0], 0) for r in responses
    ]
    items = _sdpo_items(cfg, tokenizer, None, [problem], samples, responses, rewards, [0], step=0)
    assert [i.response_ids for i in items] == [s.response_ids for s in samples]
    for item, sibling in zip(items, [2, 0, 0]):
        demo_ids = tokenizer(responses[sibling], add_special_tokens=False)["input_ids"]
        assert _contains(item.teacher_prompt_ids, demo_ids)
        assert responses[sibling] in tokenizer.decode(item.teacher_prompt_ids)
    no_success = _sdpo_items(
        cfg, tokenizer, None, [problem], samples, responses, [1.0, 0.0, 0.0], [0], step=0
    )
    assert len(no_success) == 2  # sample 0 succeeded alone: it has no successful sibling, so no loss
    cfg.teacher.context = "sibling_nothink"
    items = _sdpo_items(cfg, tokenizer, None, [problem], samples, responses, rewards, [0], step=0)
    assert "<think>" not in tokenizer.decode(items[1].teacher_prompt_ids)  # s\think of sample 0
