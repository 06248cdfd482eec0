"""`sd-bench reproduce`: rebuild a paper table or figure from one command.

- `plan.py`: the stages of each table/figure at each scale (from checkpoints_manifest.yaml), the registry
  where stage implementations plug in, and the resumable executor;
- `progress.py`: the stage i/N, progress and time-left display;
- `cli.py`: the command line.
Import-light: no torch or vllm here; stage implementations import them when they run.
"""
