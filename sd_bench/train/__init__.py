"""Self-distillation, SFT and GRPO training for sd-bench (torch; import only where used)."""
