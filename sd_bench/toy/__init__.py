"""The paper in miniature: a synthetic sums world where self-distillation's effect shows on a laptop CPU.

`world` (problems, traces, grading; pure Python), `tokenizer` (a real HF tokenizer with a chat template),
`model` (a tiny Qwen3 config), `pretrain` (`sd-bench toy pretrain`), `experiment` (a standalone measurement).
The committed base lives in `base/` (`BASE_DIR`). Import-light: torch is imported only by the modules that
need it.
"""

from __future__ import annotations

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent / "base"
