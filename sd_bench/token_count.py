"""Exact token counts of model responses, fast: `tokenizers` semantics at tiktoken speed.

Why: `response_tokens` and `thinking_tokens` count every response with the evaluated model's tokenizer (no
special tokens added), and that one BPE pass was ~80% of the scoring cost (benchmarks/RESULTS.md). For the
byte-level BPE tokenizers of the paper's models (Qwen3, DeepSeek-R1-Distill: tiktoken-style vocabularies)
the same counts come ~4x faster from tiktoken's BPE, given the tokenizer's own pre-tokenizer regex, merge
ranks and added tokens. `fast_counter` builds that counter from a tokenizer.json only when its pipeline
is one tiktoken reproduces (byte-level BPE; no normaliser or NFC; a GPT-2 or Split regex pre-tokenizer;
no dropout, affixes or byte fallback; added tokens without strip / single-word rules).

tiktoken merges any adjacent pair whose concatenation is a vocabulary entry, `tokenizers` only the listed
merges; for vocabularies made by tiktoken-style training the two agree by construction, for others they
could differ on rare words. So the counter is trusted only after it agrees with `tokenizers` on a probe
set (PROBES and a sample of the vocabulary), and `checked_counter` keeps cross-checking one response in
CHECK_EVERY at run time, falling back to `tokenizers` for good (one warning) on any difference.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import unicodedata
from pathlib import Path

log = logging.getLogger(__name__)

CHECK_EVERY = 64
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PROBES = [
    "Hello, world! It's 3.14159 -- isn't it? Let's see: x^2 + 2x + 1 = (x+1)^2.",
    "<think>\nWait, let me check this again.\n\nHmm...  maybe   not.\n</think>\n\nThe answer is $\\boxed{42}$.",
    "  leading spaces\ttabs\r\nCRLF\n\n\n  trailing   ",
    "Unicode: café naïve résumé Straße 東京 数学 ∑ ∫ √2 π ≈ 3.14 — “quotes” 😀 e\u0301",
    "Numbers 1234567890 12,345 0.000001 1e-9 -17 +3 ⅓ ½ ١٢٣",
    "\\frac{\\sqrt{3}}{2} \\left( \\frac{1}{x} \\right) \\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
    "def f(x):\n    return {'a': [1, 2]}  # code\n",
    "I'M YOU'RE WE'VE THEY'LL HE'D it'S",
]


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode table (how byte-level BPE vocabularies spell bytes)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes, extra = list(printable), 0
    byte_values = list(printable)
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(byte_values, codes)}


def _pattern(spec: dict) -> str | None:
    """The pre-tokenizer regex of a tokenizer.json, when its pre-tokenizer is one tiktoken reproduces."""
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return GPT2_PATTERN
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers") or []
        if (
            len(parts) == 2
            and parts[0].get("type") == "Split"
            and parts[0].get("behavior") == "Isolated"
            and not parts[0].get("invert")
            and "Regex" in (parts[0].get("pattern") or {})
            and parts[1].get("type") == "ByteLevel"
            and not parts[1].get("use_regex", True)
            and not parts[1].get("add_prefix_space")
        ):
            return parts[0]["pattern"]["Regex"]
    return None


def fast_counter(tokenizer_json: str | Path):
    """texts -> exact token counts via tiktoken, or None when this tokenizer's pipeline is not supported."""
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        spec = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    model = spec.get("model") or {}
    normalizer = spec.get("normalizer")
    if normalizer not in (None, {"type": "NFC"}):
        return None
    if model.get("type") != "BPE" or model.get("dropout") or model.get("byte_fallback"):
        return None
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return None
    pattern = _pattern(spec)
    added = spec.get("added_tokens") or []
    if pattern is None or any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added):
        return None
    decoder = _byte_decoder()
    try:
        to_bytes = functools.partial(lambda table, s: bytes(table[ch] for ch in s), decoder)
        ranks = {bytes([b]): b for b in range(256)}
        vocab_bytes = {to_bytes(token) for token in model.get("vocab", {})}
        if not all(bytes([b]) in vocab_bytes for b in range(256)):
            return None
        for rank, merge in enumerate(model.get("merges") or []):
            left, right = merge.split(" ") if isinstance(merge, str) else merge
            ranks.setdefault(to_bytes(left) + to_bytes(right), 256 + rank)
        encoding = tiktoken.Encoding(
            "sd-bench-count", pat_str=pattern, mergeable_ranks=ranks, special_tokens={}
        )
    except (KeyError, ValueError):  # a vocabulary entry that is not byte-level, or a regex tiktoken rejects
        return None
    contents = sorted({t["content"] for t in added if t.get("content")}, key=len, reverse=True)
    splitter = re.compile("|".join(map(re.escape, contents))) if contents else None
    nfc = normalizer is not None

    def count_one(text: str) -> int:
        pieces = splitter.split(text) if splitter is not None else [text]
        if nfc:
            pieces = [unicodedata.normalize("NFC", p) for p in pieces]
        return (
            len(pieces) - 1 + sum(len(ids) for ids in encoding.encode_ordinary_batch(pieces, num_threads=1))
        )

    return lambda texts: [count_one(t) for t in texts]


def _vocab_sample(tokenizer_json: str | Path, n: int = 2000) -> list[str]:
    """Some vocabulary entries as text (every k-th), joined in groups: words the tokenizer knows."""
    spec = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    decoder = _byte_decoder()
    vocab = list((spec.get("model") or {}).get("vocab", {}))
    step = max(1, len(vocab) // n)
    words = []
    for token in vocab[::step]:
        try:
            words.append(bytes(decoder[ch] for ch in token).decode("utf-8"))
        except (KeyError, UnicodeDecodeError):
            continue
    return words + [" ".join(words[i : i + 50]) for i in range(0, len(words), 50)]


def checked_counter(tokenizer_json: str | Path, reference):
    """The fast counter when it agrees with `reference` (the `tokenizers` counter) on the probes, with a
    run-time cross-check of one text in CHECK_EVERY; else `reference` itself."""
    fast = fast_counter(tokenizer_json)
    if fast is None:
        return reference
    probes = PROBES + _vocab_sample(tokenizer_json)
    if fast(probes) != reference(probes):
        log.info("sd_bench: tiktoken counts differ from tokenizers for %s; using tokenizers", tokenizer_json)
        return reference
    state = {"seen": 0, "fast": True}

    def count(texts):
        texts = list(texts)
        if not state["fast"]:
            return reference(texts)
        counts = fast(texts)
        for i, text in enumerate(texts):
            state["seen"] += 1
            if state["seen"] % CHECK_EVERY == 1 and reference([text])[0] != counts[i]:
                log.warning(
                    "sd_bench: the fast token count differs from tokenizers on a response; "
                    "counting with tokenizers from now on (%s)",
                    tokenizer_json,
                )
                state["fast"] = False
                return reference(texts)
        return counts

    return count
