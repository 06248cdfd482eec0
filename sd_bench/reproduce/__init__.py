"""`sd-bench reproduce`: rebuild a paper table or figure from one command, at any scale.

- `scale.py`: a scale (smoke / small / paper) as one typed value, edited by `--set key=value`;
- `protocol.py`: the stage graph of each table and figure (the same at every scale);
- `plan.py`: the plan's data model, `build_plan`, the `--dry-run` rendering;
- `cost.py`: GPU-hours / CPU seconds and disk from the trainer configs and decoding the stages use;
- `stages.py`: one function per stage kind (select, generate, train, evaluate, render);
- `sampling.py`: the one sampler (the trainer's rollout backends) and model resolution;
- `execute.py`: the executor (fingerprints, reuse, one writer per output folder);
- `io.py`: file formats stages hand to each other; `progress.py`: the progress display; `cli.py`.
Import-light: no torch or vllm at import; stage functions import them when they run.
"""
