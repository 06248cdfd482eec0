"""The toy base model: a tiny Qwen3 causal LM (about 0.9M parameters).

Why Qwen3: the same architecture family the paper trains, loadable by `AutoModelForCausalLM`, lm-eval
`--model hf` and vLLM. Width 128, 4 layers, 4 heads (issue 5's prototype was a 0.83M GPT of the same shape);
head_dim 32 because vLLM's CPU attention backend rejects smaller heads. Tied embeddings keep the committed
weights small.
"""

from __future__ import annotations

from sd_bench.toy.tokenizer import EOS, PAD, VOCAB

MAX_POSITIONS = 512  # the longest toy sequence (n = 6, solution-hinted, with corrections) is ~200 tokens


def toy_config(**overrides):
    from transformers import Qwen3Config

    kwargs = {
        "vocab_size": len(VOCAB),
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "head_dim": 32,
        "max_position_embeddings": MAX_POSITIONS,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "pad_token_id": VOCAB.index(PAD),
        "eos_token_id": VOCAB.index(EOS),
        "bos_token_id": VOCAB.index(EOS),
        "use_cache": True,
    }
    kwargs.update(overrides)
    return Qwen3Config(**kwargs)


def build_model(seed: int = 0, **overrides):
    """A freshly initialised toy model (float32)."""
    import torch
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    return Qwen3ForCausalLM(toy_config(**overrides))
