"""sd-bench: reproduce and extend arXiv:2603.24472 (self-distillation and epistemic verbalization).

Kept import-light on purpose: `lm_eval` scoring and `sd-bench check` import this package and must not pull
in torch or vllm. Heavy modules (`sd_bench.train`, `sd_bench.toy`) are imported only where they are used.
"""

__version__ = "0.1.0"
