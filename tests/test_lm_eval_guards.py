"""The seed and think_end_token guards fire inside real lm-eval runs, before any response is generated."""

from __future__ import annotations

import os

import pytest

from sd_bench import lm_eval_guards


def test_guard_rules():
    with pytest.raises(lm_eval_guards.UnsupportedOption, match="same seed"):
        lm_eval_guards.check_generation({"temperature": 0.6, "seed": 3}, 16, "sd_aime24")
    lm_eval_guards.check_generation({"seed": 3}, 1)  # one sample per problem: a seed is harmless
    lm_eval_guards.check_generation({"temperature": 0.6}, 16)
    with pytest.raises(lm_eval_guards.UnsupportedOption, match="strip the thinking"):
        lm_eval_guards.check_model_args({"pretrained": "m", "think_end_token": "</think>"})
    lm_eval_guards.check_model_args({"pretrained": "m"})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    if not os.environ.get("SD_BENCH_DATA_DIR"):
        pytest.skip("needs the paper's data (SD_BENCH_DATA_DIR)")
    from sd_bench.tiny_model import build_tiny_qwen3

    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny") / "model")


def _evaluate(model, model_args: str, gen_kwargs: str, monkeypatch):
    import lm_eval
    import lm_eval.evaluator

    from sd_bench.lm_eval_tasks import task_manager

    generated = []
    real = lm_eval.evaluator.evaluate

    def spy(lm, *args, **kwargs):  # records whether any request reached the model
        original = lm.generate_until
        lm.generate_until = lambda reqs, *a, **k: generated.append(len(reqs)) or original(reqs, *a, **k)
        return real(lm, *args, **kwargs)

    monkeypatch.setattr(lm_eval.evaluator, "evaluate", spy)
    tm = task_manager(k=2, max_gen_toks=4, model_args=model_args, include_defaults=False)
    try:
        lm_eval.simple_evaluate(
            model="hf", model_args=model_args, tasks=["sd_amc23"], task_manager=tm, limit=1,
            gen_kwargs=gen_kwargs, device="cpu", batch_size=2, bootstrap_iters=0,
        )  # fmt: skip
    finally:
        assert generated == []  # refused before any generation
    return generated


def test_seed_in_gen_kwargs_is_refused_in_a_real_run(tiny, monkeypatch):
    with pytest.raises(lm_eval_guards.UnsupportedOption) as err:
        _evaluate(tiny, f"pretrained={tiny},dtype=float32", "seed=7,max_gen_toks=4", monkeypatch)
    message = str(err.value)
    assert "\n" not in message and "seed=7" in message and "k = 2" in message and "--seed" in message


def test_think_end_token_is_refused_in_a_real_run(tiny, monkeypatch):
    args = f"pretrained={tiny},dtype=float32,think_end_token=</think>"
    with pytest.raises(lm_eval_guards.UnsupportedOption) as err:
        _evaluate(tiny, args, "max_gen_toks=4", monkeypatch)
    assert "\n" not in str(err.value) and "E(y)" in str(err.value)
