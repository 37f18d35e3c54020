"""Pipeline stages: one module each, the single implementation that both `dvc repro` and the Prefect flow run.

Each stage module defines `PARAMS` (the exact params.yaml keys it reads — dvc.yaml lists the same keys, a
test keeps them in sync), `run(cfg, root) -> metrics` and `summary(metrics) -> str` (one line for tables).
"""

# Pipeline order (a chain for now; later branches join after `sft`).
STAGES: tuple[str, ...] = ("generate", "validate", "base", "sft", "evaluate")
