"""The paper in miniature: a synthetic sums world where self-distillation's effect shows on a laptop CPU.

`world` (problems, traces, grading; pure Python), `tokenizer` (a real HF tokenizer with a chat template),
`model` (a tiny Qwen3 config), `pretrain` (`sd-bench toy pretrain`). The committed base lives in `base/`
(`BASE_DIR`). Everything that trains or evaluates on it is the one pipeline's smoke scale (`sd-bench
reproduce --scale smoke`, toy_manifest.yaml), so this package imports neither `sd_bench.train` nor
`sd_bench.reproduce`. Import-light: torch is imported only by the modules that need it.
"""

from __future__ import annotations

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent / "base"
