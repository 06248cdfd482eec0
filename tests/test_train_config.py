"""Recipe config: every recipe loads at every scale; unknown keys, wrong types and bad values are one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from sd_bench.train.config import RECIPES_DIR, ConfigError, load_config, save_config

RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))


def test_one_recipe_per_paper_condition():
    names = {p.stem for p in RECIPES}
    assert names == {
        "sdpo",
        "sdpo_nothink",
        "sdpo_answer",
        "sdpo_reference",
        "sdpo_regenerated",
        "sdpo_none",
        "sdpo_ema",
        "grpo",
        "sft",
    }
    for path in RECIPES:  # the header says which row, the command, and what the paper left open
        head = path.read_text()
        assert "# Reproduces:" in head and "# Command:" in head and "# Left open by the paper:" in head, path


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
@pytest.mark.parametrize("scale", ["smoke", "small", "paper"])
def test_recipes_load(path, scale):
    cfg = load_config(path.stem, scale=scale)
    assert cfg.algorithm in ("sdpo", "grpo", "sft")
    if scale == "smoke":
        assert cfg.model.path == "tiny"


def test_paper_values():
    sdpo, grpo = load_config("sdpo", scale="paper"), load_config("grpo", scale="paper")
    assert (sdpo.optim.lr, grpo.optim.lr) == (1e-5, 1e-6)
    assert (sdpo.rollout.prompts_per_step, sdpo.rollout.n, sdpo.optim.mini_batch_size) == (256, 8, 128)
    assert (sdpo.loss.alpha, sdpo.loss.top_k, sdpo.loss.is_clip) == (0.5, 100, 2.0)
    assert (grpo.loss.clip_low, grpo.loss.clip_high) == (0.2, 0.28)
    assert sdpo.teacher.max_prompt_tokens == 22528 and sdpo.rollout.max_new_tokens == 20480
    assert load_config("sdpo_ema").teacher.ema_rate == 0.05


def test_overrides_and_saved_config(tmp_path):
    cfg = load_config(
        "sdpo", scale="smoke", overrides=["optim.lr=3e-5", "teacher.context=answer", "loss.top_k=null"]
    )
    assert cfg.optim.lr == 3e-5 and cfg.teacher.context == "answer" and cfg.loss.top_k is None
    save_config(cfg, tmp_path / "config.yaml")
    assert "context: answer" in (tmp_path / "config.yaml").read_text()


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_file_and_closest_key(tmp_path):
    path = _recipe(tmp_path, "algorithm: sdpo\nteacher:\n  contxt: sibling\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "teacher.contxt" in str(err.value)
    assert "did you mean `teacher.context`" in str(err.value)
    with pytest.raises(ConfigError, match="did you mean `optim.lr`"):
        load_config("sdpo", overrides=["lr=1e-5"])


def test_wrong_type_and_bad_value_name_file_and_field(tmp_path):
    path = _recipe(tmp_path, "optim:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: field `optim.lr`: expected float"):
        load_config(path)
    path = _recipe(tmp_path, "teacher:\n  context: oracle\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: field `teacher.context` = 'oracle'; expected one of"):
        load_config(path)
    with pytest.raises(ConfigError, match="loss.alpha"):
        load_config("sdpo", overrides=["loss.alpha=1.5"])
    with pytest.raises(ConfigError, match="unknown recipe `sdpoo`.*did you mean `sdpo`"):
        load_config("sdpoo")


# ---------------------------------------------------------------- the learning-rate schedule (issue 12 rule 7)


def _lrs(warmup: int, steps: int, lr: float = 1e-5) -> list[float]:
    """The lr each training step trains at, read from the real scheduler stepped once per training step."""
    import torch

    from sd_bench.train.runtime import build_optimizer, build_scheduler

    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], lr, 0.01, [0.9, 0.999])
    sched = build_scheduler(opt, warmup)
    out = []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("warmup", [0, 1, 3, 10])
def test_warmup_is_verls_constant_schedule_with_warmup(warmup):
    """Closed form of verl/utils/torch_functional.py get_constant_schedule_with_warmup: step s (0-based) trains
    at lr * s / warmup while s < warmup, then lr; so step 0 trains at lr 0. Warmup 10: 0, 0.1, ..., 0.9, 1, 1."""
    lr = 1e-5
    reference = [lr * (s / warmup if s < warmup else 1.0) for s in range(14)]
    assert _lrs(warmup, 14, lr) == pytest.approx(reference, abs=1e-20)
    if warmup == 10:
        assert _lrs(10, 12, 1.0) == pytest.approx([0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 1])


def test_scheduler_resumes_mid_warmup():
    import torch

    from sd_bench.train.runtime import build_optimizer, build_scheduler

    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], 1.0, 0.0, [0.9, 0.999])
    sched = build_scheduler(opt, 10)
    for _ in range(4):
        opt.step()
        sched.step()
    again = build_scheduler(build_optimizer([torch.nn.Parameter(torch.zeros(2))], 1.0, 0.0, [0.9, 0.999]), 10)
    again.load_state_dict(sched.state_dict())
    assert again.get_last_lr()[0] == pytest.approx(0.4)


def test_the_paper_recipes_warm_up_over_10_steps():
    for recipe in ("sdpo", "grpo", "sft"):
        assert load_config(recipe, scale="paper").optim.warmup_steps == 10
    assert load_config("sdpo", scale="smoke").optim.warmup_steps == 0  # 2 steps: no step at lr 0


def test_a_run_shorter_than_its_warmup_gets_one_warning(tmp_path):
    from sd_bench.train.cli import start_lines
    from sd_bench.train.runtime import warmup_warning

    assert warmup_warning(11, 10) is None and warmup_warning(100, 10) is None and warmup_warning(1, 0) is None
    text = warmup_warning(10, 10)
    assert "10 training step(s)" in text and "optim.warmup_steps=10" in text and "90%" in text
    cfg = load_config("sdpo", scale="smoke", overrides=["optim.warmup_steps=10", "run.max_steps=5"])
    lines = start_lines(cfg, "sdpo", "smoke", tmp_path, None, explicit_scale=True)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "40%" in warnings[0]  # step 4 of 10 is the last: 4/10 of the lr


# ---------------------------------------------------------------- sampling epochs


def test_take_within_epoch_draws_each_item_once_per_epoch():
    """SFT epochs (issue 8): 6 traces, batches of 4 -> [4, 2] per epoch, each trace once per epoch."""
    from sd_bench.train.runtime import Sampler

    sampler = Sampler(6, seed=0)
    batches = [sampler.take_within_epoch(4) for _ in range(6)]
    assert [len(b) for b in batches] == [4, 2, 4, 2, 4, 2]
    for epoch in range(3):
        assert sorted(batches[2 * epoch] + batches[2 * epoch + 1]) == list(range(6))
    assert batches[0] + batches[1] != batches[2] + batches[3]  # reshuffled per epoch
    small = Sampler(3, seed=1)
    assert sorted(small.take_within_epoch(32)) == [0, 1, 2]  # fewer traces than a batch: each once
    # resumable: a new sampler loaded with the state continues the same sequence
    again = Sampler(6, seed=0)
    again.load_state_dict({"epoch": 0, "position": 4})
    assert again.take_within_epoch(4) == batches[1] and again.take_within_epoch(4) == batches[2]
