"""Toy pretraining: packing is exact, a short run lowers the loss and saves a loadable folder, and the
committed base loads and is small."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sd_bench.atomic import OutputPathError
from sd_bench.prompts import render
from sd_bench.toy import BASE_DIR, world
from sd_bench.toy.model import build_model
from sd_bench.toy.pretrain import encode_trace, make_batch, pretrain
from sd_bench.toy.tokenizer import build_tokenizer


def test_packed_batch_gives_the_per_trace_logits():
    torch.manual_seed(0)
    tok, model = build_tokenizer(), build_model(seed=0).eval()
    input_ids, positions, attention, labels = make_batch(tok, random.Random(3), batch=8)
    with torch.no_grad():
        packed = model(input_ids=input_ids, position_ids=positions, attention_mask=attention).logits
    rng = random.Random(3)
    traces = sorted((encode_trace(tok, world.sample_trace(rng)) for _ in range(8)), key=lambda e: -len(e[0]))
    ids0 = traces[0][0]
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([ids0])).logits[0]
    assert input_ids[0, : len(ids0)].tolist() == ids0  # the longest trace opens the first row
    assert torch.allclose(packed[0, : len(ids0)], alone, atol=1e-5)
    n_trained = sum(sum(mask) for _, mask in traces)
    assert int((labels != -100).sum()) == n_trained


def test_short_pretraining_lowers_the_loss_and_saves_a_loadable_model(tmp_path):
    out = tmp_path / "base"
    prov = pretrain(out, steps=25, seed=1, threads=1, log=lambda *_: None)
    losses = [h["loss"] for h in prov["loss_curve"]]
    assert losses[0] > 3.0 and prov["final_loss"] < losses[0] - 0.7, losses
    saved = json.loads((out / "provenance.json").read_text())
    assert saved["steps"] == 25 and saved["seed"] == 1 and "torch" in saved["versions"]
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(render(tok, "12+34+56"), return_tensors="pt", add_special_tokens=False).input_ids
    out_ids = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out_ids.shape[1] > ids.shape[1]
    assert not list(tmp_path.glob("base.tmp-*")) and not list(tmp_path.glob("base.old-*"))


def test_committed_base_loads_and_is_small():
    if not (BASE_DIR / "model.safetensors").exists():
        pytest.fail(f"{BASE_DIR} has no model.safetensors: run `sd-bench toy pretrain` and commit the folder")
    assert (BASE_DIR / "model.safetensors").stat().st_size < 5_000_000
    prov = json.loads((BASE_DIR / "provenance.json").read_text())
    assert prov["steps"] >= 1000 and prov["final_loss"] is not None
    model = AutoModelForCausalLM.from_pretrained(BASE_DIR)
    tok = AutoTokenizer.from_pretrained(BASE_DIR)
    assert model.config.model_type == "qwen3" and model.config.head_dim >= 32
    assert model.config.vocab_size == len(tok)


def test_bad_pretrain_inputs_fail_before_any_training(tmp_path):
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "sd_bench.cli",
            "toy",
            "pretrain",
            "--steps",
            "0",
            "--output",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "argument --steps: must be >= 1, got 0" in bad.stderr, bad.stderr
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not sd-bench's")
    with pytest.raises(OutputPathError, match="not empty"):
        pretrain(foreign, steps=5, log=lambda *_: None)
    assert (foreign / "notes.txt").read_text() == "not sd-bench's"
    assert (BASE_DIR / ".sd-bench-output").is_file()  # the committed base may be rebuilt in place
