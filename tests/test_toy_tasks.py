"""The toy lm-eval tasks run for real: lm-eval's `hf` model on the committed toy base, the shared hooks with
problem kind "toy", and the paper's E(y) counting the toy's `wait` token."""

from __future__ import annotations

import pytest
from lm_eval import simple_evaluate

from sd_bench import lm_eval_tasks
from sd_bench.markers import epistemic_count
from sd_bench.toy import BASE_DIR, world


@pytest.fixture(scope="module")
def toy_run():
    if not (BASE_DIR / "model.safetensors").exists():
        pytest.fail(f"{BASE_DIR} has no model.safetensors: run `sd-bench toy pretrain`")
    model_args = f"pretrained={BASE_DIR},dtype=float32,device=cpu"
    tm = lm_eval_tasks.task_manager(k=2, model_args=model_args, include_defaults=False)
    return simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=["sd_toy"],
        task_manager=tm,
        limit=8,
        bootstrap_iters=0,
        log_samples=True,
        batch_size=16,
    )


def test_toy_group_runs_with_the_toy_grader(toy_run):
    res, samples = toy_run["results"], toy_run["samples"]
    assert set(samples) == {"sd_toy_id", "sd_toy_ood"}
    for task, split in (("sd_toy_id", "id"), ("sd_toy_ood", "ood")):
        docs = [s["doc"] for s in samples[task]]
        assert len(docs) == 8
        expected = world.toy_problems(split)[:8]
        assert [d["problem"] for d in docs] == [p.question for p in expected]
        assert all(d["kind"] == "toy" and d["input"] == f"Q:{d['problem']}\n" for d in docs)
        # recompute the metrics from the logged responses with the toy grader and the E(y) counter
        responses = [r for s in samples[task] for r in s["filtered_resps"][0]]
        golds = [s["doc"]["answer"] for s in samples[task] for _ in s["filtered_resps"][0]]
        assert len(responses) == 16
        acc = sum(world.grade_toy(r, g).correct for r, g in zip(responses, golds)) / 16
        waits = sum(epistemic_count(r) for r in responses) / 16
        assert res[task]["acc,none"] == pytest.approx(acc)
        assert res[task]["epistemic_count,none"] == pytest.approx(waits)
        assert res[task]["marker_wait,none"] == pytest.approx(waits)
        assert "response_tokens,none" in res[task]
        # one toy grader under both rules; unbiased pass@1 is avg@k; majority vote over the extracted answers
        assert res[task]["acc_paper,none"] == res[task]["acc,none"]
        assert res[task]["pass_at_k_paper,none"] == res[task]["pass_at_k,none"]
        assert res[task]["pass_at_1,none"] == pytest.approx(acc)
        assert res[task]["maj_at_k,none"] == pytest.approx(_majority_accuracy(samples[task]))
    all_text = " ".join(r for t in samples for s in samples[t] for r in s["filtered_resps"][0])
    assert "A:" in all_text  # the base answers in the toy format
    assert "sd_toy" in res and "acc,none" in res["sd_toy"]
    group_mean = (res["sd_toy_id"]["acc_paper,none"] + res["sd_toy_ood"]["acc_paper,none"]) / 2
    assert res["sd_toy"]["acc_paper,none"] == pytest.approx(group_mean)


def _majority_accuracy(task_samples) -> float:
    """maj@k from its definition: per problem, the answer given most often (first seen wins a tie;
    unanswered responses do not vote) is graded."""
    hits = []
    for s in task_samples:
        answers = [world.extract_answer(r) for r in s["filtered_resps"][0]]
        answers = [a for a in answers if a is not None]
        if not answers:
            hits.append(0.0)
            continue
        best = max(answers, key=lambda a: (answers.count(a), -answers.index(a)))
        hits.append(float(world.grade_toy(f"A:{best}", s["doc"]["answer"]).correct))
    return sum(hits) / len(hits)
