"""2-step smoke runs of every algorithm through the real `sd-bench train` CLI on the tiny local model (CPU)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from sd_bench.cli import main
from sd_bench.markers import MARKERS

REQUIRED = {
    "step",
    "loss",
    "score",
    "response_tokens",
    "epistemic_count",
    "kl",
    "grad_norm",
    "lr",
    "tokens_per_s",
    "peak_mem_mib",
    "teacher_context_tokens",
    "logprob_gap",
    "truncated",  # fraction of samples at rollout.max_new_tokens with no stop token
    "truncated_rewarded",  # how many of those the training reward counted correct
    "optimizer_steps",
    "logprob_gap_max",
}


def _train(out, recipe, *overrides):
    torch.set_num_threads(1)
    assert main(["train", recipe, "--scale", "smoke", "--output", str(out), *overrides]) == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sdpo_sibling_full_ft(tmp_path):
    records = _train(tmp_path / "run", "sdpo")
    assert [r["step"] for r in records] == [1, 2]
    assert REQUIRED <= set(records[0]) and {f"marker/{m}" for m in MARKERS} <= set(records[0])
    assert records[0]["samples_with_loss"] > 0 and records[0]["loss"] > 0 and records[0]["grad_norm"] > 0
    assert records[0]["teacher_context_tokens"] > 0
    assert all(r["optimizer_steps"] == 1 for r in records)  # smoke: 2 prompts, mini-batch 2
    assert 0.0 <= records[0]["truncated"] <= 1.0 and records[0]["truncated_rewarded"] >= 0
    assert abs(records[0]["logprob_gap"]) < 1e-4  # HF rollouts and the trainer agree on the sampled tokens
    assert records[0]["logprob_gap_max"] < 1e-4  # ... on every token (measured 9.5e-7)
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = tmp_path / "run" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    AutoTokenizer.from_pretrained(final)
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "tiny-model")
    moved = [
        n
        for (n, p), (_, q) in zip(model.named_parameters(), base.named_parameters())
        if not torch.equal(p, q)
    ]
    assert moved  # the update really changed the saved weights


def test_loss_depends_on_the_teacher_context(tmp_path):
    """Same rollouts (same seeds), different teacher prompts -> different step-1 losses; c = none with a
    frozen teacher equals the student at step 1, so its divergence is 0."""
    losses = {
        c: _train(tmp_path / c, "sdpo", f"teacher.context={c}")[0]["loss"]
        for c in ("sibling", "answer", "none")
    }
    assert losses["none"] == pytest.approx(0.0, abs=1e-7)
    assert losses["sibling"] > 1e-7 and losses["answer"] > 1e-7
    assert losses["sibling"] != pytest.approx(losses["answer"], rel=1e-3)


def test_grpo(tmp_path):
    records = _train(tmp_path / "grpo", "grpo")
    assert records[0]["lr"] == pytest.approx(1e-6)
    assert all(r["teacher_context_tokens"] == 0 for r in records)
    assert any(r["grad_norm"] > 0 for r in records)  # some group had mixed rewards


def test_sft(tmp_path):
    traces = tmp_path / "traces.jsonl"
    traces.write_text(
        "".join(
            json.dumps(
                {"question": f"What is {a} + 1?", "response": f"<think>wait</think> \\boxed{{{a + 1}}}"}
            )
            + "\n"
            for a in range(6)
        )
    )
    records = _train(tmp_path / "sft", "sft", f"data.name={traces}", "run.max_steps=3", "optim.lr=1e-3")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[-1]["loss"] < records[0]["loss"]  # it learns the traces
    assert records[0]["epistemic_count"] == 1.0


def test_lora_regenerated_final_is_a_peft_adapter(tmp_path):
    records = _train(tmp_path / "lora", "sdpo_regenerated", "model.finetune=lora")
    assert records[0]["samples_with_loss"] > 0
    final = tmp_path / "lora" / "final"
    assert (final / "adapter_config.json").is_file() and not (final / "model.safetensors").exists()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "lora" / "tiny-model")
    model = PeftModel.from_pretrained(base, final)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at 0; training moved it


def test_unknown_key_is_one_cli_error(tmp_path, capsys):
    assert (
        main(["train", "sdpo", "--scale", "smoke", "--output", str(tmp_path / "x"), "teacher.contxt=answer"])
        == 2
    )
    err = capsys.readouterr().err
    assert "unknown key `teacher.contxt`; did you mean `teacher.context`?" in err
