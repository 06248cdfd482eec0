"""Thin shim: lm-eval resolves `!function utils.X` next to the YAMLs; the code lives in sd_bench.lm_eval_tasks."""

from sd_bench.lm_eval_tasks import doc_to_text, keep_all, load_dataset, process_results

__all__ = ["doc_to_text", "keep_all", "load_dataset", "process_results"]
