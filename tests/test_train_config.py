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
