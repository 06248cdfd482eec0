"""Teacher weights and gradient flow: LoRA trains only the adapter, a frozen teacher never moves, an EMA
teacher moves by exactly rate r per update, and the teacher's forward really differs from the student's."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sd_bench.prompts import render
from sd_bench.train import teacher_context as tc
from sd_bench.train.batching import response_hidden
from sd_bench.train.config import load_config
from sd_bench.train.model import Teacher, load_model, trainable_parameters
from sd_bench.train.onpolicy import Item, _micro_loss
from sd_bench.train.training_data import smoke_problems


def _setup(tmp_path, finetune, mode, rate=0.25):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = load_config(
        "sdpo",
        scale="smoke",
        overrides=[f"model.finetune={finetune}", f"teacher.mode={mode}", f"teacher.ema_rate={rate}"],
    )
    model, tok, _ = load_model(cfg.model, tmp_path)
    teacher = Teacher(model, mode, rate)
    problem = smoke_problems()[0]
    prompt = tok(render(tok, problem.prompt), add_special_tokens=False)["input_ids"]
    response = tok("<think>1 + 2 = 3</think> \\boxed{3}", add_special_tokens=False)["input_ids"]
    t_ids, _ = tc.teacher_prompt_ids(
        tok, problem.prompt, problem.solution, context="reference_solution", max_prompt_tokens=512
    )
    item = Item(prompt, response, [0.0] * len(response), 0, teacher_prompt_ids=t_ids)
    with torch.no_grad():
        h, w, t = response_hidden(model, [prompt], [response], tok.pad_token_id, "cpu")
        item.old_logprobs = (h @ w.T).log_softmax(-1).gather(-1, t[:, None]).squeeze(-1)
    return cfg, model, tok, teacher, item


def _step(cfg, model, teacher, item, lr=1e-2):
    params = [p for _, p in trainable_parameters(model)]
    opt = torch.optim.AdamW(params, lr=lr)
    opt.zero_grad()
    n = len(item.response_ids)
    loss, _ = _micro_loss(cfg, model, teacher, [item], torch.full((n,), 1.0 / n), 0, "cpu")  # token-mean
    loss.backward()
    opt.step()
    teacher.update(model)
    return loss


def test_lora_gradients_reach_only_the_adapter_and_frozen_teacher_is_the_base(tmp_path):
    cfg, model, _tok, teacher, item = _setup(tmp_path, "lora", "frozen")
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    loss = _step(cfg, model, teacher, item)
    assert loss > 0
    for n, p in model.named_parameters():
        if "lora_" in n:
            assert p.requires_grad and p.grad is not None, n
        else:
            assert not p.requires_grad and p.grad is None, n
            assert torch.equal(p, base_before[n]), n  # base weights never move
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    # frozen LoRA teacher = the same model with the adapter disabled = the untouched base
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny-model")
    ids = torch.tensor([item.teacher_prompt_ids + item.response_ids])
    with torch.no_grad(), teacher.weights(model) as t_model:
        teacher_logits = t_model(input_ids=ids).logits
    student_logits = model(input_ids=ids).logits.detach()
    assert torch.allclose(teacher_logits, base(input_ids=ids).logits, atol=1e-6)
    assert not torch.allclose(student_logits, teacher_logits, atol=1e-6)  # the adapter is back on after


def test_full_ft_frozen_teacher_never_moves(tmp_path):
    cfg, model, _tok, teacher, item = _setup(tmp_path, "full", "frozen")
    before = {n: p.detach().clone() for n, p in teacher.copy.named_parameters()}
    for _ in range(2):
        _step(cfg, model, teacher, item)
    assert all(torch.equal(p, before[n]) for n, p in teacher.copy.named_parameters())
    assert not all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(not p.requires_grad for p in teacher.copy.parameters())


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_ema_teacher_moves_by_rate_r(tmp_path, finetune):
    rate = 0.25
    cfg, model, _tok, teacher, item = _setup(tmp_path, finetune, "ema", rate)
    old = {n: t.clone() for n, t in teacher.state_dict().items()}
    _step(cfg, model, teacher, item)
    student = dict(model.named_parameters())
    new = teacher.state_dict()
    moved = 0
    for n, t in new.items():
        expect = (1 - rate) * old[n] + rate * student[n].detach()
        assert torch.allclose(t, expect, atol=1e-7), n
        moved += int(not torch.equal(t, old[n]))
    assert moved > 0


def test_live_teacher_is_the_current_student(tmp_path):
    _cfg, model, _tok, teacher, _item = _setup(tmp_path, "full", "live")
    with teacher.weights(model) as t_model:
        assert t_model is model
