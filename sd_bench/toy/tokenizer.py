"""The toy world's tokenizer: a real `PreTrainedTokenizerFast`, character-level, with `wait` as one token.

Why a real HF tokenizer: the trainer, lm-eval (`--model hf`) and vLLM load it with `AutoTokenizer` and the
paper's prompt builders (`sd_bench.prompts`) render through its chat template, unchanged.

- Tokens: digits, `+ = ; : Q A H |`, newline, `wait`, `<eos>`, `<pad>`, `<unk>`. `wait` decodes to the
  paper's first marker, so `sd_bench.markers.epistemic_count` counts it (E(y)).
- Chat template: the user message becomes `Q:{problem}`; the paper's teacher prompts are recognised by
  their fixed text and rendered to the hinted pretraining format (Jinja string splits):
      sdpo_teacher_prompt(p, d) = "{p}\\nCorrect solution:\\n\\n{d}\\n\\nCorrectly solve ..." -> `Q:{p}|H:{d}`
      hint_prompt(p, s)         = "{p}\\n\\nCorrect solution: {s}\\n\\nCorrectly solve ..." -> `Q:{p}|H:{s}`
  The paper's instruction ("\\nPlease reason step by step, ...") is dropped if present: the toy model
  never saw it. The generation prompt (the answer start) is a newline; an assistant turn is its text + EOS.
"""

from __future__ import annotations

from pathlib import Path

from sd_bench.toy.world import WAIT

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
CHARS = list("0123456789+=;:QAH|\n")
VOCAB: list[str] = [PAD, EOS, UNK, WAIT, *CHARS]

# Jinja: `'\n'` inside a template string literal is a newline (Jinja unescapes string literals).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- set c = message['content'] -%}"
    "{%- set hint = none -%}"
    "{%- if '\\nCorrect solution:\\n\\n' in c -%}"
    "{%- set parts = c.split('\\nCorrect solution:\\n\\n', 1) -%}"
    "{%- set c = parts[0] -%}"
    "{%- set hint = parts[1].split('\\n\\nCorrectly solve the original question.')[0] -%}"
    "{%- elif '\\n\\nCorrect solution: ' in c -%}"
    "{%- set parts = c.split('\\n\\nCorrect solution: ', 1) -%}"
    "{%- set c = parts[0] -%}"
    "{%- set hint = parts[1].split('\\n\\nCorrectly solve the original question.')[0] -%}"
    "{%- endif -%}"
    "{{- 'Q:' + c.split('\\nPlease reason step by step')[0].strip() -}}"
    "{%- if hint is not none -%}{{- '|H:' + hint.strip() -}}{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '\\n' + message['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '\\n' -}}{%- endif -%}"
)


def build_tokenizer():
    """The toy tokenizer, built in memory with the `tokenizers` library (no files, no Hub)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # `wait` is matched first, then every other character is its own piece; special tokens are matched
    # before pre-tokenization because they are registered as added tokens below.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(f"{WAIT}|[\\s\\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()  # concatenate pieces without spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
        padding_side="left",  # generation pads on the left; training code sets its own side
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tokenizer(tok, path: str | Path) -> None:
    """`save_pretrained`, naming the class `PreTrainedTokenizerFast` in tokenizer_config.json.

    transformers 5 writes its own name for it (`TokenizersBackend`), which transformers 4.x cannot load;
    both load `PreTrainedTokenizerFast`.
    """
    import json

    tok.save_pretrained(str(path))
    config_file = Path(path) / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=2) + "\n")


def user_text(question: str, hint: str | None = None) -> str:
    """The rendered user turn without the generation prompt, matching the chat template."""
    return f"Q:{question}" if hint is None else f"Q:{question}|H:{hint}"
