"""`sd-bench reproduce`: rebuild a paper table or figure from one command, at any scale.

Each module's docstring says its job (the table in docs/ARCHITECTURE.md lists them). Import-light: no torch or
vllm at import; stage functions import them when they run.
"""
